"""The study's table: per row, mean ± std over seeds of test ppl at equal tokens, valid ppl at equal compute,
tokens- and compute-to-target (and their ratios to random-init CE), FLOPs by kind; CSV, markdown, plots.

Definitions (the report states them too):
- target: random_ce_long's final valid perplexity (random init, CE, long_factor x the token budget: its
  curve has flattened), the highest over seeds so every seed of the reference reaches it; ratios are
  random_ce_long's tokens (compute) to target over the row's;
- compute of a run at t tokens: importance + search FLOPs of its init + t x (student fwd+bwd + teacher
  forward when KD) FLOPs per token; compute-to-target is the crossing on the (compute, valid ppl) curve;
- equal compute: valid ppl (interpolated) at random_ce's total compute; None when the run's overhead alone
  exceeds it or its curve ends before it;
- equal tokens: the test perplexity each run measured once at its end (the long baseline: at its longer end).
Crossings use :func:`nemo_subnet.training.tokens_to_target.tokens_at`, the pipeline report's implementation.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from nemo_subnet.files import write_csv_atomic, write_text_atomic
from nemo_subnet.training.tokens_to_target import tokens_at


def value_at(curve: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of a (x, y) curve at ``x``; None outside it."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return curve[0][1] if curve and curve[0][0] == x else None


def seed_metrics(row: dict, seed: dict, target: float, reference_compute: float) -> dict:
    overhead = row["importance_flops"] + row["search_flops"]
    per_token = seed["student_train_flops_per_token"] + seed["teacher_forward_flops_per_token"]
    compute_curve = [(overhead + t * per_token, ppl) for t, ppl in seed["curve"]]
    compute_tt = tokens_at(compute_curve, target)
    return {"test_ppl": seed["test_ppl"], "final_valid_ppl": seed["curve"][-1][1],
            "tokens_to_target": tokens_at(seed["curve"], target), "compute_to_target": compute_tt,
            "valid_ppl_at_equal_compute": value_at(compute_curve, reference_compute),
            "student_flops": seed["tokens"] * seed["student_train_flops_per_token"],
            "teacher_flops": seed["tokens"] * seed["teacher_forward_flops_per_token"],
            "importance_flops": row["importance_flops"], "search_flops": row["search_flops"],
            "total_flops": overhead + seed["tokens"] * per_token}


def _mean_std(values: list) -> tuple[float | None, float | None, int]:
    """Mean and sample std of the values that exist (None: a seed that never reached); n of them."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None, 0
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0, len(present)


REFERENCE = "random_ce_long"
"""The row whose final perplexity is the target and whose tokens / compute to it are the ratios' numerator."""

METRICS = ("test_ppl", "final_valid_ppl", "valid_ppl_at_equal_compute", "tokens_to_target", "compute_to_target",
           "student_flops", "teacher_flops", "importance_flops", "search_flops", "total_flops")


def summarize(rows: list[dict]) -> dict:
    by_name = {r["row"]: r for r in rows}
    target = max(s["curve"][-1][1] for s in by_name[REFERENCE]["seeds"])
    reference_compute = statistics.fmean(s["tokens"] * s["student_train_flops_per_token"]
                                         for s in by_name["random_ce"]["seeds"])
    table = []
    for row in rows:
        per_seed = [seed_metrics(row, s, target, reference_compute) for s in row["seeds"]]
        entry = {"row": row["row"], "group": row["group"], "init": row["init"], "kd": row["kd"],
                 "divergence": row["divergence"], "top_k": row["top_k"], "budget": row["budget"],
                 "granularity": row["granularity"], "tokens": row["seeds"][0]["tokens"], "seeds": len(per_seed),
                 "search_evaluations": row["search_evaluations"], "per_seed": per_seed}
        for metric in METRICS:
            entry[metric], entry[f"{metric}_std"], entry[f"{metric}_n"] = _mean_std([m[metric] for m in per_seed])
        table.append(entry)
    ref = next(e for e in table if e["row"] == REFERENCE)
    for entry in table:
        for kind in ("tokens", "compute"):
            mine, theirs = entry[f"{kind}_to_target"], ref[f"{kind}_to_target"]
            complete = entry[f"{kind}_to_target_n"] == entry["seeds"]  # every seed reached the target
            entry[f"{kind}_ratio"] = theirs / mine if (complete and mine and theirs) else None
    return {"target": target, "reference_compute": reference_compute, "rows": table}


def _fmt(mean, std=None, digits=2, sci=False, n=None, seeds=None) -> str:
    if mean is None:
        return "not reached"
    text = f"{mean:.{digits}e}" if sci else f"{mean:,.{digits}f}"
    if std is not None:
        text += f" ± {std:.{digits}e}" if sci else f" ± {std:,.{digits}f}"
    if n is not None and seeds is not None and n < seeds:
        text += f" ({n}/{seeds} seeds)"
    return text


def _ratio(entry: dict, kind: str) -> str:
    if entry[f"{kind}_ratio"] is not None:
        return f"{entry[f'{kind}_ratio']:.2f}"
    if entry[f"{kind}_to_target"] == 0 and entry[f"{kind}_to_target_n"] == entry["seeds"]:
        return "init below target"
    return "—"


def markdown(summary: dict, wall_s: float | None = None) -> str:
    lines = ["| row | test ppl (equal tokens) | valid ppl (equal compute) | tokens to target | x fewer tokens | "
             "FLOPs to target | x less compute | student FLOPs | teacher fwd FLOPs | importance FLOPs | search FLOPs |",
             "|" + "---|" * 11]
    for e in summary["rows"]:
        s = e["seeds"]
        lines.append("| " + " | ".join([
            e["row"], _fmt(e["test_ppl"], e["test_ppl_std"]),
            _fmt(e["valid_ppl_at_equal_compute"], e["valid_ppl_at_equal_compute_std"],
                 n=e["valid_ppl_at_equal_compute_n"], seeds=s),
            _fmt(e["tokens_to_target"], e["tokens_to_target_std"], 0, n=e["tokens_to_target_n"], seeds=s),
            _ratio(e, "tokens"),
            _fmt(e["compute_to_target"], e["compute_to_target_std"], 2, True, e["compute_to_target_n"], s),
            _ratio(e, "compute"),
            _fmt(e["student_flops"], None, 2, True), _fmt(e["teacher_flops"], None, 2, True),
            _fmt(e["importance_flops"], None, 2, True), _fmt(e["search_flops"], None, 2, True)]) + " |")
    head = [f"Target: {REFERENCE}'s final valid perplexity {summary['target']:.3f} (highest over seeds); ratios: "
            f"{REFERENCE}'s tokens (FLOPs) to target over the row's; equal compute: "
            f"{summary['reference_compute']:.3e} FLOPs (random_ce's training). Mean ± std over "
            f"{summary['rows'][0]['seeds']} seeds; 'not reached' counts only seeds that got there.", ""]
    if wall_s is not None:
        head += [f"Wall time of the study (shared stages + every row, as recorded when they ran): "
                 f"{wall_s / 60:.1f} min.", ""]
    return "\n".join(head + lines) + "\n"


def write_csv(summary: dict, path: Path) -> None:
    fields = ["row", "group", "init", "kd", "divergence", "top_k", "budget", "granularity", "tokens", "seeds",
              "search_evaluations", "tokens_ratio", "compute_ratio"]
    for metric in METRICS:
        fields += [metric, f"{metric}_std", f"{metric}_n"]
    write_csv_atomic(path, fields, summary["rows"])


def plot(rows: list[dict], summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for axis, name in (("tokens", "curves_tokens.png"), ("compute", "curves_compute.png")):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for row in rows:
            if row["group"] not in ("baselines", "inits"):
                continue
            seed = row["seeds"][0]
            per_token = seed["student_train_flops_per_token"] + seed["teacher_forward_flops_per_token"]
            overhead = row["importance_flops"] + row["search_flops"]
            points = {}
            for s in row["seeds"]:  # mean over seeds at each evaluation
                for t, ppl in s["curve"]:
                    points.setdefault(t, []).append(ppl)
            xs = sorted(points)
            ys = [statistics.fmean(points[t]) for t in xs]
            xs = xs if axis == "tokens" else [overhead + t * per_token for t in xs]
            ax.plot(xs, ys, marker=".", label=row["row"], linestyle="--" if not row["kd"] else "-")
        ax.axhline(summary["target"], color="gray", linestyle=":", label="target")
        if axis == "compute":
            ax.axvline(summary["reference_compute"], color="black", linewidth=0.6, label="equal compute")
        ax.set(xlabel="training tokens" if axis == "tokens" else "FLOPs (incl. importance + search)",
               ylabel="valid perplexity", yscale="log", title=f"study: valid ppl vs {axis}")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)


def recorded_wall_s(study_dir: Path, rows: list[dict]) -> float:
    """Seconds the shared stages and every row took when they ran (a resumed study still reports the total)."""
    import json

    stages = sum(json.loads(p.read_text()).get("seconds", 0.0)
                 for p in (Path(study_dir) / "base" / ".stages").glob("*.done.json"))
    return stages + sum(r["wall_s"] for r in rows)


def write_report(rows: list[dict], out: Path, wall_s: float | None = None, title: str = "study") -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    write_csv(summary, out / f"{title}.csv")
    text = f"# nemo-subnet {title}\n\n" + markdown(summary, wall_s)
    write_text_atomic(out / f"{title}.md", text)
    plot(rows, summary, out)
    return summary
