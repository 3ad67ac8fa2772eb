"""Tokens each run needs to reach a target validation perplexity, and how many times fewer than a reference.

Inputs are run directories (their ``metrics.jsonl`` validation records: tokens seen, valid perplexity).
Between two evaluations perplexity is interpolated linearly in tokens; the crossing is the first pair of
consecutive evaluations that brackets the target (an evaluation already at or below the target at its first
point counts at that point). A run that never gets there is reported as "not reached" with its best
perplexity, and the table is still written. ``ratio`` = reference tokens / run tokens (the first run is the
reference, e.g. random init): 9.2 means the run needed 9.2x fewer tokens.

Outputs in ``out``: ``tokens_to_target.csv``, ``tokens_to_target.json`` and ``tokens_to_target.png``
(valid perplexity vs tokens per run, log scale, the target as a horizontal line, crossings marked).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from nemo_subnet.errors import UserError
from nemo_subnet.files import write_text_atomic
from nemo_subnet.training.metrics import METRICS_FILE, read_metrics


def parse_runs(items: list[str]) -> dict[str, Path]:
    """``["name=DIR", ...]`` -> {name: DIR} in the given order."""
    runs: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--runs takes NAME=DIR pairs, got {item!r}")
        if name in runs:
            raise UserError(f"run name {name!r} given twice")
        runs[name] = Path(path)
    return runs


def validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    """[(tokens, valid_ppl)] of a run, by tokens; the last record wins for a repeated step (resumed runs)."""
    if not (Path(run_dir) / METRICS_FILE).is_file():
        raise UserError(f"{run_dir} has no {METRICS_FILE} (is it a training run directory?)")
    by_step = {r["step"]: r for r in read_metrics(run_dir, "valid")}
    return sorted((r["tokens"], r["valid_ppl"]) for r in by_step.values())


def tokens_at(curve: list[tuple[float, float]], target: float) -> float | None:
    """Tokens where the linearly interpolated curve first reaches ``target``; None if it never does.

    The one implementation of the crossing: the pipeline report and the study use it too, and with (FLOPs,
    ppl) points it gives compute-to-target (any x that grows along the curve)."""
    for i, (tokens, ppl) in enumerate(curve):
        if ppl <= target:
            if i == 0:
                return float(tokens)
            prev_tokens, prev_ppl = curve[i - 1]
            return prev_tokens + (prev_ppl - target) / (prev_ppl - ppl) * (tokens - prev_tokens)
    return None


def tokens_to_target(runs: dict[str, Path], target_ppl: float, out: Path) -> list[dict]:
    """The table (one row per run, reference first); writes CSV, JSON and PNG under ``out``."""
    if not runs:
        raise UserError("no runs given")
    if not target_ppl > 1.0:
        raise UserError(f"--target-ppl must be > 1, got {target_ppl}")
    curves = {name: validation_curve(path) for name, path in runs.items()}
    for name, curve in curves.items():
        if not curve:
            raise UserError(f"run {name} ({runs[name]}) has no validation records")
    rows = []
    for name, curve in curves.items():
        tokens = tokens_at(curve, target_ppl)
        rows.append({"run": name, "dir": str(runs[name]), "tokens": tokens, "reached": tokens is not None,
                     "best_ppl": min(p for _, p in curve), "final_ppl": curve[-1][1], "final_tokens": curve[-1][0]})
    reference = rows[0]["tokens"]
    for row in rows:
        row["ratio"] = reference / row["tokens"] if reference is not None and row["tokens"] else None

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "tokens_to_target.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["run", "tokens", "ratio", "reached", "best_ppl", "final_ppl",
                                               "final_tokens", "dir"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "tokens": "not reached" if row["tokens"] is None else f"{row['tokens']:.0f}"})
    write_text_atomic(out / "tokens_to_target.json", json.dumps(
        {"target_ppl": target_ppl, "reference": rows[0]["run"], "rows": rows}, indent=1))
    _plot(curves, rows, target_ppl, out / "tokens_to_target.png")
    return rows


def _plot(curves: dict, rows: list[dict], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        tokens, ppl = zip(*curves[row["run"]])
        (line,) = ax.plot(tokens, ppl, marker="o", markersize=3, label=row["run"])
        if row["tokens"] is not None:
            ax.plot([row["tokens"]], [target], marker="x", markersize=9, color=line.get_color())
    ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target ppl {target:g}")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Tokens to target validation perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
