"""Runs the sections in order, each in its own child process with a time budget, and writes the report.

Isolation: a section that crashes, runs out of memory, corrupts its CUDA context or hangs is killed (its
whole process group: torchrun ranks and training runs included) at its budget and fails alone; the
next section starts in a fresh process with the GPU's memory free. A section that needs another
(``needs``) does not run when that one did not pass, and says so.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import report as report_io
from .common import Context, Recorder

SCRIPT = Path(__file__).resolve().parents[1] / "gpu_acceptance.py"


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    target: str
    """``module:function`` in this package, called as ``function(ctx, rec)``."""
    needs: tuple[str, ...] = ()
    in_parent: bool = False


SECTIONS = (
    Section("environment", "GPU, driver, CUDA, package versions, commit.", "environment:run", in_parent=True),
    Section("kernels", "Compiled Triton vs the torch mirror vs the naive reference; values and gradients; odd and "
            "production shapes, fp32 and bf16, one N x V > 2^31 case.", "kernel_checks:run"),
    Section("speed", "Fused linear + KD (fwd+bwd) vs eager, torch.compile and Liger-Kernel: time and peak memory.",
            "speed:run"),
    Section("setup", "Prepared stdlib data (sentencepiece), a teacher checkpoint, a student model YAML.",
            "fixtures:run"),
    Section("train_resume", "bf16 KD run through `nemo-subnet train`; the same run SIGKILLed mid-run and resumed.",
            "training:train_resume", needs=("setup",)),
    Section("mfu", "Throughput and model FLOPs utilisation of the KD step (reference run's metrics).", "training:mfu",
            needs=("train_resume",)),
    Section("hf_parity", "HF import -> logits vs transformers; export -> reload; fp32 and bf16.", "hf_parity:run"),
    Section("search", "`nemo-subnet search` on the masked super-network; full config == unmasked model.",
            "search_check:run", needs=("setup",)),
    Section("tp2", "The KD run at TP=2 under torchrun vs TP=1 (2+ GPUs).", "training:tp2",
            needs=("setup", "train_resume")),
)
BY_NAME = {s.name: s for s in SECTIONS}


def _function(section: Section):
    module, name = section.target.split(":")
    return getattr(importlib.import_module(f"acceptance.{module}"), name)


def child_main(name: str, ctx_path: Path, result_path: Path) -> int:
    """Entry point of a section's child process; the outcome is in the result file, not the exit code."""
    section = BY_NAME[name]
    rec = Recorder(name, result_path)
    try:
        _function(section)(Context.load(ctx_path), rec)
    except BaseException as err:  # noqa: BLE001 - every failure becomes this section's error, reported
        rec.error = f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exc().splitlines(True)[-20:])
        print(rec.error, flush=True)
    rec.flush()
    return 0


def _status(result: dict, timed_out: bool, code: int | None) -> str:
    checks = result.get("checks", [])
    if result.get("error") or timed_out or code not in (0, None):
        return "fail"
    if any(c["required"] and not c["ok"] for c in checks):
        return "fail"
    if result.get("skipped"):
        return "skip"
    return "pass" if checks else "fail"


def _echo(pipe, log: Path) -> None:
    """Copy the child's output to its log; progress lines (``  [section] ...``) to the console too."""
    with log.open("w") as f:
        for line in iter(pipe.readline, ""):
            f.write(line)
            f.flush()
            if line.startswith("  ["):
                print(line, end="", flush=True)


def _run_child(section: Section, ctx: Context, budget: float, env: dict) -> dict:
    state = ctx.work / "state"
    state.mkdir(parents=True, exist_ok=True)
    ctx_path, result_path = state / f"{section.name}.ctx.json", state / f"{section.name}.result.json"
    result_path.unlink(missing_ok=True)
    ctx.save(ctx_path)
    log = ctx.out / "logs" / f"{section.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(SCRIPT), "--_child", section.name, "--_ctx", str(ctx_path), "--_result", str(result_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    reader = threading.Thread(target=_echo, args=(proc.stdout, log), daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the section and everything it started (torchrun, train runs)
        proc.wait()
    reader.join(timeout=10)
    result = json.loads(result_path.read_text()) if result_path.exists() else {"numbers": {}, "checks": []}
    if timed_out:
        result["error"] = f"timed out after its budget of {budget:.0f} s (results recorded until then are kept)"
    elif proc.returncode != 0 and not result.get("error"):
        tail = "".join(log.read_text().splitlines(True)[-20:]) if log.exists() else ""
        result["error"] = f"section process exited {proc.returncode}\n{tail}"
    result["status"] = _status(result, timed_out, proc.returncode)
    result["log"] = str(log.relative_to(ctx.out))
    return result


def _run_in_parent(section: Section, ctx: Context) -> dict:
    rec = Recorder(section.name, None)
    try:
        _function(section)(ctx, rec)
    except Exception as err:  # noqa: BLE001
        rec.error = f"{type(err).__name__}: {err}\n" + traceback.format_exc()[-2000:]
    result = rec.to_dict()
    result["status"] = _status(result, False, 0)
    return result


def with_dependencies(names: list[str]) -> list[str]:
    wanted = set()

    def add(name: str) -> None:
        wanted.add(name)
        for dep in BY_NAME[name].needs:
            add(dep)
    for name in names:
        add(name)
    return [s.name for s in SECTIONS if s.name in wanted or s.in_parent]


def run_all(ctx: Context, *, budgets: dict, time_limit: float, selected: list[str], child_env: dict) -> int:
    started = time.time()
    report = {"schema": 1, "profile": ctx.profile, "status": "running", "exit_code": None,
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "elapsed_s": 0.0,
              "time_limit_s": round(time_limit), "work_dir": str(ctx.work), "sections": {}}
    for s in SECTIONS:
        report["sections"][s.name] = {"status": "pending" if s.name in selected else "not_run", "title": s.title,
                                      "budget_s": budgets.get(s.name), "checks": [], "numbers": {},
                                      **({} if s.name in selected else {"reason": "not selected (--sections)"})}
    report_io.write(ctx.out, report)
    order = [s for s in SECTIONS if s.name in selected]
    for index, section in enumerate(order, 1):
        entry = report["sections"][section.name]
        left = time_limit - (time.time() - started)
        unmet = [d for d in section.needs if report["sections"][d]["status"] != "pass"]
        head = f"[{index}/{len(order)}] {section.name}"
        if unmet:
            entry.update(status="not_run", reason=f"needs {', '.join(unmet)} to pass first")
        elif not section.in_parent and left < 10:
            entry.update(status="not_run", reason=f"out of time: {left:.0f} s of the {time_limit:.0f} s limit left")
        else:
            budget = min(budgets.get(section.name, left), left)
            print(f"{head}: started" + ("" if section.in_parent else f" (budget {budget:.0f} s)"), flush=True)
            t0 = time.time()
            result = _run_in_parent(section, ctx) if section.in_parent else _run_child(section, ctx, budget, child_env)
            entry.update(result, seconds=round(time.time() - t0, 1))
            ctx.artifacts.update(result.get("artifacts", {}))
        print(f"{head}: {report_io.MARK[entry['status']]} in {entry.get('seconds', 0):.1f} s — "
              f"{report_io.headline(entry)}", flush=True)
        report["elapsed_s"] = round(time.time() - started, 1)
        report_io.write(ctx.out, report)
    failed = [n for n, r in report["sections"].items() if n in selected and r["status"] in ("fail", "not_run")]
    report.update(status="fail" if failed else "pass", exit_code=1 if failed else 0,
                  elapsed_s=round(time.time() - started, 1), failed=failed)
    report_io.write(ctx.out, report)
    print(f"gpu_acceptance: {report['status'].upper()} in {report['elapsed_s']:.0f} s"
          + (f"; failed or not run: {', '.join(failed)}" if failed else "")
          + f" — {ctx.out / report_io.JSON_NAME}, {ctx.out / report_io.MD_NAME}", flush=True)
    return report["exit_code"]
