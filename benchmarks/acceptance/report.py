"""The acceptance report: ``acceptance.json`` (everything) and ``acceptance.md`` (for people), both
rewritten atomically after every section, so a run cut short still leaves a readable report."""

from __future__ import annotations

import json
from pathlib import Path

from .common import atomic_write_text, jsonable, write_json

JSON_NAME, MD_NAME = "acceptance.json", "acceptance.md"
MARK = {"pass": "PASS", "fail": "FAIL", "skip": "skip", "not_run": "not run", "pending": "...", "running": "running"}


def _short(value, limit: int = 160) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = value if isinstance(value, str) else json.dumps(jsonable(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def headline(result: dict) -> str:
    """One line per section for the summary table: the failed checks, else the skip reason, else counts."""
    if result.get("error"):
        return result["error"].splitlines()[0][:160]
    failed = [c["name"] for c in result.get("checks", []) if c["required"] and not c["ok"]]
    if failed:
        return "failed: " + "; ".join(failed)[:160]
    if result.get("skipped"):
        return result["skipped"]
    if result.get("reason"):
        return result["reason"]
    checks = result.get("checks", [])
    missed = [c["name"] for c in checks if not c["required"] and not c["ok"]]
    text = f"{sum(c['ok'] for c in checks if c['required'])}/{sum(c['required'] for c in checks)} checks"
    return text + (f"; targets missed: {'; '.join(missed)}" if missed else "")


def markdown(report: dict) -> str:
    env = report["sections"].get("environment", {}).get("numbers", {})
    gpus = ", ".join(g["name"] for g in env.get("gpus") or []) or "no GPU"
    git = env.get("git", {})
    lines = [f"# nemo-subnet GPU acceptance — {report['status'].upper()}", "",
             f"- profile: `{report['profile']}`; device: {gpus}; started {report['started']}, "
             f"{report['elapsed_s']:.0f} s of {report['time_limit_s']} s",
             f"- commit: `{git.get('commit', '?')}` (source sha256 `{git.get('source_sha256', '?')}`)",
             f"- exit code: {report['exit_code']} (non-zero when any section failed or did not run)", "",
             "| section | status | seconds / budget | summary |", "|---|---|---|---|"]
    for name, r in report["sections"].items():
        budget = r.get("budget_s")
        seconds = f"{r.get('seconds', 0):.0f} / {budget:.0f}" if budget else f"{r.get('seconds', 0):.0f}"
        lines.append(f"| {name} | {MARK.get(r['status'], r['status'])} | {seconds} | {headline(r)} |")
    for name, r in report["sections"].items():
        if r.get("reason", "").startswith("not selected"):
            continue
        lines += ["", f"## {name}: {MARK.get(r['status'], r['status'])}", ""]
        if r.get("title"):
            lines += [r["title"], ""]
        for c in r.get("checks", []):
            mark = "ok" if c["ok"] else ("FAIL" if c["required"] else "target missed")
            lines.append(f"- [{mark}] {c['name']}" + (f" — {c['detail']}" if c["detail"] else ""))
        for key, value in r.get("numbers", {}).items():
            if key == "cases" and isinstance(value, list):  # the kernel cases as a table
                lines += ["", "| case | loss (reference) | triton | mirror | s | peak GiB |", "|---|---|---|---|---|---|"]
                lines += [f"| {c['case']} | {c['loss_reference']:.7g} | {c['loss_triton']:.7g} | {c['loss_mirror']:.7g} | "
                          f"{c['seconds']} | {c.get('peak_gib', '')} |" for c in value]
                lines.append("")
            elif key == "providers" and isinstance(value, dict):
                lines += ["", "| provider | ms (fwd+bwd) | peak GiB above inputs | loss | note |", "|---|---|---|---|---|"]
                lines += [f"| {k} | {_short(v['ms'])} | {_short(v['peak_gib'])} | {_short(v.get('loss', ''))} | "
                          f"{v.get('note', '')} |" for k, v in value.items()]
                lines.append("")
            else:
                lines.append(f"- {key}: {_short(value)}")
        if r.get("error"):
            lines += ["", "```", r["error"].rstrip(), "```"]
        if r.get("log"):
            lines.append(f"- log: `{r['log']}`")
    return "\n".join(lines) + "\n"


def write(out: Path, report: dict) -> None:
    write_json(out / JSON_NAME, report)
    atomic_write_text(out / MD_NAME, markdown(report))
