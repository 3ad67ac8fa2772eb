"""Strategies and the search loop against pure-Python objectives (no model is built)."""

import json
import random

import pytest
import torch

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.search import (Budget, Granularity, SearchSpace, SearchSpaceError, check_budget, make_strategy,
                                resolve_space, search_loop)
from nemo_subnet.search.results import RunDir
from nemo_subnet.subnet.config import LayerSubnet, SubnetConfig, resolve
from nemo_subnet.subnet.params import count_parameters, subnet_parameters

CFG = ModelConfig(family="llama", vocab_size=500, hidden_size=64, num_layers=6, num_attention_heads=4, num_query_groups=2,
                  ffn_hidden_size=128, kv_channels=16, max_position_embeddings=128, normalization="RMSNorm", norm_eps=1e-5,
                  activation="silu", gated_mlp=True, add_bias_linear=False, add_qkv_bias=False)
BUDGET = Budget(0.5, 0.05)


def space(granularity=Granularity.FINE_LAYERWISE, **kw):
    return resolve_space(SearchSpace(granularity=granularity, ordering="first_k", **kw), CFG)


class Synthetic:
    """Distance in choice steps from a hidden target genome: a unique optimum 0 at the target."""

    def __init__(self, rspace, target):
        self.rspace, self.target, self.calls = rspace, target, []

    def genome_of(self, subnet):
        res = resolve(CFG, subnet)
        sizes = [len(res.hidden), len(res.layers)]
        for li in res.per_layer[: 1 if not self.rspace.layerwise else len(res.per_layer)]:
            sizes += [len(li.groups), len(li.heads_in_group), len(li.ffn)]
        return [self.rspace.gene_choices(i).index(v) for i, v in enumerate(sizes)]

    def __call__(self, subnet):
        self.calls.append(subnet)
        genome = self.genome_of(subnet)
        target = self.target[: len(genome)]
        return 1.0 + sum(abs(a - b) for a, b in zip(genome, target)) + 3 * abs(len(genome) - len(self.rspace.key(self.target)))


def _target(rspace, lower, upper, seed=7):
    import random

    from nemo_subnet.search.strategies import BudgetSampler

    return BudgetSampler(rspace, lower, upper, random.Random(seed)).sample(set())


def _run(tmp_path, name, rspace, objective, n, seed=0, previous=(), **kw):
    bounds = check_budget(rspace, BUDGET)
    strategy = make_strategy(name, rspace, bounds, seed, **kw)
    run_dir = RunDir(tmp_path)
    return search_loop(rspace, strategy, objective, run_dir, n, previous=previous, progress=False, plots=False)


@pytest.mark.parametrize("name", ["evolutionary", "random"])
def test_every_candidate_inside_budget(tmp_path, name):
    rspace = space()
    lower, upper = check_budget(rspace, BUDGET)
    objective = Synthetic(rspace, _target(rspace, lower, upper))
    result = _run(tmp_path, name, rspace, objective, 120)
    assert len(objective.calls) == 120 and len({json.dumps(r["key"]) for r in result.records}) == 120
    for subnet, record in zip(objective.calls, result.records):
        assert lower <= subnet_parameters(CFG, subnet) <= upper
        assert record["params"] == subnet_parameters(CFG, subnet)


@pytest.mark.parametrize("granularity", list(Granularity))
def test_evolution_finds_known_optimum(tmp_path, granularity):
    rspace = space(granularity)
    lower, upper = check_budget(rspace, BUDGET)
    target = _target(rspace, lower, upper)
    objective = Synthetic(rspace, target)
    result = _run(tmp_path, "evolutionary", rspace, objective, 400 if granularity.layerwise else 150)
    assert result.best_objective == 1.0, (granularity, result.best_objective, rspace.size())
    assert result.records[result.records.index(min(result.records, key=lambda r: r["objective"]))]["key"] == list(rspace.key(target))


def test_evolution_beats_random_on_synthetic(tmp_path):
    rspace = space()
    lower, upper = check_budget(rspace, BUDGET)
    target = _target(rspace, lower, upper)
    evo = _run(tmp_path / "e", "evolutionary", rspace, Synthetic(rspace, target), 150)
    rnd = _run(tmp_path / "r", "random", rspace, Synthetic(rspace, target), 150)
    assert evo.best_objective < rnd.best_objective


@pytest.mark.parametrize("name", ["evolutionary", "random"])
def test_seeded_runs_identical(tmp_path, name):
    rspace = space()
    lower, upper = check_budget(rspace, BUDGET)
    target = _target(rspace, lower, upper)
    a = _run(tmp_path / "a", name, rspace, Synthetic(rspace, target), 60, seed=3)
    b = _run(tmp_path / "b", name, rspace, Synthetic(rspace, target), 60, seed=3)
    c = _run(tmp_path / "c", name, rspace, Synthetic(rspace, target), 60, seed=4)
    strip = lambda rs: [(r["key"], r["objective"], r["subnet"]) for r in rs]  # noqa: E731
    assert strip(a.records) == strip(b.records)
    assert strip(a.records) != strip(c.records)


class Killed(Exception):
    pass


def test_resume_after_kill_skips_finished(tmp_path):
    rspace = space()
    lower, upper = check_budget(rspace, BUDGET)
    target = _target(rspace, lower, upper)
    full = _run(tmp_path / "full", "evolutionary", rspace, Synthetic(rspace, target), 50, seed=1)

    class Dies(Synthetic):
        def __call__(self, subnet):
            if len(self.calls) == 30:
                raise Killed
            return super().__call__(subnet)

    run = tmp_path / "killed"
    with pytest.raises(Killed):
        _run(run, "evolutionary", rspace, Dies(rspace, target), 50, seed=1)
    with open(run / "candidates.jsonl", "a") as f:
        f.write('{"index": 30, "key": [1, 2')  # a line cut by SIGKILL mid-write
    previous = RunDir(run).read_candidates()
    assert len(previous) == 30
    objective = Synthetic(rspace, target)
    resumed = _run(run, "evolutionary", rspace, objective, 50, seed=1, previous=previous)
    assert len(objective.calls) == 20 and resumed.evaluated == 20
    strip = lambda rs: [(r["key"], r["objective"]) for r in rs]  # noqa: E731
    assert strip(resumed.records) == strip(full.records)
    lines = (run / "candidates.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(50))
    for name in ("best.yaml", "pareto.csv", "candidates.csv", "summary.json"):
        assert (run / name).is_file()


def test_budget_bounds_and_errors():
    rspace = space()
    total = count_parameters(CFG)
    assert check_budget(rspace, Budget(0.5, 0.1)) == (int(0.45 * total), int(0.55 * total + 0.5))
    assert check_budget(rspace, Budget(100_000, 0.0)) == (100_000, 100_000)
    with pytest.raises(SearchSpaceError, match="budget unreachable"):
        check_budget(rspace, Budget(0.01))
    with pytest.raises(SearchSpaceError, match="budget unreachable"):
        check_budget(space(hidden=[16, 32]), Budget(0.9))
    # inside the space's range but between two of its discrete sizes: named, with the nearest sizes
    rspace = space(Granularity.COARSE_UNIFORM)  # enumerable (128 sub-networks)
    sizes = sorted({rspace.params(g) for g in rspace.enumerate()})
    gap = max(zip(sizes, sizes[1:]), key=lambda pair: pair[1] - pair[0])
    middle = (gap[0] + gap[1]) // 2
    with pytest.raises(SearchSpaceError, match=f"none of the space's .* sub-networks has {middle:,}..{middle:,} "
                       f"parameters \\(nearest: below {gap[0]:,} and above {gap[1]:,}\\)"):
        from nemo_subnet.search.strategies import BudgetSampler

        BudgetSampler(rspace, middle, middle, random.Random(0))
    with pytest.raises(SearchSpaceError, match="exceed the model"):
        space(ffn=[64, 256])
    with pytest.raises(SearchSpaceError, match="exceed the model"):
        space(layers=[0, 2])
    with pytest.raises(SearchSpaceError, match="unknown strategy"):
        make_strategy("annealing", rspace, (1, 10**9), 0)
    with pytest.raises(SearchSpaceError, match="needs importance scores"):
        make_strategy("proxy", rspace, check_budget(rspace, BUDGET), 0)
    with pytest.raises(SearchSpaceError, match="search space: hiden: unknown key; did you mean hidden"):
        SearchSpace.from_dict({"hiden": [1]})
    with pytest.raises(SearchSpaceError, match="granularity: 'medium' is not allowed; allowed: coarse_uniform"):
        SearchSpace.from_dict({"granularity": "medium"})


def test_granularity_defaults(tmp_path):
    coarse, fine = space(Granularity.COARSE_UNIFORM), space(Granularity.FINE_LAYERWISE)
    assert coarse.choices["hidden"] == [16, 32, 48, 64] and coarse.choices["ffn"] == [32, 64, 96, 128]
    assert fine.choices["layers"] == [1, 2, 3, 4, 5, 6] and len(fine.choices["ffn"]) == 16
    assert coarse.slots == 1 and fine.slots == 6
    assert fine.size() > coarse.size()
    path = tmp_path / "space.yaml"
    path.write_text("granularity: coarse_layerwise\nordering: first_k\nffn: [64, 128]\nround_to: 8\n"
                    "budget: {target: 0.4, tolerance: 0.1}\n")
    loaded = SearchSpace.load(path)
    assert loaded.granularity is Granularity.COARSE_LAYERWISE and loaded.budget == Budget(0.4, 0.1)
    assert resolve_space(loaded, CFG).choices["ffn"] == [64, 128]
    assert SearchSpace.from_dict(loaded.to_dict()) == loaded


# --- exportability is a property of the space (invariant 6) --------------------------------------------

def _family_cfg(variant, **overrides):
    from nemo_subnet.conversion.adapters import adapter_for_model_type
    from nemo_subnet.models.tiny_hf import make_hf_config

    hf = make_hf_config(variant, **overrides)
    return adapter_for_model_type(hf.model_type).config_from_hf(hf)


# Llama with 2 groups x 3 heads (hidden 96): head counts 1..6, so hidden sizes that 4 or 5 heads do not
# divide need zero heads at export; GPT-NeoX head size 16; Qwen3 head_dim 24 != hidden / heads
FAMILY_CFGS = {
    "gpt_neox": dict(),
    "llama": dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=2, head_dim=16),
    "qwen2": dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=2),
    "qwen3": dict(),
    "smollm2": dict(),  # 9 heads in 3 groups at hidden 144: Llama exports need hidden % 9 == 0 for full layers
}


@pytest.mark.parametrize("family", list(FAMILY_CFGS))
@pytest.mark.parametrize("granularity", list(Granularity))
def test_default_spaces_sample_and_mutate_only_exportable(family, granularity):
    from nemo_subnet.subnet.config import check_exportable

    cfg = _family_cfg(family, **FAMILY_CFGS[family])
    rspace = resolve_space(SearchSpace(granularity=granularity, ordering="first_k"), cfg)
    assert min(rspace.choices["layers"]) < cfg.num_layers  # depth pruning is part of every default space
    bounds = check_budget(rspace, Budget(0.5, 0.5))
    strategy = make_strategy("evolutionary", rspace, bounds, 0)
    asked = 0
    for _ in range(60):  # random asks first, then children (crossover + mutation)
        genome = strategy.ask()
        if genome is None:  # a small space, exhausted
            break
        check_exportable(cfg, resolve(cfg, rspace.sizes(genome)))
        strategy.tell(genome, float(rspace.params(genome)))
        asked += 1
    assert asked >= min(60, rspace.size() // 4)
    for genome in (rspace.extreme(False), rspace.extreme(True)):
        check_exportable(cfg, resolve(cfg, rspace.sizes(genome)))


def test_neox_heads_follow_hidden_by_default():
    cfg = _family_cfg("gpt_neox")  # hidden 64, 4 heads of 16
    rspace = resolve_space(SearchSpace(granularity=Granularity.FINE_LAYERWISE, ordering="first_k"), cfg)
    assert rspace.choices["hidden"] == [16, 32, 48, 64] and rspace.choices["query_groups"] == ["tied"]
    genome = (1, 1) + (0, 0, 3) * rspace.slots  # hidden 32, 2 layers
    sizes = rspace.sizes(genome)
    assert sizes.hidden == 32 and [layer.query_groups for layer in sizes.layer] == [2, 2]
    assert rspace.params(genome) == subnet_parameters(cfg, sizes)
    explicit = resolve_space(SearchSpace(ordering="first_k", query_groups=[1, 2]), cfg)
    assert explicit.choices["hidden"] == [32, 48, 64]  # default hidden sizes too narrow for 2 heads are left out


@pytest.mark.parametrize("family,yaml_text,fragments", [
    ("llama", "hidden: [38, 96]\n",
     ["search space not exportable to HF llama: hidden=38", "LlamaConfig needs hidden_size to be a multiple of "
      "num_attention_heads", "hidden choices that export with every head choice: [96]"]),
    ("llama", "hidden: [50, 96]\nquery_groups: [2]\nheads_per_group: [2]\n",
     ["hidden=50 with query_groups=2 x heads_per_group=2", "multiples of 4 or of 6"]),
    ("gpt_neox", "hidden: [40, 64]\n",
     ["hidden=40 with tied heads", "hidden_size 40 is not a multiple of the head size 16", "[64]"]),
    ("gpt_neox", "hidden: [16, 32, 64]\nquery_groups: [1, 2, 4]\n",
     ["hidden=16 with query_groups=2 x heads_per_group=1", "need hidden_size >= 32, got 16",
      "(query_groups, heads_per_group) pairs that export with every hidden choice: [(1, 1)]"]),
    ("llama", "query_groups: tied\n", ["query_groups: tied is for gpt_neox"]),
    ("gpt_neox", "query_groups: all\n", ["query_groups: expected a non-empty list of integers (or tied"]),
])
def test_space_yaml_with_unexportable_combination_fails_at_validation(tmp_path, family, yaml_text, fragments):
    cfg = _family_cfg(family, **FAMILY_CFGS[family])
    path = tmp_path / "space.yaml"
    path.write_text("granularity: coarse_layerwise\nordering: first_k\n" + yaml_text)
    with pytest.raises(SearchSpaceError) as err:
        resolve_space(SearchSpace.load(path), cfg)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_qwen_has_no_hidden_heads_constraint():
    # transformers 5.23's Qwen2/Qwen3 configs take an explicit head_dim and do not check hidden % heads
    for family in ("qwen2", "qwen3"):
        cfg = _family_cfg(family, **FAMILY_CFGS[family])
        assert resolve_space(SearchSpace(ordering="first_k", hidden=[37, 41]), cfg).choices["hidden"] == [37, 41]


@pytest.mark.parametrize("family,subnet,fragment", [
    ("llama", SubnetConfig(hidden=50, layer=LayerSubnet(query_groups=2, heads_per_group=2)),
     "sub-network cannot be exported to HF (hidden=50, widest layer query_groups=2 x heads_per_group=2): llama: "
     "transformers' LlamaConfig needs hidden_size to be a multiple of num_attention_heads"),
    ("llama", SubnetConfig(hidden=50, layers=2, layer=[LayerSubnet(query_groups=1, heads_per_group=1),
                                                      LayerSubnet(query_groups=2, heads_per_group=2)]),
     "widest layer query_groups=2 x heads_per_group=2"),
    ("gpt_neox", SubnetConfig(hidden=24), "gpt_neox: hidden_size 24 is not a multiple of the head size 16"),
    ("gpt_neox", SubnetConfig(hidden=32, layer=LayerSubnet(query_groups=3)),
     "gpt_neox: 3 attention heads of size 16 need hidden_size >= 48, got 32"),
])
def test_explicit_subnet_config_that_cannot_export_is_refused(family, subnet, fragment):
    from nemo_subnet.subnet.config import SubnetConfigError, check_exportable

    cfg = _family_cfg(family, **FAMILY_CFGS[family])
    resolved = resolve(cfg, subnet)  # a valid sub-network of the model ...
    with pytest.raises(SubnetConfigError) as err:  # ... that transformers cannot hold
        check_exportable(cfg, resolved)
    assert fragment in str(err.value), str(err.value)
    # a padded layout is fine: 2 x 2 heads at hidden 54 export as 2 x 3 (54 % 6 == 0)
    if family == "llama":
        check_exportable(cfg, resolve(cfg, SubnetConfig(hidden=54, layer=LayerSubnet(query_groups=2, heads_per_group=2))))


def test_round_to_that_leaves_no_smaller_hidden_size_is_refused():
    """SmolLM2's shape: 9 heads, so a Llama export needs hidden % 9 == 0. round_to 16 at hidden 144 (64 at 576 for
    the real model) leaves only the full width: the hidden size would silently not be searched."""
    cfg = _family_cfg("smollm2")  # hidden 144, 3 groups x 3 heads
    for granularity in Granularity:
        with pytest.raises(SearchSpaceError) as err:
            resolve_space(SearchSpace(granularity=granularity, ordering="first_k", round_to=16), cfg)
        message = str(err.value)
        assert "with round_to 16 no hidden size below the model's 144 exports to HF llama" in message, message
        assert "round_to 8: hidden [72, 144]" in message, message
    assert resolve_space(SearchSpace(granularity=Granularity.FINE_LAYERWISE, ordering="first_k", round_to=8),
                         cfg).choices["hidden"] == [72, 144]
    explicit = SearchSpace(ordering="first_k", round_to=16, hidden=[144])  # a fixed hidden size, asked for
    assert resolve_space(explicit, cfg).choices["hidden"] == [144]


class _FlatScores:
    """Importance scores of CFG's shape with every unit equally important and deeper layers more."""

    def hidden(self):
        return torch.ones(CFG.hidden_size)

    def layers(self, metric=None):
        return torch.arange(1.0, CFG.num_layers + 1)

    def heads(self):
        return torch.ones(CFG.num_layers, CFG.num_attention_heads)

    def ffn(self):
        return torch.ones(CFG.num_layers, CFG.ffn_hidden_size)


def test_proxy_ranks_the_whole_band_when_it_holds_fewer_genomes_than_proxy_samples(monkeypatch):
    """A space too large to enumerate whose budget band holds fewer sub-networks than proxy_samples (SmolLM2's
    fine_uniform space at 0.34: 1,698 of 34,560 in band, 2,000 asked): the proxy ranks what sampling found."""
    from nemo_subnet.search import strategies

    rspace = space(Granularity.COARSE_UNIFORM)
    bounds = check_budget(rspace, BUDGET)
    in_band = {rspace.key(g) for g in rspace.enumerate() if bounds[0] <= rspace.params(g) <= bounds[1]}
    monkeypatch.setattr(strategies, "ENUMERATE_LIMIT", 0)  # sample it as a large space is sampled
    proxy = make_strategy("proxy", rspace, bounds, 0, strategies.StrategyConfig(proxy_samples=10 * len(in_band)),
                          scores=_FlatScores())
    assert 0 < len(proxy.proxy) <= len(in_band) and set(proxy.proxy) <= in_band
