"""Successive halving over evaluation tokens and a family of budgets, against pure-Python objectives."""

import json
import zlib

import pytest
from test_strategies import CFG, Killed, Synthetic, _target, space

from nemo_subnet.search import Budget, SearchSpaceError, check_budget, make_strategy, search_loop
from nemo_subnet.search.fidelity import Ladder, rung_batches
from nemo_subnet.search.results import RunDir
from nemo_subnet.search.runner import SearchConfig, prepare
from nemo_subnet.subnet.params import subnet_parameters

RUNGS = [1, 3, 9]


class Noisy(Synthetic):
    """The synthetic distance plus noise that shrinks with the batches measured (a seeded hash: replayable)."""

    def __call__(self, subnet, batches):
        self.calls.append((subnet, batches))
        true = Synthetic.__call__(self, subnet)
        self.calls.pop()
        noise = (zlib.crc32(json.dumps([subnet.to_dict(), batches]).encode()) % 1000) / 1000 - 0.5
        return true + 4.0 * noise / batches

    def cost(self, subnet, batches):
        return batches * 10, batches * 10 * 1e6


def _run(path, rspace, objective, n, *, bounds, budgets=None, previous=(), strategy="evolutionary", seed=0):
    strat = make_strategy(strategy, rspace, bounds, seed)
    return search_loop(rspace, strat, objective, RunDir(path), n, previous=previous, rungs=RUNGS, reduction=3,
                       budgets=budgets, progress=False, plots=False)


def test_rung_batches():
    assert rung_batches(8, 1, 3) == [8]
    assert rung_batches(27, 3, 3) == [3, 9, 27]
    assert rung_batches(8, 3, 3) == [1, 2, 8]
    assert rung_batches(2, 3, 3) == [1, 2]  # a rung that repeats a smaller one is dropped
    assert rung_batches(8, 3, 3, dp_size=2) == [2, 8]  # whole micro-batches for every DP rank
    with pytest.raises(ValueError, match="reduction >= 2"):
        rung_batches(8, 2, 1)


def test_ladder_promotes_the_best_third_per_bin():
    ladder = Ladder(2, 3, bins=2)
    for index, value in enumerate([5.0, 1.0, 3.0, 2.0, 4.0, 6.0]):
        ladder.add(0, 0, index, value)
    ladder.add(1, 0, 10, 9.0)
    assert ladder.promotion() == (0, 0, 1)  # 6 results: the best 2 (indices 1, 3) go up, best first
    ladder.add(0, 1, 1, 1.5)
    assert ladder.promotion() == (0, 0, 3)
    ladder.add(0, 1, 3, 2.5)
    assert ladder.promotion() is None  # bin 1 holds one result: nothing until the ladder is closed
    assert ladder.promotion(final=True) == (1, 0, 10) and ladder.top(1) == 0


def test_successive_halving_spends_tokens_per_rung_and_picks_at_full_fidelity(tmp_path):
    rspace = space()
    bounds = check_budget(rspace, Budget(0.5, 0.05))
    objective = Noisy(rspace, _target(rspace, *bounds))
    result = _run(tmp_path, rspace, objective, 60, bounds=bounds)
    summary = json.loads((tmp_path / "summary.json").read_text())
    per_rung = [r["evaluations"] for r in summary["rungs"]]
    assert per_rung[0] == 60 and per_rung[1] >= 60 // 3 and per_rung[2] >= per_rung[1] // 3 >= 1
    assert [r["tokens"] for r in summary["rungs"]] == [n * b * 10 for n, b in zip(per_rung, RUNGS)]
    assert summary["tokens"] == sum(r["tokens"] for r in summary["rungs"]) < 60 * 9 * 10  # cheaper than all at full
    assert summary["flops"] == pytest.approx(summary["tokens"] * 1e6)
    top = [r for r in result.records if r["rung"] == 2]
    assert len(top) == per_rung[2] and result.best_objective == min(r["objective"] for r in top)
    assert summary["best"]["rung"] == 2 and summary["best"]["batches"] == 9
    lines = [json.loads(x) for x in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    assert len(lines) == sum(per_rung) and len({(tuple(r["key"]), r["rung"]) for r in lines}) == len(lines)
    # a promoted candidate was first measured on the lowest rung's batches, then on more
    for record in result.records:
        assert len(record["objectives"]) == record["rung"] + 1


def test_fidelity_resume_after_kill_equals_uninterrupted(tmp_path):
    rspace = space()
    bounds = check_budget(rspace, Budget(0.5, 0.05))
    target = _target(rspace, *bounds)
    full = _run(tmp_path / "full", rspace, Noisy(rspace, target), 40, bounds=bounds, seed=1)

    class Dies(Noisy):
        def __call__(self, subnet, batches):
            if len(self.calls) == 31:
                raise Killed
            return super().__call__(subnet, batches)

    with pytest.raises(Killed):
        _run(tmp_path / "killed", rspace, Dies(rspace, target), 40, bounds=bounds, seed=1)
    previous = RunDir(tmp_path / "killed").read_candidates()
    assert len(previous) == 31 and any(r["rung"] > 0 for r in previous)
    objective = Noisy(rspace, target)
    resumed = _run(tmp_path / "killed", rspace, objective, 40, bounds=bounds, seed=1, previous=previous)
    total = json.loads((tmp_path / "full" / "summary.json").read_text())["evaluations"]
    assert len(objective.calls) == resumed.evaluated == total - 31
    strip = lambda rs: [(r["key"], r["objective"], r["rung"]) for r in rs]  # noqa: E731
    assert strip(resumed.records) == strip(full.records)
    assert (tmp_path / "killed" / "best.yaml").read_text() == (tmp_path / "full" / "best.yaml").read_text()


@pytest.mark.parametrize("strategy", ["evolutionary", "random"])
def test_family_of_budgets_in_one_search(tmp_path, strategy):
    rspace = space()
    budgets = [Budget(0.25, 0.05), Budget(0.33, 0.05), Budget(0.5, 0.05)]
    bounds = [check_budget(rspace, b) for b in budgets]
    objective = Noisy(rspace, _target(rspace, *bounds[1]))
    result = _run(tmp_path, rspace, objective, 45, bounds=bounds, budgets=budgets, strategy=strategy)
    assert [r["budget"] for r in result.records[:6]] == [0.25, 0.33, 0.5] * 2  # bins take turns
    for record in result.records:
        lower, upper = bounds[[b.target for b in budgets].index(record["budget"])]
        assert lower <= record["params"] <= upper
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "best" not in summary and [b["target"] for b in summary["budgets"]] == [0.25, 0.33, 0.5]
    for entry, (lower, upper) in zip(result.budgets, bounds):
        assert entry["candidates"] == 15 and lower <= entry["params"] <= upper
        assert lower <= subnet_parameters(CFG, entry["best"]) <= upper
        assert (tmp_path / entry["file"]).is_file() and entry["file"] == f"best_{entry['target']:g}.yaml"
        same_bin = [r for r in result.records if r["budget"] == entry["target"]]
        top = max(r["rung"] for r in same_bin)
        assert entry["objective"] == min(r["objective"] for r in same_bin if r["rung"] == top)
    assert not (tmp_path / "best.yaml").exists()


def test_one_bin_is_the_plain_search(tmp_path):
    """Passing the bounds as a one-element family changes nothing, draw for draw."""
    rspace = space()
    bounds = check_budget(rspace, Budget(0.5, 0.05))
    target = _target(rspace, *bounds)
    a = _run(tmp_path / "a", rspace, Noisy(rspace, target), 30, bounds=bounds)
    b = _run(tmp_path / "b", rspace, Noisy(rspace, target), 30, bounds=[bounds])
    assert [r["key"] for r in a.records] == [r["key"] for r in b.records]


def test_overlapping_budgets_and_bad_fidelity_are_refused(tmp_path):
    from nemo_subnet.config import ConfigError, from_dict
    from nemo_subnet.search.runner import EvalConfig
    from nemo_subnet.search.space import BudgetFamily
    from nemo_subnet.search.objective import EvalForward

    common = dict(ckpt=tmp_path, data=tmp_path, out=tmp_path / "run", space=space().space)
    with pytest.raises(SearchSpaceError, match="budgets 0.33 and 0.35 overlap"):
        prepare(SearchConfig(**common, budgets=BudgetFamily([0.33, 0.35], 0.05)), CFG)
    with pytest.raises(ConfigError, match="eval.reduction: 1 is out of range; allowed: >= 2"):
        prepare(SearchConfig(**common, budget=Budget(0.5), eval=EvalConfig(rungs=3, reduction=1)), CFG)
    with pytest.raises(ConfigError, match="eval.forward: compact runs each candidate outside the compiled"):
        prepare(SearchConfig(**common, budget=Budget(0.5), eval=EvalConfig(compile=True, forward="compact")), CFG)
    # every problem at once, each named by its dotted key, also from YAML / overrides
    with pytest.raises(ConfigError) as err:
        from_dict(SearchConfig, {"budget": {"target": 0.5}, "budgets": {"targets": [0.3, 0.3]}, "eval": {"rungs": 0}})
    assert sorted(err.value.problems) == ["budgets.targets: [0.3, 0.3] repeats a target; give each once",
                                          "budgets: give budget (one target) or budgets (a family), not both",
                                          "eval.rungs: 0 is out of range; allowed: >= 1"]
    # compile alone evaluates masked (the compiled graph); forward alone is what it says
    assert from_dict(SearchConfig, {"eval": {"compile": True}}).eval.executed_forward is EvalForward.MASKED
    assert from_dict(SearchConfig, {}).eval.executed_forward is EvalForward.COMPACT
