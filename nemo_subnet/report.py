"""``report.md`` and its plots from a finished search-then-pretrain output directory.

Reads only files the stages wrote (``.stages/*.json`` markers, ``search/results.json``, each run's
``metrics.jsonl``, ``export/generation.txt``, and ``parity.json`` when the demo ran its conversion check),
so a report can be rebuilt at any time: ``python -m nemo_subnet.report OUT_DIR``.

Splits: the search chose the student on the ``search`` split; the curves here are on ``valid`` (from step 0,
the init itself); the final numbers are on ``test``, measured once at the end of each run. No split is
shared (see pipeline/stages.py).

Tokens-to-target: the target is the random-init baseline's final validation perplexity; the tokens each
run needs to reach it come from :mod:`nemo_subnet.training.tokens_to_target` (linear interpolation between
validation points; None: never reached). A crossing inside the first interval (between the init and the first
evaluation after it) is reported as "at most" that evaluation's tokens, never as an interpolated figure or a
ratio: nothing was measured in between.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nemo_subnet.files import write_text_atomic


def read_metrics(run_dir: Path, kind: str = "valid") -> list[dict]:
    """Records of one kind from a run's metrics.jsonl; [] when the run has none (a stage that did not run)."""
    from nemo_subnet.training.metrics import METRICS_FILE, read_metrics as read

    return read(run_dir, kind) if (Path(run_dir) / METRICS_FILE).is_file() else []


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    from nemo_subnet.training.tokens_to_target import validation_curve

    return validation_curve(run_dir) if read_metrics(run_dir) else []


def test_ppl(run_dir: Path) -> float | None:
    """The run's test perplexity (measured once, at its end), or None."""
    rows = read_metrics(run_dir, "test")
    return rows[-1]["test_ppl"] if rows else None


def _marker(out: Path, name: str) -> dict:
    path = out / ".stages" / f"{name}.done.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt(x, digits=2) -> str:
    if x is None:
        return "not reached"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _plot_curves(curves: dict[str, list[tuple[float, float]]], target: float | None, teacher_ppl: float | None,
                 path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, points in curves.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    if target is not None:
        ax.axhline(target, color="gray", linestyle=":", label=f"target ppl {target:.2f}")
    if teacher_ppl is not None:
        ax.axhline(teacher_ppl, color="black", linestyle="--", linewidth=0.8, label=f"teacher {teacher_ppl:.2f}")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title("student pretraining: same data, same tokens")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_search(candidates: list[dict], budget: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter([c["params"] for c in candidates], [c["objective"] for c in candidates], s=12, alpha=0.6,
               label="evaluated sub-networks")
    if candidates:
        best = min(candidates, key=lambda c: c["objective"])
        ax.scatter([best["params"]], [best["objective"]], color="red", s=40, label="selected")
    if budget:
        ax.axvline(budget, color="gray", linestyle=":", label="parameter budget")
    ax.set_xlabel("parameters")
    ax.set_ylabel("search-split perplexity (sub-network)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _compute_line(out: Path) -> list[str]:
    """Importance and search FLOPs as the two stages recorded them."""
    parts = []
    scores = out / "importance" / "scores.safetensors"
    if scores.is_file():
        from nemo_subnet.importance.scores import ImportanceScores

        meta = ImportanceScores.load(scores).meta
        if "flops" in meta:
            parts.append(f"importance {meta['flops']:.3e} FLOPs ({meta['passes']} forward pass(es), "
                         f"{meta['tokens']:,} tokens)")
    summary = out / "search" / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        if "flops" in s:
            rungs = ", ".join(f"rung {r['rung']}: {r['evaluations']} x {r['batches']} batches" for r in s["rungs"])
            parts.append(f"search {s['flops']:.3e} FLOPs ({s['evaluations']} evaluations, {s['tokens']:,} tokens; {rungs})")
    return [f"Compute: {'; '.join(parts)}.", ""] if parts else []


def _params(ckpt: Path) -> int | None:
    from nemo_subnet.models.config import ModelConfig
    from nemo_subnet.models.counting import count_parameters

    path = ckpt / "model.yaml"
    return count_parameters(ModelConfig.load(path)) if path.is_file() else None


def _describe(subnet: dict) -> str:
    """hidden / layers / per-layer sizes of a sub-network record, as counts."""
    count = lambda x: len(x) if isinstance(x, list) else x  # noqa: E731
    layers = subnet.get("layer")
    layers = layers if isinstance(layers, list) else [layers]
    sizes = {(count(x.get("query_groups")), count(x.get("heads_per_group")), count(x.get("ffn"))) for x in layers}
    per_layer = "; ".join(f"groups {g}, heads/group {h}, ffn {f}" for g, h, f in sorted(sizes, key=str))
    return f"hidden {count(subnet.get('hidden'))}, layers {count(subnet.get('layers'))}, {per_layer}"


def student_comparison(out: Path) -> dict:
    """Per-evaluation comparison of the KD student and the random-init baseline, and tokens-to-target."""
    from nemo_subnet.training.tokens_to_target import tokens_at

    distill, baseline = _curve(out / "distill"), _curve(out / "baseline")
    base_at = dict(baseline)
    rows = [[int(t), p, base_at.get(t), None if t not in base_at else base_at[t] / p] for t, p in distill]
    target = baseline[-1][1] if baseline else None
    reach = {name: tokens_at(points, target) if target else None
             for name, points in (("subnet init + KD", distill), ("random init", baseline))}
    teacher = _marker(out, "export").get("summary", {})
    test = {"subnet init + KD": test_ppl(out / "distill"), "random init": test_ppl(out / "baseline"),
            "teacher": teacher.get("teacher_test_ppl", test_ppl(out / "teacher"))}
    first_interval = {name: points[1][0] if len(points) > 1 else None
                      for name, points in (("subnet init + KD", distill), ("random init", baseline))}
    return {"distill": distill, "baseline": baseline, "rows": rows, "target": target, "reach": reach, "test": test,
            "first_interval": first_interval, "teacher_valid": teacher.get("teacher_valid_ppl")}


def reach_cells(reach: dict, first_interval: dict) -> list[list]:
    """Rows of (run, tokens to target, fewer tokens than random init); a crossing inside the first interval
    reads "at most N" with no ratio (an interpolation there would be a guess)."""
    base = reach.get("random init")
    base_resolved = base is not None and not (0 < base <= (first_interval.get("random init") or 0))
    rows = []
    for name, t in reach.items():
        if t is None:
            rows.append([name, None, None])
        elif t == 0:
            rows.append([name, "0 (init already below target)", None])
        elif t <= (first_interval.get(name) or 0):
            rows.append([name, f"at most {int(first_interval[name]):,} (before the first evaluation)", None])
        else:
            ratio = f"{base / t:.2f}x" if base_resolved and base else None
            rows.append([name, f"{int(t):,}", ratio])
    return rows


def write_report(out: Path, report_dir: Path) -> dict:
    from nemo_subnet.search.results import merge_evaluations, read_candidates

    out, report_dir = Path(out), Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    sections = ["# nemo-subnet: search-then-pretrain report", ""]
    sections += [f"Output directory: `{out}`.", ""]

    # stages
    stage_rows = []
    for marker in sorted((out / ".stages").glob("*.done.json"), key=lambda p: p.stat().st_mtime):
        m = json.loads(marker.read_text())
        stage_rows.append([m.get("stage", marker.name.split(".")[0]), float(m.get("seconds", 0.0))])
    stage_rows.append(["total", sum(seconds for _, seconds in stage_rows)])
    sections += ["## Stages", "", _table(["stage", "seconds"], stage_rows), ""]

    # teacher and search
    teacher = _marker(out, "teacher").get("summary", {})
    extract = _marker(out, "extract").get("summary", {})
    candidates = merge_evaluations(read_candidates(out / "search"))  # each at the highest rung it reached
    teacher_params = _params(out / "teacher" / "model")
    sections += ["## Sub-network search", ""]
    if candidates:
        search = json.loads((out / "search" / "search.json").read_text())
        bounds = search["bounds"]
        lo, hi = bounds[0] if isinstance(bounds[0], list) else bounds  # a family: the first budget's (the student's)
        teacher_valid = _marker(out, "export").get("summary", {}).get("teacher_valid_ppl", teacher.get("valid_ppl"))
        sections += [f"Teacher: {_fmt(teacher_params)} parameters, validation perplexity {_fmt(teacher_valid)} "
                     f"(on the students' validation samples). Budget: {_fmt(lo)}–{_fmt(hi)} parameters; "
                     f"{search['strategy']} search over a {search['space']['granularity']} space, "
                     f"{len(candidates)} sub-networks evaluated by their perplexity on the search split (held out "
                     "from training, validation and test; the extracted student's number).", ""]
        sections += _compute_line(out)
        top = max(c["rung"] for c in candidates)  # full-fidelity values are the comparable ones
        best = sorted((c for c in candidates if c["rung"] == top), key=lambda c: c["objective"])[:5]
        sections += [_table(["rank", "parameters", "fraction of teacher", "search-split ppl", "sub-network"],
                            [[i + 1, c["params"], c["params"] / teacher_params if teacher_params else None,
                              c["objective"], _describe(c["subnet"])] for i, c in enumerate(best)]), ""]
        _plot_search(candidates, (lo + hi) / 2, report_dir / "search.png")
        sections += ["![search](search.png)", ""]
    if extract:
        sections += [f"Extracted student: {_fmt(extract.get('parameters'))} parameters.", ""]

    # students
    cmp = student_comparison(out)
    sections += ["## Student pretraining at equal tokens", "",
                 "Both students see the same data in the same order for the same number of tokens; "
                 "lower perplexity is better. Curves are on the valid split and start at step 0 (the init itself).",
                 ""]
    sections += [_table(["tokens", "subnet init + KD ppl", "random init ppl", "random / KD"], cmp["rows"]), ""]
    sections += ["### Tokens to target", "",
                 f"Target: the random-init student's final validation perplexity ({_fmt(cmp['target'])}).", ""]
    reach = cmp["reach"]
    rows = [[name, "not reached" if t is None else t, "—" if ratio is None else ratio]
            for name, t, ratio in reach_cells(reach, cmp["first_interval"])]
    sections += [_table(["run", "tokens to target", "fewer tokens than random init"], rows), ""]
    sections += ["### Test perplexity (test split, measured once at the end of each run)", "",
                 _table(["run", "test ppl"], [[name, "—" if ppl is None else ppl] for name, ppl in cmp["test"].items()]), ""]
    _plot_curves({"subnet init + KD": cmp["distill"], "random init": cmp["baseline"]}, cmp["target"],
                 cmp["teacher_valid"] or teacher.get("valid_ppl"), report_dir / "students.png")
    sections += ["![students](students.png)", ""]
    ahead = bool(cmp["rows"]) and all(r[2] is not None and r[1] < r[2] for r in cmp["rows"])
    sections += [f"**Sub-network init + KD ahead of random init at every evaluation: {'yes' if ahead else 'no'}.**", ""]

    # export and completions
    completions = out / "export" / "completions.json"
    if completions.is_file():
        sections += ["## Completions", "", f"Greedy completions of the same prompt, each model exported to Hugging Face "
                     f"format and generated with plain transformers (the KD student's export: "
                     f"`{out / 'export' / 'student_hf'}`).", ""]
        for who, text in json.loads(completions.read_text()).items():
            sections += [f"**{who}**", "", "```python", text, "```", ""]
    else:
        generation = out / "export" / "generation.txt"
        if generation.is_file():
            sections += ["## Export", "", f"`{out / 'export' / 'student_hf'}` loads with transformers; greedy "
                         "completion:", "", "```python", generation.read_text(), "```", ""]

    parity = out / "parity.json"
    if parity.is_file():
        rows = json.loads(parity.read_text())
        sections += ["## HF ⇄ Megatron conversion parity (fp32, CPU)", "",
                     _table(["variant", "params", "max abs logit diff", "round trip bitwise", "generate() equal"],
                            [[r["variant"], r["params"], f"{r['max_abs_logit_diff']:.2e}", r["round_trip_bitwise"],
                              r["generate_equal"]] for r in rows]), ""]

    write_text_atomic(report_dir / "report.md", "\n".join(sections))
    return {"report": str(report_dir / "report.md"), "kd_ahead": ahead, "target": cmp["target"],
            "tokens_to_target": reach, "rows": cmp["rows"]}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "demo_out")
    print(write_report(out, out / "report")["report"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
