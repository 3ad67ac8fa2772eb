"""The study's tables: per (row, seed) metrics (``study_seeds.csv``), per row mean ± standard error over seeds
(``study.csv``), paired comparisons and verdicts (verdicts.py), curves (``curves_*.png``), all in ``study.md``.

Definitions (the report states them too):
- target of a seed: ``random_ref``'s final valid perplexity in that seed (random init, CE, long_factor x the token
  budget, annealed at its own length). Every init starts above it (the start is shown), so reaching it is
  training, not bookkeeping;
- compute of a run after t tokens: its init's importance + search FLOPs + its share of a teacher cache's build
  + t x (student fwd+bwd + teacher forward when online) FLOPs per token; compute-to-target is the crossing on
  the (compute, valid ppl) curve (``training.tokens_to_target.tokens_at``, linear between evaluations);
- x fewer tokens: random_ref's tokens over the row's tokens to target, in the same seed;
- x less compute: the seed's random_ref compute (all of it: it reaches its final perplexity at its end) over the
  row's compute-to-target in the same seed; mean ± SE over the seeds that reached it;
- equal compute: valid ppl at the seed's smallest final compute over all rows (every run got that far);
- a run that does not reach the target needs more than all it spent: its "x less compute" is at most random_ref's
  compute over the run's (the table shows that bound for such seeds);
- cap: random_ref's compute over the row's overhead alone (importance + search + cache share), the "x less
  compute" the row would reach if training to the target cost nothing: no row can beat its cap, so a goal above
  the cap fails on the overhead, not on training.
Mean ± SE: the sample std over seeds / sqrt(n). Valid and test samples are the same for every seed and row.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from nemo_subnet.files import write_csv_atomic, write_text_atomic
from nemo_subnet.training.tokens_to_target import tokens_at

REFERENCE = "random_ref"
"""The row whose final perplexity is each seed's target and whose compute is the ratios' numerator."""


def value_at(curve: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of a (x, y) curve at ``x``; None outside it."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return curve[0][1] if curve and curve[0][0] == x else None


def overhead_flops(seed: dict) -> float:
    return seed["importance_flops"] + seed["search_flops"] + seed["cache_flops"]


def compute_curve(seed: dict) -> list[tuple[float, float]]:
    per_token = seed["student_train_flops_per_token"] + seed["teacher_forward_flops_per_token"]
    return [(overhead_flops(seed) + t * per_token, ppl) for t, ppl in seed["curve"]]


def total_flops(seed: dict) -> float:
    return compute_curve(seed)[-1][0]


def seed_metrics(row: str, seed: dict, target: float, reference: dict, equal_compute: float) -> dict:
    compute_tt, tokens_tt = tokens_at(compute_curve(seed), target), tokens_at(seed["curve"], target)
    return {"row": row, "seed": seed["seed"], "tokens": seed["tokens"], "start_valid_ppl": seed["curve"][0][1],
            "final_valid_ppl": seed["curve"][-1][1], "test_ppl": seed["test_ppl"], "target": target,
            "starts_below_target": seed["curve"][0][1] <= target,
            "tokens_to_target": tokens_tt, "compute_to_target": compute_tt,
            "tokens_ratio": reference["tokens"] / tokens_tt if tokens_tt else None,
            "compute_ratio": total_flops(reference) / compute_tt if compute_tt else None,
            "compute_ratio_bound": None if compute_tt else total_flops(reference) / total_flops(seed),
            "overhead_flops": overhead_flops(seed),
            "compute_ratio_cap": total_flops(reference) / overhead_flops(seed) if overhead_flops(seed) else None,
            "valid_ppl_at_equal_compute": value_at(compute_curve(seed), equal_compute),
            "student_flops": seed["tokens"] * seed["student_train_flops_per_token"],
            "teacher_flops": seed["tokens"] * seed["teacher_forward_flops_per_token"],
            "importance_flops": seed["importance_flops"], "search_flops": seed["search_flops"],
            "cache_flops": seed["cache_flops"], "total_flops": total_flops(seed),
            "student_parameters": seed["student_parameters"], "hf_parameters": seed["hf_parameters"],
            "search_evaluations": seed["search_evaluations"], "wall_s": seed["wall_s"]}


def mean_se(values: list) -> tuple[float | None, float | None, int]:
    """Mean and standard error (sample std / sqrt n) of the values that exist (None: not reached); n of them."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None, 0
    se = statistics.stdev(present) / math.sqrt(len(present)) if len(present) > 1 else None
    return statistics.fmean(present), se, len(present)


SUMMARIZED = ("start_valid_ppl", "test_ppl", "final_valid_ppl", "valid_ppl_at_equal_compute", "tokens_to_target",
              "tokens_ratio", "compute_to_target", "compute_ratio", "compute_ratio_bound", "compute_ratio_cap",
              "overhead_flops", "student_flops", "teacher_flops", "importance_flops", "search_flops", "cache_flops",
              "total_flops")


def summarize(rows: list, results: dict[str, list[dict]]) -> dict:
    """Per-seed metrics of every finished run whose seed has a finished reference, and per-row means ± SE."""
    refs = {s["seed"]: s for s in results.get(REFERENCE, [])}
    finished = [s for runs in results.values() for s in runs]
    per_seed, table = [], []
    for row in rows:
        metrics = []
        for seed in results.get(row.name, []):
            if seed["seed"] not in refs:  # no target yet for this seed
                continue
            ref = refs[seed["seed"]]
            equal = min(total_flops(s) for s in finished if s["seed"] == seed["seed"])
            metrics.append(seed_metrics(row.name, seed, ref["curve"][-1][1], ref, equal))
        per_seed += metrics
        entry = {"row": row.name, "group": row.group, "init": row.init.name, "teacher": row.teacher,
                 "starts_below_target": sum(m["starts_below_target"] for m in metrics),
                 "cache": row.cache.name if row.cache else "", "tokens_rule": row.tokens, "seeds": len(metrics),
                 "tokens": metrics[0]["tokens"] if metrics else None,
                 "hf_parameters": metrics[0]["hf_parameters"] if metrics else None,
                 "student_parameters": metrics[0]["student_parameters"] if metrics else None}
        for name in SUMMARIZED:
            entry[name], entry[f"{name}_se"], entry[f"{name}_n"] = mean_se([m[name] for m in metrics])
        table.append(entry)
    return {"rows": table, "per_seed": per_seed, "seeds": sorted(refs)}


def _fmt(mean, se=None, digits=2, sci=False, n=None, seeds=None) -> str:
    if mean is None:
        return "not reached" if seeds else "—"
    f = (lambda v: f"{v:.{digits}e}") if sci else (lambda v: f"{v:,.{digits}f}")
    text = f(mean) + (f" ± {f(se)}" if se is not None else "")
    return text + (f" ({n}/{seeds})" if n is not None and seeds and n < seeds else "")


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def markdown_table(summary: dict) -> list[str]:
    lines = ["| row | seeds | start valid ppl | test ppl | tokens | tokens to target | x fewer tokens | FLOPs to "
             "target | x less compute than random_ref | cap (overhead alone) | valid ppl at equal compute | student / "
             "teacher / importance / search / cache FLOPs | params (HF export) |", "|" + "---|" * 13]
    for e in summary["rows"]:
        s = e["seeds"]
        flops = " / ".join(_fmt(e[k], None, 1, True) for k in ("student_flops", "teacher_flops", "importance_flops",
                                                                  "search_flops", "cache_flops"))
        params = "—" if e["student_parameters"] is None else \
            f"{_count(e['student_parameters'])} ({_count(e['hf_parameters'])})"
        to_target = _fmt(e["tokens_to_target"], e["tokens_to_target_se"], 0, n=e["tokens_to_target_n"], seeds=s)
        if e["starts_below_target"]:  # reaching the target is then no training at all
            to_target += f" (starts below the target in {e['starts_below_target']}/{s})"
        lines.append("| " + " | ".join([
            e["row"], str(s), _fmt(e["start_valid_ppl"], e["start_valid_ppl_se"], 0),
            _fmt(e["test_ppl"], e["test_ppl_se"], 1), "—" if e["tokens"] is None else f"{e['tokens']:,}",
            to_target, "— (no tokens needed)" if e["starts_below_target"] == s and s else
            _fmt(e["tokens_ratio"], e["tokens_ratio_se"], 2, n=e["tokens_ratio_n"], seeds=s),
            _fmt(e["compute_to_target"], e["compute_to_target_se"], 2, True, e["compute_to_target_n"], s),
            _fmt(e["compute_ratio"], e["compute_ratio_se"], 2, n=e["compute_ratio_n"], seeds=s) + (
                f"; at most {e['compute_ratio_bound']:.2f} in the {e['compute_ratio_bound_n']} not reached"
                if e["compute_ratio_bound_n"] else ""),
            "—" if e["compute_ratio_cap"] is None else _fmt(e["compute_ratio_cap"], e["compute_ratio_cap_se"], 2),
            _fmt(e["valid_ppl_at_equal_compute"], e["valid_ppl_at_equal_compute_se"], 1,
                 n=e["valid_ppl_at_equal_compute_n"], seeds=s), flops, params]) + " |")
    return lines


def plot(summary: dict, results: dict[str, list[dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = set(summary["seeds"])
    for axis, name in (("tokens", "curves_tokens.png"), ("compute", "curves_compute.png")):
        fig, ax = plt.subplots(figsize=(8, 5))
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # more rows than the default cycle's 10 colours
        for entry in summary["rows"]:
            runs = [s for s in results.get(entry["row"], []) if s["seed"] in seeds]
            if not runs or entry["group"] not in ("reference", "inits", "training variants"):
                continue
            # mean over seeds at each evaluation: every seed evaluates at the same steps, while its x in FLOPs
            # differs with its search's cost, so points pair by evaluation, not by x
            curves = [s["curve"] if axis == "tokens" else compute_curve(s) for s in runs]
            evaluations = min(len(c) for c in curves)
            xs = [statistics.fmean(c[i][0] for c in curves) for i in range(evaluations)]
            ys = [statistics.fmean(c[i][1] for c in curves) for i in range(evaluations)]
            ax.plot(xs, ys, marker=".", label=entry["row"], linestyle="-" if entry["teacher"] != "none" else "--")
        targets = [m["target"] for m in summary["per_seed"] if m["row"] == REFERENCE]
        if targets:
            ax.axhline(statistics.fmean(targets), color="gray", linestyle=":", label="target (mean over seeds)")
        ax.set(xlabel="training tokens" if axis == "tokens" else "FLOPs (incl. importance, search, cache)",
               ylabel="valid perplexity", yscale="log", title=f"study: valid ppl vs {axis} (mean over seeds)")
        if axis == "compute":
            ax.set_xscale("log")
        else:  # the students' 12k tokens and the reference's 24x that on one axis; step 0 stays on it
            ax.set_xscale("symlog", linthresh=max(1, min(s["curve"][1][0] for runs in results.values() for s in runs
                                                         if len(s["curve"]) > 1)))
            ax.set_xlim(left=0)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)


def collect(study_dir: Path, rows: list, seeds: list[int]) -> dict[str, list[dict]]:
    """The finished runs on disk: {row: [result of each finished seed, in seed order]}."""
    out = {}
    for row in rows:
        paths = [Path(study_dir) / "runs" / row.name / f"seed{seed}" / "result.json" for seed in seeds]
        out[row.name] = [json.loads(p.read_text()) for p in paths if p.is_file()]
    return out


def write_report(config, results: dict[str, list[dict]], out: Path) -> dict:
    """study.md, study.csv (per row), study_seeds.csv (per row and seed), comparisons.csv, curves; returns the
    summary. Rows or seeds not finished yet are reported as such."""
    from nemo_subnet.study.run import TEACHER_EVAL
    from nemo_subnet.study.verdicts import comparisons, verdict_lines

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = config.rows()
    summary = summarize(rows, results)
    pairs = comparisons(config, summary)
    fields = list(summary["rows"][0])
    write_csv_atomic(out / "study.csv", fields, summary["rows"])
    if summary["per_seed"]:
        write_csv_atomic(out / "study_seeds.csv", list(summary["per_seed"][0]), summary["per_seed"])
    if pairs:
        write_csv_atomic(out / "comparisons.csv", list(pairs[0]), pairs)
    done = sum(e["seeds"] for e in summary["rows"])
    hours = sum(s["wall_s"] for runs in results.values() for s in runs) / 3600
    status = (f"**Status: {done} of {len(rows) * len(config.seeds)} (row, seed) runs finished** (seeds with a "
              f"finished reference: {summary['seeds'] or 'none'}; {hours:.2f} h of training recorded, searches, "
              "caches and shared stages not included).")
    teacher_path = Path(config.out_dir) / TEACHER_EVAL
    teacher = json.loads(teacher_path.read_text()) if teacher_path.is_file() else None
    teacher_line = [] if teacher is None else [
        f"The teacher on the same samples: valid ppl {teacher['valid_ppl']:.2f}, test ppl {teacher['test_ppl']:.2f}.", ""]
    head = [f"# nemo-subnet study\n", f"Scale: {config.scale}.", "", status, "", *teacher_line,
            "Target of a seed: random_ref's final valid perplexity in that seed (random init, CE, "
            f"{config.long_factor}x the token budget, annealed at its own length); 'x less compute': that seed's "
            "random_ref compute over the row's compute to target (importance, search and cache build included); "
            "'cap': random_ref's compute over the row's importance + search + cache share alone (what the ratio "
            "would be if training to the target were free: no row beats its cap). "
            "Mean ± SE over seeds (sample std / sqrt n); the valid and test samples are the same for every seed "
            "and row; every comparison below is paired by seed.", ""]
    text = "\n".join(head + markdown_table(summary) + [""] + verdict_lines(pairs)) + "\n"
    write_text_atomic(out / "study.md", text)
    plot(summary, results, out)
    return {**summary, "comparisons": pairs}
