"""Cost of elasticity: masked super-network vs the plain Megatron GPTModel, and set_subnet switch time.

Providers (same weights, same Llama-style model):
- ``plain``: megatron GPTModel from the family spec;
- ``supernet_full``: the super-network at the full config (masks switched off, the path a teacher or a
  full-model run takes);
- ``supernet_masked``: the super-network with every mask active at nearly full size (one hidden channel
  and one FFN neuron dropped per layer), so FLOPs match and the difference is the masking itself.

Modes fwd and full (forward+backward), time and peak memory through benchmarks/harness.py. Writes
``results/mask_overhead_<device>.csv`` / ``.png`` / ``.md``. Goal (issue 3): <= 5% overhead.
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
                       num_attention_heads=hidden // 32, num_query_groups=hidden // 64, ffn_hidden_size=hidden * 8 // 3 // 8 * 8,
                       kv_channels=32, max_position_embeddings=4096, normalization="RMSNorm", norm_eps=1e-5,
                       activation="silu", gated_mlp=True, add_bias_linear=False, add_qkv_bias=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds over the providers (median across rounds): on a shared CPU, "
                             "back-to-back timing of one provider absorbs slow phases of the machine")
    args = parser.parse_args(argv)

    from nemo_subnet.conversion.sharding import load_global_state
    from nemo_subnet.models import build_gpt_model
    from nemo_subnet.runtime import init_runtime
    from nemo_subnet.subnet.config import LayerSubnet, SubnetConfig
    from nemo_subnet.subnet.supernet import build_supernet

    runtime = init_runtime(tp=1, pp=1, seed=0)
    device = runtime.device
    on_gpu = device.type == "cuda"
    hiddens = args.hidden or ([2048] if on_gpu else [256, 512])
    layers, seq, batch = args.layers or (8 if on_gpu else 4), args.seq or (2048 if on_gpu else 256), args.batch or (4 if on_gpu else 2)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    commit, rows, summary = harness.git_commit(), [], []

    for hidden in hiddens:
        cfg = _model_config(hidden, layers, args.vocab)
        plain = build_gpt_model(cfg, params_dtype=dtype)
        state = {k: v for k, v in plain.state_dict().items() if not k.endswith("_extra_state")}
        supernet = build_supernet(cfg, params_dtype=dtype, perform_initialization=False)
        load_global_state(supernet, cfg, state)
        tokens = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
        position_ids = torch.arange(seq, device=device).expand(batch, seq)

        def closure(model, subnet):
            def build(case):
                model.set_subnet(subnet) if subnet is not None else None
                model.train()
                model.zero_grad(set_to_none=True)
                return lambda: model(tokens, position_ids, attention_mask=None, labels=tokens).float().mean()
            return build

        near_full = SubnetConfig(hidden=hidden - 1, layer=LayerSubnet(ffn=cfg.ffn_hidden_size - 1))
        providers = [harness.Provider("plain", closure(plain, None)),
                     harness.Provider("supernet_full", closure(supernet, SubnetConfig())),
                     harness.Provider("supernet_masked", closure(supernet, near_full))]
        case = {"N": batch * seq, "H": hidden, "V": cfg.padded_vocab_size, "dtype": dtype}
        results = {}
        for mode in (harness.Mode.FWD, harness.Mode.FULL):
            rounds = {p.name: [] for p in providers}
            for _ in range(args.rounds):
                for provider in providers:
                    rounds[provider.name].append(harness.run_case(provider, mode, case, device, reps=args.reps))
            for provider in providers:
                runs = rounds[provider.name]
                result = harness.Result(statistics.median(r.ms for r in runs), max(r.peak_mb for r in runs))
                results[(provider.name, mode)] = result
                rows.append(harness.row(device, commit, f"gpt_h{hidden}_l{layers}", provider.name, mode, case, result))
                print(f"h={hidden} {mode.value:4s} {provider.name:16s} {result.ms:9.2f} ms  {result.peak_mb:8.1f} MB")

        # switching between sub-networks: no module rebuild, only mask copies
        rng = random.Random(0)
        subnets = [SubnetConfig(hidden=rng.randint(1, hidden), layers=sorted(rng.sample(range(layers), rng.randint(1, layers))),
                                layer=LayerSubnet(ffn=rng.randint(1, cfg.ffn_hidden_size))) for _ in range(50)]
        switch_ms = []
        for subnet in subnets:
            start = time.perf_counter()
            supernet.set_subnet(subnet)
            switch_ms.append((time.perf_counter() - start) * 1e3)
        supernet.reset_subnet()
        for mode in (harness.Mode.FWD, harness.Mode.FULL):
            base = results[("plain", mode)].ms
            summary.append({"hidden": hidden, "mode": mode.value, "plain_ms": base,
                            "full_overhead_pct": 100 * (results[("supernet_full", mode)].ms / base - 1),
                            "masked_overhead_pct": 100 * (results[("supernet_masked", mode)].ms / base - 1),
                            "plain_peak_mb": results[("plain", mode)].peak_mb,
                            "masked_peak_mb": results[("supernet_masked", mode)].peak_mb,
                            "set_subnet_ms": statistics.median(switch_ms)})

    RESULTS.mkdir(exist_ok=True)
    name = f"mask_overhead_{harness.device_name(device)}"
    harness.append_rows(str(RESULTS / f"{name}.csv"), rows)
    harness.plot(str(RESULTS / f"{name}.csv"), str(RESULTS / f"{name}.png"), "masked super-network vs plain GPTModel")
    lines = [f"# Mask overhead, {harness.device_name(device)}, {date.today()} (commit {commit})", "",
             f"Llama-style model, {layers} layers, seq {seq}, batch {batch}, vocab {args.vocab}, {str(dtype).replace('torch.', '')}; "
             f"median over {args.rounds} interleaved rounds of the median of {args.reps} runs.", "",
             "| hidden | mode | plain ms | full-config overhead | masks-active overhead | plain peak MB | masked peak MB | set_subnet ms |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['hidden']} | {s['mode']} | {s['plain_ms']:.1f} | {s['full_overhead_pct']:+.1f}% | "
                     f"{s['masked_overhead_pct']:+.1f}% | {s['plain_peak_mb']:.1f} | {s['masked_peak_mb']:.1f} | {s['set_subnet_ms']:.2f} |")
    harness.write_markdown(RESULTS / f"{name}.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
