"""The report's tokens-to-target cells and the demo's printed excerpt."""

from __future__ import annotations

from nemo_subnet.demo import report_excerpt
from nemo_subnet.report import reach_cells


def test_a_crossing_inside_the_first_interval_is_an_upper_bound_without_a_ratio():
    first = {"subnet init + KD": 6_144, "random init": 6_144}
    rows = reach_cells({"subnet init + KD": 4_100.0, "random init": 61_440.0}, first)
    assert rows == [["subnet init + KD", "at most 6,144 (before the first evaluation)", None],
                    ["random init", "61,440", "1.00x"]]


def test_a_resolved_crossing_gets_its_ratio_and_the_others_their_reason():
    first = {"subnet init + KD": 6_144, "random init": 6_144}
    assert reach_cells({"subnet init + KD": 12_288.0, "random init": 61_440.0}, first)[0] == [
        "subnet init + KD", "12,288", "5.00x"]
    assert reach_cells({"subnet init + KD": 0.0, "random init": None}, first) == [
        ["subnet init + KD", "0 (init already below target)", None], ["random init", None, None]]


def test_no_ratio_against_a_baseline_that_crossed_inside_its_first_interval():
    first = {"subnet init + KD": 2_048, "random init": 2_048}
    rows = reach_cells({"subnet init + KD": 8_192.0, "random init": 1_000.0}, first)
    assert rows[0] == ["subnet init + KD", "8,192", None]


def test_the_demo_prints_stage_times_curves_and_completions_not_the_search():
    text = "\n".join(["# report", "", "## Stages", "", "| stage | seconds |", "## Sub-network search", "",
                      "ranked", "![search](search.png)", "## Student pretraining at equal tokens", "", "| tokens |",
                      "![students](students.png)", "## Completions", "", "**teacher**", "## HF parity", "rows"])
    excerpt = report_excerpt(text)
    assert "## Stages" in excerpt and "## Student pretraining" in excerpt and "**teacher**" in excerpt
    assert "ranked" not in excerpt and "![" not in excerpt and "HF parity" not in excerpt
