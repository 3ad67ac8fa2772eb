"""Evaluating many sub-networks: eager vs torch.compile with eager branches vs compiled static graph.

A search evaluates one candidate after another: ``set_subnet`` then a forward pass. Providers (same
super-network, same candidates, forward only, as the search objective runs it):
- ``eager``: the eager masked super-network, uncompiled;
- ``compiled_branches``: ``torch.compile`` of the eager mode, whose Python branches on mask state and
  layer skipping change with every candidate: dynamo recompiles (whittle's problem, its issue #312)
  until its recompile limit, then falls back to eager for those frames;
- ``compiled_static``: ``compile_supernet`` (static-graph mode: masks, counts and the depth gate are
  device buffers), compiled once for every candidate.

Per provider: time of the first evaluation (includes the compilation), median time per evaluation over
the other switches (set_subnet + forward), and compilations counted (graphs handed to the backend).
Writes ``results/subnet_switch_<device>.csv`` (shared harness schema, compilations in ``note``) and
``.md``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _model_config(hidden: int, layers: int, vocab: int):
    from nemo_subnet.models.config import Family, ModelConfig

    return ModelConfig(family=Family.LLAMA, vocab_size=vocab, hidden_size=hidden, num_layers=layers,
                       num_attention_heads=hidden // 32, num_query_groups=hidden // 64,
                       ffn_hidden_size=hidden * 8 // 3 // 8 * 8, kv_channels=32, max_position_embeddings=4096,
                       normalization="RMSNorm", norm_eps=1e-5, activation="silu", gated_mlp=True,
                       add_bias_linear=False, add_qkv_bias=False)


def _candidates(cfg, count: int, seed: int):
    """Sub-networks varying hidden size, depth, query groups, heads per group and FFN width (uniform and
    layer-wise), as a search space produces them."""
    from nemo_subnet.subnet.config import LayerSubnet, SubnetConfig

    rng = random.Random(seed)
    hpg = cfg.num_attention_heads // cfg.num_query_groups

    def layer():
        return LayerSubnet(query_groups=rng.randint(1, cfg.num_query_groups), heads_per_group=rng.randint(1, hpg),
                           ffn=rng.randint(1, cfg.ffn_hidden_size // 8) * 8)

    out = []
    for i in range(count):
        layers = sorted(rng.sample(range(cfg.num_layers), rng.randint(1, cfg.num_layers)))
        per_layer = [layer() for _ in layers] if i % 2 else layer()
        out.append(SubnetConfig(hidden=rng.randint(1, cfg.hidden_size // 8) * 8, layers=layers, layer=per_layer))
    return out


class CountingBackend:
    def __init__(self, inner: str):
        from torch._dynamo.backends.registry import lookup_backend

        self.inner, self.graphs = lookup_backend(inner), 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return self.inner(graph_module, example_inputs)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--backend", default="inductor", help="dynamo backend (inductor; aot_eager traces only)")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode for compiled_static, e.g. reduce-overhead (CUDA graphs, GPU only)")
    parser.add_argument("--providers", nargs="+", default=["eager", "compiled_branches", "compiled_static"])
    args = parser.parse_args(argv)

    from nemo_subnet.runtime import init_runtime
    from nemo_subnet.subnet.supernet import build_supernet

    runtime = init_runtime(tp=1, pp=1, seed=0)
    device = runtime.device
    on_gpu = device.type == "cuda"
    hidden, seq, batch = args.hidden or (2048 if on_gpu else 256), args.seq or (2048 if on_gpu else 256), args.batch or (4 if on_gpu else 2)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    cfg = _model_config(hidden, args.layers, args.vocab)
    supernet = build_supernet(cfg, params_dtype=dtype).eval()
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    position_ids = torch.arange(seq, device=device).expand(batch, seq)
    candidates = _candidates(cfg, args.switches, seed=0)
    commit, rows, summary = harness.git_commit(), [], []

    for name in args.providers:
        torch._dynamo.reset()
        supernet.set_static_graph(name == "compiled_static")
        backend = CountingBackend(args.backend)
        if name == "eager":
            model = supernet
        elif name == "compiled_branches":
            model = torch.compile(supernet, backend=backend)
        elif name == "compiled_static":
            model = torch.compile(supernet, backend=backend, mode=args.compile_mode) if args.compile_mode else \
                torch.compile(supernet, backend=backend)
        else:
            raise SystemExit(f"unknown provider {name!r}; allowed: eager, compiled_branches, compiled_static")
        times, graphs = [], []
        with torch.no_grad():
            for subnet in candidates:
                _sync(device)
                start = time.perf_counter()
                supernet.set_subnet(subnet)
                model(tokens, position_ids, attention_mask=None)  # [b, s, V]
                _sync(device)
                times.append(time.perf_counter() - start)
                graphs.append(backend.graphs)
        later_ms = 1e3 * statistics.median(times[1:])
        recompiling = sum(b > a for a, b in zip(graphs, graphs[1:]))
        summary.append({"provider": name, "first_s": times[0], "later_ms": later_ms, "graphs_first": graphs[0],
                        "graphs_total": graphs[-1], "recompiling_switches": recompiling, "worst_s": max(times[1:]),
                        "total_s": sum(times)})
        note = f"switches={len(candidates)};compilations={graphs[-1]};after_first={graphs[0]};first_eval_s={times[0]:.2f}"
        case = {"N": batch * seq, "H": hidden, "V": cfg.padded_vocab_size, "dtype": dtype}
        rows.append(harness.row(device, commit, f"switch_eval_h{hidden}_l{args.layers}", name, harness.Mode.FWD, case,
                                harness.Result(later_ms, float("nan"), note)))
        print(f"{name:18s} first {times[0]:8.2f} s  later median {later_ms:9.1f} ms  compilations {graphs[0]} -> "
              f"{graphs[-1]} ({recompiling} of {len(candidates) - 1} switches recompiled)", flush=True)
    supernet.set_static_graph(False)

    RESULTS.mkdir(exist_ok=True)
    name = f"subnet_switch_{harness.device_name(device)}"
    harness.append_rows(str(RESULTS / f"{name}.csv"), rows)
    lines = [f"# Sub-network switching, {harness.device_name(device)}, {date.today()} (commit {commit})", "",
             f"Llama-style super-network, hidden {hidden}, {args.layers} layers, seq {seq}, batch {batch}, vocab "
             f"{args.vocab}, {str(dtype).replace('torch.', '')}; {len(candidates)} candidates (hidden, depth, query "
             f"groups, heads per group, FFN varied), each set_subnet + one forward; backend {args.backend}"
             + (f", mode {args.compile_mode}" if args.compile_mode else "") + ".", "",
             "| provider | first evaluation s | later evaluations, median ms | slowest later s | total s | "
             "compilations after 1st / after all | switches that recompiled |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['provider']} | {s['first_s']:.2f} | {s['later_ms']:.1f} | {s['worst_s']:.2f} | {s['total_s']:.1f} | "
                     f"{s['graphs_first']} / {s['graphs_total']} | {s['recompiling_switches']} of {len(candidates) - 1} |")
    harness.write_markdown(RESULTS / f"{name}.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
