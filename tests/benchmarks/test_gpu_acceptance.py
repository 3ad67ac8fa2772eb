"""benchmarks/gpu_acceptance.py: the refusal without a GPU, the CPU smoke run end to end, a section past its
budget failing alone, and the rules that turn checks into a section's status."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_acceptance.py"
sys.path.insert(0, str(BENCHMARKS))

from acceptance.profiles import SMOKE  # noqa: E402
from acceptance.runner import SECTIONS, _status  # noqa: E402

REFUSAL = "gpu_acceptance: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was run"


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_refuses_without_a_gpu_in_one_line(tmp_path):
    proc = _run("--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [REFUSAL]
    assert not (tmp_path / "out").exists()  # nothing was run, nothing written


def test_help_hides_the_smoke_flag():
    proc = _run("--help", timeout=120)
    assert proc.returncode == 0 and "--out" in proc.stdout and "--smoke-cpu" not in proc.stdout


@pytest.mark.parametrize("result,timed_out,code,status", [
    ({"checks": [{"ok": True, "required": True}]}, False, 0, "pass"),
    ({"checks": [{"ok": True, "required": True}, {"ok": False, "required": False}]}, False, 0, "pass"),  # a target
    ({"checks": [{"ok": False, "required": True}]}, False, 0, "fail"),
    ({"checks": [{"ok": True, "required": True}], "error": "RuntimeError: x"}, False, 0, "fail"),
    ({"checks": [{"ok": True, "required": True}]}, True, None, "fail"),  # past its budget
    ({"checks": [{"ok": True, "required": True}]}, False, -9, "fail"),  # the process died
    ({"checks": [], "skipped": "1 GPU"}, False, 0, "skip"),
    ({"checks": []}, False, 0, "fail"),  # a section that checked nothing did not pass
])
def test_section_status_rules(result, timed_out, code, status):
    assert _status(result, timed_out, code) == status


def test_a_section_past_its_budget_fails_and_its_dependents_do_not_run(tmp_path):
    # setup (data preparation, a teacher checkpoint: ~10 s warm) cannot finish in a 1 s budget; search needs setup
    proc = _run("--smoke-cpu", "--out", str(tmp_path / "out"), "--sections", "setup", "search", "--budget", "setup=1",
                timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out" / "acceptance.json").read_text())
    sections = report["sections"]
    assert sections["environment"]["status"] == "pass"
    assert sections["setup"]["status"] == "fail" and "timed out" in sections["setup"]["error"]
    assert sections["search"]["status"] == "not_run" and "needs setup" in sections["search"]["reason"]
    assert sections["kernels"]["reason"].startswith("not selected")
    assert report["failed"] == ["setup", "search"] and report["exit_code"] == 1
    assert "| setup | FAIL |" in (tmp_path / "out" / "acceptance.md").read_text()
    assert (tmp_path / "out" / "logs" / "setup.log").is_file()


def test_a_bad_budget_override_is_refused_by_name(tmp_path):
    proc = _run("--smoke-cpu", "--out", str(tmp_path / "out"), "--budget", "setup=soon", timeout=120)
    assert proc.returncode == 2 and "--budget setup=soon: expected SECTION=SECONDS" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = _run("--smoke-cpu", "--out", str(out), "--work-dir", str(work), timeout=3600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    report = json.loads((out / "acceptance.json").read_text())
    sections = report["sections"]
    assert report["status"] == "pass" and report["exit_code"] == 0 and report["failed"] == []
    assert list(sections) == [s.name for s in SECTIONS]
    statuses = {name: r["status"] for name, r in sections.items()}
    assert statuses == {s.name: "pass" for s in SECTIONS}, proc.stdout[-6000:]

    kernels = sections["kernels"]
    assert len(kernels["numbers"]["cases"]) == len(SMOKE.kernel_cases)
    assert len([c for c in kernels["checks"] if c["required"]]) == 2 * len(SMOKE.kernel_cases)  # triton, mirror
    speed = sections["speed"]["numbers"]["providers"]
    assert {"ours", "eager", "torch_compile"} <= set(speed) and speed["ours"]["ms"] > 0
    train = sections["train_resume"]["numbers"]
    assert train["resumed_from_step"] == 3 and 5 <= train["killed_at_step"] < SMOKE.train["steps"]
    assert train["resume_max_rel_loss_diff"] == 0.0  # CPU fp32: the resumed run is bit-exact
    assert train["output_path"].startswith("fused output on")
    kd = sections["kd_step"]["numbers"]
    assert kd["loss_gemms_per_micro_batch"]["kd"] == 5 * kd["loss_gemms_per_micro_batch"]["chunks"]
    assert 0 < sections["mfu"]["numbers"]["median_mfu"] < 1
    search = sections["search"]["numbers"]
    assert search["full_config_ppl"] > 1 and search["candidates_per_s"] > 0
    parallel = sections["parallel"]["numbers"]
    assert max(parallel["tp2_max_rel_loss_diff"], parallel["pp2_max_rel_loss_diff"]) <= SMOKE.parallel_rtol
    md = (out / "acceptance.md").read_text()
    assert md.startswith("# nemo-subnet GPU acceptance — PASS") and "| kernels | PASS |" in md
    for log in ("kernels", "train_resume", "train_reference", "train_killed", "train_resumed", "kd_step", "hf_parity",
                "search", "train_tp2", "train_pp2"):
        assert (out / "logs" / f"{log}.log").is_file(), log
    assert (out / "runs" / "resumed.metrics.jsonl").is_file() and (out / "runs" / "pp2.metrics.jsonl").is_file()
    assert not list(out.rglob("*.tmp"))  # every report write was completed by its rename


def test_budgets_leave_a_margin_and_cover_every_section():
    """One GPU: the child sections' budgets fit the 8-minute limit with at least 10 % to spare; the parallel
    section's is added only with two GPUs."""
    from acceptance.profiles import GPU

    children = [s.name for s in SECTIONS if not s.in_parent]
    assert set(children) <= set(GPU.budgets) and set(children) <= set(SMOKE.budgets)
    one_gpu = sum(GPU.budgets[name] for name in children if name != "parallel")
    assert GPU.time_limit == 480 and one_gpu <= 0.9 * GPU.time_limit, one_gpu


def test_an_optional_provider_past_its_allowance_is_a_number_not_a_failure(tmp_path):
    from acceptance import speed
    from acceptance.common import Context

    ctx = Context(out=tmp_path / "out", work=tmp_path / "work", profile="smoke")
    slow = speed._measure_in_child("torch_compile", ctx, 0.5)  # an interpreter start alone takes longer
    assert slow["note"] == "not finished within its 0.5 s allowance"
    assert math.isnan(slow["ms"]) and math.isnan(slow["peak_gib"])
