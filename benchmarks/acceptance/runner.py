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
    """Cheap sections (no GPU work, nothing heavy imported) run in the parent process."""
    precheck: str | None = None
    """``module:function(ctx) -> skip reason | None``, called in the parent: a section that cannot run here
    is skipped without starting a process."""
    always: bool = False


SECTIONS = (
    Section("environment", "GPU, driver, CUDA, package versions, commit.", "environment:run", in_parent=True,
            always=True),
    Section("setup", "Prepared stdlib data (sentencepiece), a bf16 teacher checkpoint with a Llama-3 vocabulary, a "
            "student model YAML.", "fixtures:run"),  # first: four sections wait for it
    Section("kernels", "Compiled Triton vs the torch mirror vs the naive reference; values and gradients; odd and "
            "production shapes, fp32 and bf16, one N x V > 2^31 case.", "kernel_checks:run"),
    Section("speed", "Fused linear + KD (fwd+bwd) vs eager; torch.compile and Liger-Kernel in time-boxed children: "
            "time (CUDA events) and peak memory.", "speed:run"),
    Section("train_resume", "The default KD run (alpha_ce 0, fused output under auto, bf16) through `nemo-subnet "
            "train`; the same run SIGKILLed mid-run and resumed.", "training:train_resume", needs=("setup",)),
    Section("kd_step", "The KD step vs the student step + the teacher forward (CUDA events); GEMMs of the loss; "
            "counted FLOPs vs the MFU formula.", "kd_step:run", needs=("setup",)),
    Section("mfu", "The reference run's logged step time and MFU against kd_step's measurement.", "kd_step:mfu",
            needs=("train_resume", "kd_step"), in_parent=True),
    Section("hf_parity", "HF import -> logits vs transformers; export -> reload; fp32 and bf16.", "hf_parity:run"),
    Section("search", "`nemo-subnet search` in the teacher's bf16: candidates per second; full config == unmasked "
            "model.", "search_check:run", needs=("setup",)),
    Section("parallel", "The KD run at TP=2 from scratch and PP=2 resumed, vs the one-GPU reference (2+ GPUs).",
            "parallel_runs:run", needs=("setup", "train_resume"), precheck="parallel_runs:precheck"),
)
BY_NAME = {s.name: s for s in SECTIONS}


def _function(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(f"acceptance.{module}"), name)


def child_main(name: str, ctx_path: Path, result_path: Path) -> int:
    """Entry point of a section's child process; the outcome is in the result file, not the exit code."""
    section = BY_NAME[name]
    rec = Recorder(name, result_path)
    try:
        _function(section.target)(Context.load(ctx_path), rec)
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


@dataclass
class _Running:
    section: Section
    proc: subprocess.Popen
    reader: threading.Thread
    result_path: Path
    log: Path
    started: float
    budget: float


def _start_child(section: Section, ctx: Context, budget: float, env: dict) -> _Running:
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
    return _Running(section, proc, reader, result_path, log, time.time(), budget)


def _finish_child(run: _Running, ctx: Context) -> dict:
    """The child's result once it exited, or after killing it (and all it started) past its budget."""
    timed_out = run.proc.poll() is None
    if timed_out:
        os.killpg(run.proc.pid, signal.SIGKILL)  # the section and everything it started (torchrun, train runs)
        run.proc.wait()
    run.reader.join(timeout=10)
    result = json.loads(run.result_path.read_text()) if run.result_path.exists() else {"numbers": {}, "checks": []}
    if timed_out:
        result["error"] = f"timed out after its budget of {run.budget:.0f} s (results recorded until then are kept)"
    elif run.proc.returncode != 0 and not result.get("error"):
        tail = "".join(run.log.read_text().splitlines(True)[-20:]) if run.log.exists() else ""
        result["error"] = f"section process exited {run.proc.returncode}\n{tail}"
    result["status"] = _status(result, timed_out, run.proc.returncode)
    result["log"] = str(run.log.relative_to(ctx.out))
    return result


def _run_in_parent(section: Section, ctx: Context) -> dict:
    rec = Recorder(section.name, None)
    try:
        _function(section.target)(ctx, rec)
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
    return [s.name for s in SECTIONS if s.name in wanted or s.always]


def run_all(ctx: Context, *, budgets: dict, time_limit: float, selected: list[str], child_env: dict,
            jobs: int = 1) -> int:
    """Run the selected sections; ``jobs`` > 1 runs independent ones side by side (CPU smoke run only:
    on a GPU, sections running together would disturb each other's timings and memory peaks)."""
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
    number = {s.name: f"[{i}/{len(order)}] {s.name}" for i, s in enumerate(order, 1)}
    pending, running = list(order), []

    def finish(name: str, entry: dict) -> None:
        print(f"{number[name]}: {report_io.MARK[entry['status']]} in {entry.get('seconds', 0):.1f} s — "
              f"{report_io.headline(entry)}", flush=True)
        report["elapsed_s"] = round(time.time() - started, 1)
        report_io.write(ctx.out, report)

    while pending or running:
        for run in list(running):  # collect finished (or over-budget) children
            if run.proc.poll() is None and time.time() - run.started < run.budget:
                continue
            result = _finish_child(run, ctx)
            entry = report["sections"][run.section.name]
            entry.update(result, seconds=round(time.time() - run.started, 1))
            ctx.artifacts.update(result.get("artifacts", {}))
            running.remove(run)
            finish(run.section.name, entry)
        for section in list(pending):
            if len(running) >= jobs:
                break
            states = [report["sections"][d]["status"] for d in section.needs]
            if any(st in ("pending", "running") for st in states):
                continue  # wait for what it needs
            pending.remove(section)
            entry = report["sections"][section.name]
            left = time_limit - (time.time() - started)
            unmet = [d for d, st in zip(section.needs, states) if st != "pass"]
            reason = _function(section.precheck)(ctx) if section.precheck and not unmet else None
            if unmet:
                entry.update(status="not_run", reason=f"needs {', '.join(unmet)} to pass first")
            elif reason:
                entry.update(status="skip", skipped=reason)
            elif not section.in_parent and left < 10:
                entry.update(status="not_run", reason=f"out of time: {left:.0f} s of the {time_limit:.0f} s limit left")
            elif section.in_parent:
                print(f"{number[section.name]}: started", flush=True)
                t0 = time.time()
                entry.update(_run_in_parent(section, ctx), seconds=round(time.time() - t0, 1))
                ctx.artifacts.update(entry.get("artifacts", {}))
            else:
                budget = min(budgets.get(section.name, left), left)
                print(f"{number[section.name]}: started (budget {budget:.0f} s)", flush=True)
                entry["status"] = "running"
                running.append(_start_child(section, ctx, budget, child_env))
                continue
            finish(section.name, entry)
        if running:
            time.sleep(0.2)
    failed = [n for n, r in report["sections"].items() if n in selected and r["status"] in ("fail", "not_run")]
    report.update(status="fail" if failed else "pass", exit_code=1 if failed else 0,
                  elapsed_s=round(time.time() - started, 1), failed=failed)
    report_io.write(ctx.out, report)
    print(f"gpu_acceptance: {report['status'].upper()} in {report['elapsed_s']:.0f} s"
          + (f"; failed or not run: {', '.join(failed)}" if failed else "")
          + f" — {ctx.out / report_io.JSON_NAME}, {ctx.out / report_io.MD_NAME}", flush=True)
    return report["exit_code"]
