"""A stage's failure is its child's own one-line error; SIGTERM reaches the child; an interrupted stage is never
marked done and a resumable one resumes; a task given GPUs refuses to run on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_subnet.pipeline.config import PipelineConfig
from nemo_subnet.pipeline.runner import Stage, StageError, StageInterrupted, read_marker, run_stage


@pytest.fixture
def modules(tmp_path, monkeypatch) -> Path:
    """A directory on the children's PYTHONPATH for tiny stand-in commands."""
    where = tmp_path / "mods"
    where.mkdir()
    monkeypatch.setenv("PYTHONPATH", f"{where}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return where


def _stage_running(module: str, **kw) -> Stage:
    def body(ctx):
        ctx.dir.mkdir(parents=True, exist_ok=True)
        (ctx.dir / "resumed.txt").write_text(str(ctx.resume))
        ctx.python(module, "--flag", "1")
        return {}
    return Stage("a", body, **kw)


def test_user_error_line_of_the_child_is_the_stage_error(tmp_path, modules):
    (modules / "bad_input.py").write_text(
        "import sys\nprint('some progress', file=sys.stderr)\n"
        "print('nemo-subnet data: error: input path does not exist: /nowhere.txt', file=sys.stderr)\nsys.exit(2)\n")
    config = PipelineConfig(out_dir=str(tmp_path / "out"))
    with pytest.raises(StageError) as err:
        run_stage(config, {"a": _stage_running("bad_input")}, "a")
    assert str(err.value) == "stage a: nemo-subnet data: error: input path does not exist: /nowhere.txt"
    failed = read_marker(tmp_path / "out", "a", "failed")
    assert failed["error"] == str(err.value) and failed["exit_code"] == 2 and failed["interrupted"] is False
    assert failed["command"] == "python -m bad_input --flag 1"
    assert read_marker(tmp_path / "out", "a") is None


def test_traceback_of_the_child_gives_its_last_exception_line(tmp_path, modules):
    (modules / "crash.py").write_text("def f():\n    raise ValueError('shapes [4, 8] and [8, 3] disagree')\nf()\n")
    config = PipelineConfig(out_dir=str(tmp_path / "out"))
    with pytest.raises(StageError, match=r"^stage a: ValueError: shapes \[4, 8\] and \[8, 3\] disagree$"):
        run_stage(config, {"a": _stage_running("crash")}, "a")


def test_preempted_child_is_interrupted_not_done_then_resumes(tmp_path, modules):
    """Exit 75 (train's checkpoint-and-stop) is 'not finished': no done marker, and the next run resumes the
    stage's directory instead of wiping it."""
    flag = tmp_path / "preempt_once"
    flag.write_text("")
    (modules / "trainer.py").write_text(
        "import os, sys\n"
        f"flag = {str(flag)!r}\n"
        "if os.path.exists(flag):\n    os.remove(flag)\n    sys.exit(75)\n")
    config = PipelineConfig(out_dir=str(tmp_path / "out"))
    stages = {"a": _stage_running("trainer", resumable=True)}
    with pytest.raises(StageInterrupted, match="interrupted by SIGTERM .*the next launch resumes it"):
        run_stage(config, stages, "a")
    out = tmp_path / "out"
    assert read_marker(out, "a") is None and read_marker(out, "a", "started") is not None
    failed = read_marker(out, "a", "failed")
    assert failed["interrupted"] is True and failed["exit_code"] == 75
    assert (out / "a" / "resumed.txt").read_text() == "False"
    result = run_stage(config, stages, "a")
    assert result["reused"] is False and read_marker(out, "a") is not None
    assert (out / "a" / "resumed.txt").read_text() == "True"  # the started directory was kept and resumed
    assert read_marker(out, "a", "failed") is None


def test_pipeline_task_exits_75_when_its_stage_is_interrupted(tmp_path, monkeypatch):
    from nemo_subnet.pipeline import runner
    from nemo_subnet.pipeline.__main__ import main

    def interrupted(config, stages, name, log=print):
        raise StageInterrupted("stage teacher: interrupted by SIGTERM (exit 75), not finished")

    monkeypatch.setattr(runner, "run_stage", interrupted)
    PipelineConfig(out_dir=str(tmp_path / "out")).save(tmp_path / "p.yaml")
    assert main(["--config", str(tmp_path / "p.yaml"), "--stage", "data"]) == 75


SIGTERM_PARENT = """
import sys
from nemo_subnet.pipeline.child import run_child
result = run_child([sys.executable, "-c", sys.argv[1]], env=None)
print("parent", result.returncode, result.got_sigterm, flush=True)
"""
SIGTERM_CHILD = """
import signal, sys, time
def stop(signum, frame):
    print("child checkpointed", flush=True)
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
print("child ready", flush=True)
time.sleep(120)
"""


def test_sigterm_to_the_stage_process_reaches_its_child(tmp_path):
    """torchrun (and srun's step signal) may reach only the stage's process: it must pass SIGTERM on."""
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_PARENT, SIGTERM_CHILD], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.stdout.readline().strip() == "child ready"
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[0].split("\n")
    assert rest[:2] == ["child checkpointed", "parent 75 True"], rest


def test_gpu_request_without_cuda_is_one_clear_line(tmp_path, monkeypatch):
    from nemo_subnet.cli import UserError

    calls = []
    stages = {"a": Stage("a", lambda ctx: calls.append(1) or {}, kind="single")}
    monkeypatch.setenv("NEMO_SUBNET_REQUIRE_CUDA", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    config = PipelineConfig(out_dir=str(tmp_path / "out"))
    with pytest.raises(UserError) as err:
        run_stage(config, stages, "a")
    message = str(err.value)
    assert "\n" not in message and not calls
    assert message.startswith("this task requested 1 GPU(s) per node (NEMO_SUBNET_REQUIRE_CUDA=1) but CUDA is not "
                              "available (CUDA_VISIBLE_DEVICES='', torch.cuda.is_available()=False, torch.version.cuda=")
    assert "refusing to run on CPU" in message
    assert read_marker(tmp_path / "out", "a", "failed")["error"] == f"stage a: {message}"
    monkeypatch.setenv("NEMO_SUBNET_REQUIRE_CUDA", "0")  # 0: no GPU requested, CPU is fine
    run_stage(config, stages, "a")
    assert calls == [1]


def test_init_runtime_refuses_cpu_when_gpus_were_requested(monkeypatch):
    from nemo_subnet.cli import UserError
    from nemo_subnet.runtime import init_runtime

    monkeypatch.setenv("NEMO_SUBNET_REQUIRE_CUDA", "8")
    with pytest.raises(UserError, match=r"requested 8 GPU\(s\) per node .* refusing to run on CPU"):
        init_runtime()


def test_failed_marker_is_json_with_the_time(tmp_path):
    def boom(ctx):
        raise RuntimeError("disk full")

    config = PipelineConfig(out_dir=str(tmp_path / "out"))
    before = time.time()
    with pytest.raises(RuntimeError):
        run_stage(config, {"a": Stage("a", boom)}, "a")
    failed = json.loads((tmp_path / "out" / ".stages" / "a.failed.json").read_text())
    assert failed["error"] == "stage a: RuntimeError: disk full" and failed["time"] >= before


@pytest.mark.slow
def test_sigterm_to_every_process_of_a_training_stage_checkpoints_and_exits_75(tmp_path):
    """What SLURM does on preemption / requeue / time limit: SIGTERM to *every* process of the job, helpers
    included (megatron's checkpoint-writer Manager once died of it and the preemption save failed, exit 1)."""
    import glob

    from nemo_subnet.recipes.cli import resolve

    out = tmp_path / "out"
    config, _ = resolve("tiny", [f"config.out_dir={out}", "config.data.max_bytes=60000", "config.data.vocab_size=512",
                                 "config.teacher_train.schedule.train_steps=40",
                                 "config.teacher_train.checkpoint.every_steps=1"])
    config.save(tmp_path / "p.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    pipeline = [sys.executable, "-m", "nemo_subnet.pipeline", "--config", str(tmp_path / "p.yaml")]
    subprocess.run([*pipeline, "--stage", "data"], env=env, check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen([*pipeline, "--stage", "teacher"], env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while not glob.glob(str(out / "teacher" / "checkpoints" / "step_*" / "train_state.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole process group, like slurmstepd
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 75, log[-4000:]
    assert "train: stopped by SIGTERM before step 40" in log
    failed = read_marker(out, "teacher", "failed")
    assert failed["interrupted"] is True and failed["exit_code"] == 75, failed
    assert read_marker(out, "teacher") is None
    steps = [json.loads(p.read_text())["step"] for p in (out / "teacher" / "checkpoints").glob("step_*/train_state.json")]
    assert len(steps) == 1 and 1 <= steps[0] < 40
