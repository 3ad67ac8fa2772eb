"""Every sub-network a search space can produce exports (invariant 6), for every family and space.

Per family: a tiny HF teacher shaped like a real checkpoint (the tokenizer has 297 tokens, the config's
vocabulary is padded beyond it, as Pythia's 50304 rows for 50277 tokens), imported once; and SmolLM2's
shape (9 heads in 3 groups, tied, embedding rows = tokens). Per space (the
four granularities' defaults with depth pruning, and a user-written YAML): a fixed-seed sample of
candidates -- the space's smallest and random genomes -- each with random index sets of the
sampled sizes (importance-ordered selections are index sets), run through the user's path:
``extract`` -> ``export-hf`` -> plain ``AutoModelForCausalLM.from_pretrained`` -> logits == the Megatron
student's (fp32, max abs diff <= 1e-4). A summary table (family x space x configs, max diff) is printed.
"""

import os
import random
from pathlib import Path

import pytest
import torch

from nemo_subnet.cli import main as cli_main
from nemo_subnet.models.tiny_hf import save_hf_model
from nemo_subnet.search.space import Granularity, SearchSpace, resolve_space
from nemo_subnet.subnet.config import LayerSubnet, SubnetConfig, resolve

SEED = 0
RANDOM_PER_SPACE = int(os.environ.get("NEMO_SUBNET_EXPORT_SAMPLES", "2"))
"""Random candidates per space, after the space's smallest: ~1 s of CPU each (extract, export, two loads),
so 60 candidates in CI; set NEMO_SUBNET_EXPORT_SAMPLES for a deeper run. The largest candidate is the
teacher itself, whose round trip test_import_export.py covers."""
ATOL = 1e-4

TOKENIZER_TOKENS = 297
# teachers: sizes chosen so the constraints bite (Llama head padding, GPT-NeoX heads <= hidden / head size,
# Qwen3 head_dim != hidden / heads); vocabularies padded past the tokenizer like real checkpoints
TEACHERS = {
    "gpt_neox": dict(vocab_size=320, hidden_size=64, num_attention_heads=4, intermediate_size=96),  # head 16
    "llama": dict(vocab_size=384, hidden_size=96, num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                  intermediate_size=64),
    "qwen2": dict(vocab_size=384, hidden_size=96, num_attention_heads=6, num_key_value_heads=2, intermediate_size=64,
                  sliding_window=32, max_window_layers=2),  # as Qwen2.5 ships them (use_sliding_window false)
    "qwen3": dict(vocab_size=320, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                  intermediate_size=64),
    "smollm2": dict(),  # SmolLM2's shape: 9 heads in 3 groups, tied, as many embedding rows as tokens (297)
}
# a user-written space per family: explicit choices, layer-wise, depth choices
USER_SPACES = {
    "gpt_neox": "granularity: coarse_layerwise\nordering: first_k\nhidden: [32, 48, 64]\nlayers: [1, 3]\n"
                "query_groups: [1, 2]\n",  # explicit heads: padded to hidden / 16 at export
    "llama": "granularity: fine_layerwise\nordering: first_k\nhidden: [30, 54, 96]\nlayers: [2, 3]\n",  # 4 heads -> 6
    "qwen2": "granularity: fine_uniform\nordering: first_k\nhidden: [40, 70, 96]\nlayers: [1, 2, 3]\n",  # 40 % 3 != 0
    "qwen3": "granularity: coarse_uniform\nordering: first_k\nhidden: [40, 50, 64]\nlayers: [2, 4]\n",
    "smollm2": "granularity: fine_layerwise\nordering: first_k\nhidden: [36, 72, 144]\nlayers: [2, 3]\n",  # x 9 heads
}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, megatron_runtime):
    """family -> (checkpoint directory, ModelConfig); HF teachers saved and imported once."""
    from nemo_subnet.conversion.hf_import import import_hf

    root = tmp_path_factory.mktemp("export_property")
    out = {}
    for i, (family, sizes) in enumerate(TEACHERS.items()):
        save_hf_model(family, root / f"{family}_hf", seed=10 + i, **sizes)
        out[family] = (root / f"{family}_ckpt", import_hf(root / f"{family}_hf", root / f"{family}_ckpt"))
    return out


def _spaces(family: str, tmp: Path) -> dict[str, SearchSpace]:
    spaces = {g.value: SearchSpace(granularity=g, ordering="first_k") for g in Granularity}
    (tmp / "space.yaml").write_text(USER_SPACES[family])
    spaces["user_yaml"] = SearchSpace.load(tmp / "space.yaml")
    return spaces


def _as_indices(sizes: SubnetConfig, cfg, rng: random.Random) -> SubnetConfig:
    """The same sizes as random index sets (what importance ordering produces), layers included."""
    pick = lambda k, total: sorted(rng.sample(range(total), k))  # noqa: E731
    hpg = cfg.num_attention_heads // cfg.num_query_groups

    def layer(spec: LayerSubnet) -> LayerSubnet:
        return LayerSubnet(query_groups=pick(spec.query_groups, cfg.num_query_groups),
                           heads_per_group=pick(spec.heads_per_group, hpg), ffn=pick(spec.ffn, cfg.ffn_hidden_size))

    per_layer = [layer(s) for s in sizes.layer] if isinstance(sizes.layer, list) else layer(sizes.layer)
    return SubnetConfig(hidden=pick(sizes.hidden, cfg.hidden_size), layers=pick(sizes.layers, cfg.num_layers),
                        layer=per_layer)


def _candidates(rspace, rng: random.Random) -> list[SubnetConfig]:
    genomes = [rspace.extreme(False)]
    genomes += [tuple(rng.randrange(len(rspace.gene_choices(i))) for i in range(rspace.genome_length))
                for _ in range(RANDOM_PER_SPACE)]
    return [_as_indices(rspace.sizes(g), rspace.cfg, rng) for g in genomes]


def _export_and_compare(ckpt: Path, subnet: SubnetConfig, work: Path, tokens: torch.Tensor) -> tuple[float, dict]:
    from transformers import AutoModelForCausalLM

    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.conversion.hf_export import export_hf
    from nemo_subnet.models.inference import forward_logits
    from nemo_subnet.subnet.extract import extract_checkpoint

    extract_checkpoint(ckpt, subnet, work / "student", overwrite=True)
    export_hf(work / "student", work / "student_hf", overwrite=True)
    cfg, student = load_model(work / "student")
    ours = forward_logits(student, cfg, tokens).cpu()  # the CPU backend labels Megatron's tensors cuda
    hf = AutoModelForCausalLM.from_pretrained(work / "student_hf", dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(tokens).logits
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0, msg=lambda m: f"{subnet}: {m}")
    hf_config = hf.config
    assert hf_config.num_hidden_layers == cfg.num_layers and hf_config.vocab_size == cfg.vocab_size
    if getattr(hf_config, "layer_types", None) is not None:
        assert hf_config.layer_types == ["full_attention"] * cfg.num_layers
    return (theirs - ours).abs().max().item(), {"heads": hf_config.num_attention_heads, "layers": cfg.num_layers}


@pytest.mark.parametrize("family", list(TEACHERS))
def test_every_sampled_subnet_exports_with_same_logits(family, teachers, tmp_path):
    from transformers import AutoTokenizer

    ckpt, cfg = teachers[family]
    rng = random.Random(SEED)
    tokens = torch.randint(0, TOKENIZER_TOKENS, (2, 11), generator=torch.Generator().manual_seed(SEED))
    rows = []
    for name, space in _spaces(family, tmp_path).items():
        rspace = resolve_space(space, cfg)
        diffs, depths, heads = [], set(), set()
        for subnet in _candidates(rspace, rng):
            resolve(cfg, subnet)  # a sampled candidate is a valid sub-network of the teacher
            diff, seen = _export_and_compare(ckpt, subnet, tmp_path, tokens)
            diffs.append(diff)
            depths.add(seen["layers"])
            heads.add(seen["heads"])
        assert min(depths) < cfg.num_layers, f"{family}/{name}: no depth-pruned candidate was sampled"
        rows.append((family, name, len(diffs), max(diffs), sorted(depths), sorted(heads)))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "student_hf")
    assert len(tokenizer) == TOKENIZER_TOKENS <= cfg.vocab_size  # more rows than tokens, or (smollm2) as many
    print(f"\n| family | space | configs | max abs logit diff | kept layers | exported heads |\n|---|---|---|---|---|---|")
    for family_, name, n, diff, depths, heads in rows:
        print(f"| {family_} | {name} | {n} | {diff:.2e} | {depths} | {heads} |")


# --- bad input: an explicit sub-network the family cannot export fails at extract, with the constraint named ---

@pytest.mark.parametrize("family,subnet_yaml,fragments", [
    ("gpt_neox", "hidden: 40\n", ["hidden_size 40 is not a multiple of the head size 16", "multiples of 16"]),
    ("gpt_neox", "hidden: 32\nlayers: [0, 3]\n", ["4 attention heads of size 16 need hidden_size >= 64, got 32",
                                                  "at most 2 at hidden_size 32"]),
    ("llama", "hidden: 50\nlayer: {query_groups: 2, heads_per_group: 2}\n",
     ["LlamaConfig needs hidden_size to be a multiple of num_attention_heads", "hidden_size 50", "multiples of 4"]),
])
def test_extract_refuses_unexportable_subnet(teachers, tmp_path, capsys, family, subnet_yaml, fragments):
    ckpt, _ = teachers[family]
    (tmp_path / "sub.yaml").write_text(subnet_yaml)
    out = tmp_path / "student"
    assert cli_main(["extract", "--ckpt", str(ckpt), "--subnet", str(tmp_path / "sub.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    assert "sub-network cannot be exported to HF" in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists() and not list(tmp_path.glob(".student*"))
