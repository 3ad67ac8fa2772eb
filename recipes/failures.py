"""After an experiment: which stages did not finish, and each one's own error first, its log below.

NeMo-Run reports a failed task as "FAILED" (or its exit code) and leaves the reason in the task's log. The
pipeline runner records the stage's own one-line error in ``<out_dir>/.stages/<stage>.failed.json`` (the
child's ``UserError`` line, or the last line of its traceback); this module turns those markers, and the task
logs where a stage died before the runner could record anything, into the message the user reads first.
"""

from __future__ import annotations

from pathlib import Path

_LOG_PATTERNS = ("**/combined.log", "**/stderr.log", "**/log-*.out", "**/*.out", "**/*.log", "**/*.err")


def task_log(job_dir: str | Path) -> Path | None:
    """The newest log file NeMo-Run wrote for one task (local: ``.../<role>/0/combined.log``; SLURM: ``*.out``)."""
    root = Path(job_dir)
    if not root.is_dir():
        return None
    for pattern in _LOG_PATTERNS:
        found = [p for p in root.glob(pattern) if p.is_file()]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
    return None


def _error_from_log(log: Path) -> str | None:
    from nemo_subnet.pipeline.child import error_line

    try:
        return error_line(log.read_text(errors="replace").splitlines()[-400:])
    except OSError:
        return None


def unfinished_report(out: Path, stages: list[str], job_dirs: dict[str, str], since: float) -> str | None:
    """None when every stage in ``stages`` has its done marker; else a message whose first line is the first
    failed stage's own error, then its log, then what else did not finish."""
    from nemo_subnet.pipeline.runner import read_marker

    missing = [s for s in stages if read_marker(out, s) is None]
    if not missing:
        return None
    slack = 120.0  # clocks of the login node and the compute nodes may disagree a little
    lines: list[str] = []
    for stage in missing:
        failed = read_marker(out, stage, "failed")
        log = task_log(job_dirs[stage]) if stage in job_dirs else None
        if failed and failed.get("time", 0) >= since - slack:
            lines.append(failed["error"])
            if failed.get("interrupted"):
                lines.append("  (stopped by SIGTERM: not marked done; launching again "
                             + ("resumes it from its last checkpoint)" if failed.get("resumable") else "reruns it)"))
            if failed.get("command"):
                lines.append(f"  command: {failed['command']}")
            if log:
                lines.append(f"  full log: {log}")
            break
        line = _error_from_log(log) if log else None
        if line:  # the task died before the runner recorded anything (e.g. at import)
            lines.append(f"stage {stage}: {line}")
            lines.append(f"  full log: {log}")
            break
    if not lines:
        first = missing[0]
        where = task_log(job_dirs[first]) if first in job_dirs else None
        lines.append(f"stage {first} did not finish and recorded no error"
                     + (f"; see {where}" if where else ""))
    lines.append(f"  not finished: {', '.join(missing)}")
    return "\n".join(lines)
