"""Paired compute verdicts with runs that did not reach the target: such a seed counts at the compute it spent
(a bound), and a verdict the bound could flip is never given."""

from __future__ import annotations

import math

import pytest


def _summary(ratios: dict[int, tuple[float, bool]]) -> dict:
    """evosearch_kd against random_ref (1e12 FLOPs per seed): {seed: (ratio, reached)}; a run that did not reach
    the target spent 1e12 / ratio in all."""
    per_seed = []
    for seed, (ratio, reached) in ratios.items():
        per_seed.append({"row": "random_ref", "seed": seed, "compute_to_target": 1e12, "total_flops": 1e12,
                         "test_ppl": 10.0})
        per_seed.append({"row": "evosearch_kd", "seed": seed, "compute_to_target": 1e12 / ratio if reached else None,
                         "total_flops": 1e12 / ratio, "test_ppl": 10.0})
    rows = [{"row": r, "compute_ratio_cap": None, "overhead_flops": 0.0, "total_flops": 1e12}
            for r in ("random_ref", "evosearch_kd")]
    return {"rows": rows, "per_seed": per_seed, "seeds": sorted(ratios)}


def _goal(ratios) -> dict:
    from nemo_subnet.study.config import mini
    from nemo_subnet.study.verdicts import comparisons

    pairs = comparisons(mini(), _summary(ratios))
    return next(p for p in pairs if p["a"] == "evosearch_kd" and p["b"] == "random_ref" and p["metric"] == "compute")


def test_every_seed_reached_gives_a_verdict():
    goal = _goal({1: (10.0, True), 2: (11.0, True), 3: (12.0, True)})
    assert goal["verdict"] == "holds" and goal["n"] == 3 and goal["seeds_not_reached"] == []
    assert goal["mean"] == pytest.approx((math.log(10) + math.log(11) + math.log(12)) / 3)


def test_a_seed_short_of_the_target_counts_at_its_bound_and_cannot_make_a_success():
    from nemo_subnet.study.verdicts import verdict_lines

    goal = _goal({1: (10.0, True), 2: (11.0, False), 3: (12.0, True)})
    assert goal["n"] == 3 and goal["seeds_not_reached"] == [2]
    assert goal["mean"] == pytest.approx((math.log(10) + math.log(11) + math.log(12)) / 3)
    assert goal["verdict"] == "unresolved"  # seed 2 may need far more than it spent
    assert goal["effect"].startswith("A needs at most 10.97x less compute")
    assert "not reached: a run short of the target counts at all it spent" in "\n".join(verdict_lines([goal]))


def test_an_upper_bound_still_certifies_a_failure():
    goal = _goal({1: (2.0, True), 2: (2.1, False), 3: (1.9, True)})
    assert goal["verdict"] == "does not hold" and goal["seeds_not_reached"] == [2]
