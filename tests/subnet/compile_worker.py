"""Subprocess worker of test_compile.py: compile a tiny super-network once, evaluate many sub-networks.

Prints one JSON line: compilations (graphs handed to the backend, counted after each candidate),
dynamo's own count of unique graphs, the depths seen, and the largest difference between each compiled output and the
eager masked output of the same sub-network.

Runs with the CPU backend outside its device-discipline mode: that mode tags tensors with Python
attributes inside a TorchFunctionMode, which dynamo cannot trace (on a GPU there is no mode at all).
"""

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from sampling import KINDS, random_subnet  # noqa: E402

from nemo_subnet.conversion.adapters import adapter_for_model_type  # noqa: E402
from nemo_subnet.conversion.sharding import load_global_state  # noqa: E402
from nemo_subnet.models.tiny_hf import make_hf_model  # noqa: E402
from nemo_subnet.runtime import compute_device, init_runtime  # noqa: E402
from nemo_subnet.subnet.supernet import build_supernet, compile_supernet  # noqa: E402


class CountingBackend:
    """A dynamo backend that counts the graphs it is asked to compile, then hands them to ``inner``."""

    def __init__(self, inner: str):
        from torch._dynamo.backends.registry import lookup_backend

        self.inner = lookup_backend(inner)
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return self.inner(graph_module, example_inputs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant")
    parser.add_argument("--mode", choices=("static", "eager"), required=True)
    parser.add_argument("--candidates", type=int, required=True)
    parser.add_argument("--backend", default="aot_eager")
    args = parser.parse_args()

    init_runtime(tp=1, pp=1, seed=1234)
    hf = make_hf_model(args.variant, seed=3)
    adapter = adapter_for_model_type(hf.config.model_type)
    cfg = adapter.config_from_hf(hf.config)
    supernet = build_supernet(cfg, perform_initialization=False)
    load_global_state(supernet, cfg, adapter.hf_to_megatron(cfg, hf.state_dict().__getitem__))
    supernet.eval()
    static = args.mode == "static"
    backend = CountingBackend(args.backend)
    if static:
        compiled = compile_supernet(supernet, backend=backend)  # in place: the module itself is compiled
    else:
        compiled = torch.compile(supernet, backend=backend)

    device = compute_device()
    tokens = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0)).to(device)
    position_ids = torch.arange(12, device=device).expand(2, 12)
    rng = random.Random(f"compile-{args.variant}")
    graphs, worst, depths = [], 0.0, set()
    with torch.no_grad():
        for i in range(args.candidates):
            resolved = supernet.set_subnet(random_subnet(cfg, rng, KINDS[i % len(KINDS)]))
            depths.add(len(resolved.layers))
            out = compiled(tokens, position_ids, attention_mask=None)  # [b, s, V]
            graphs.append(backend.graphs)
            supernet.set_static_graph(False)  # reference: the eager masked path, uncompiled
            reference = supernet.forward(tokens, position_ids, attention_mask=None)  # forward: no compiled __call__
            supernet.set_static_graph(static)
            worst = max(worst, (out - reference).abs().max().item())
    from torch._dynamo.utils import counters

    result = {"graphs_per_candidate": graphs, "dynamo_unique_graphs": counters["stats"]["unique_graphs"],
              "worst_diff": worst, "depths": sorted(depths)}
    if static:
        result["objective"] = _objective_check(supernet, cfg, backend, rng)
    print(json.dumps(result))


def _objective_check(supernet, cfg, backend, rng) -> dict:
    """The search objective (Megatron's forward-only schedule) on the model compiled in place: perplexities
    equal the uncompiled ones, and no candidate after the first compiles anything."""
    from nemo_subnet.importance.evaluation import random_batches
    from nemo_subnet.search.objective import SupernetPerplexity

    data = random_batches(cfg.vocab_size, num_batches=2, seq_length=12, micro_batch_size=2, seed=1)
    objective = SupernetPerplexity(supernet, cfg, data, forward="masked")  # the compiled super-network itself
    subnets = [random_subnet(cfg, rng, KINDS[i % len(KINDS)]) for i in range(4)]
    compiled, graphs = [], []
    for subnet in subnets:
        compiled.append(objective(subnet))
        graphs.append(backend.graphs)
    with torch.compiler.set_stance("force_eager"):
        supernet.set_static_graph(False)
        eager = [objective(subnet) for subnet in subnets]
    return {"graphs": graphs, "compiled_ppl": compiled, "eager_ppl": eager}


if __name__ == "__main__":
    main()
