"""tokens-to-target on synthetic metrics: interpolation, ratios, "not reached", outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from nemo_subnet.cli import UserError, main
from nemo_subnet.training.tokens_to_target import tokens_at, tokens_to_target


def _run(root: Path, name: str, points: list[tuple[int, float]]) -> Path:
    run = root / name
    run.mkdir()
    lines = [json.dumps({"kind": "train", "step": 1, "tokens": 1, "loss": 9.0})]
    lines += [json.dumps({"kind": "valid", "step": i + 1, "tokens": t, "valid_loss": 0.0, "valid_ppl": p})
              for i, (t, p) in enumerate(points)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_interpolation():
    curve = [(100, 50.0), (200, 30.0), (300, 10.0)]
    assert tokens_at(curve, 40.0) == 150.0
    assert tokens_at(curve, 20.0) == 250.0
    assert tokens_at(curve, 60.0) == 100.0  # already below at the first evaluation
    assert tokens_at(curve, 5.0) is None
    assert tokens_at([(100, 50.0), (200, 20.0), (300, 40.0), (400, 10.0)], 30.0) == 100 + 20 / 30 * 100  # first crossing


def test_table_ratios_and_not_reached(tmp_path):
    runs = {"random": _run(tmp_path, "random", [(1000, 80.0), (2000, 40.0), (3000, 20.0)]),
            "subnet": _run(tmp_path, "subnet", [(500, 30.0), (1000, 15.0)]),
            "never": _run(tmp_path, "never", [(1000, 90.0), (2000, 60.0)])}
    rows = tokens_to_target(runs, 20.0, tmp_path / "out")
    assert [r["run"] for r in rows] == ["random", "subnet", "never"]
    assert rows[0]["tokens"] == 3000 and rows[0]["ratio"] == 1.0
    assert rows[1]["tokens"] == pytest.approx(500 + 10 / 15 * 500) and rows[1]["ratio"] == pytest.approx(3000 / rows[1]["tokens"])
    assert rows[2]["tokens"] is None and rows[2]["ratio"] is None and rows[2]["best_ppl"] == 60.0
    table = list(csv.DictReader((tmp_path / "out" / "tokens_to_target.csv").open()))
    assert table[2]["tokens"] == "not reached"
    assert json.loads((tmp_path / "out" / "tokens_to_target.json").read_text())["target_ppl"] == 20.0
    assert (tmp_path / "out" / "tokens_to_target.png").stat().st_size > 1000


def test_cli(tmp_path, capsys):
    a = _run(tmp_path, "a", [(1000, 80.0), (2000, 10.0)])
    b = _run(tmp_path, "b", [(1000, 9.0)])
    assert main(["tokens-to-target", "--runs", f"random={a}", f"kd={b}", "--target-ppl", "20", "--out",
                 str(tmp_path / "o")]) == 0
    assert "kd" in capsys.readouterr().out
    assert main(["tokens-to-target", "--runs", f"random={a}", "--target-ppl", "5", "--out", str(tmp_path / "o2")]) == 2
    assert (tmp_path / "o2" / "tokens_to_target.csv").exists()  # the table is still written
    with pytest.raises(UserError, match="NAME=DIR"):
        from nemo_subnet.training.tokens_to_target import parse_runs

        parse_runs(["nodir"])
