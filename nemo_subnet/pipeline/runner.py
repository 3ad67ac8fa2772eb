"""Run a pipeline stage once: skip it when its output is complete for the same inputs, else (re)make it.

A stage owns one directory ``<out_dir>/<stage>``. Its completion marker ``<out_dir>/.stages/<stage>.json``
lives outside it (so the commands that write the directory atomically never see it) and records a
fingerprint: a hash of the config sections the stage reads and of its upstream stages' fingerprints.
A stage is reused iff the marker exists, its fingerprint matches and its directory exists; otherwise
its directory is removed and it runs again, except training stages, which resume their own checkpoints
when they were started with the same fingerprint (a killed demo continues where it stopped).

Stages run the ``nemo-subnet`` commands as child processes (``python -m nemo_subnet.cli ...``, see child.py)
with the caller's environment, so a stage launched under torchrun / srun passes its rank variables on. Stages
whose kind runs one process (``host``, ``single``) run on global rank 0 only, with the launcher's variables
removed; ``evaluate`` and ``train`` stages run on every rank.

A stage the config does not need (``Stage.applies``: the teacher cache under online KD) is skipped: no
directory, no marker, and it is neither an input of the stages after it nor part of their fingerprints.

A stage that fails leaves ``<out_dir>/.stages/<stage>.failed.json``: its own one-line error (the child's
``UserError`` line or the last line of its traceback), the command and exit code, and whether it was
*interrupted* (SIGTERM: preemption, requeue, time limit). An interrupted stage is never marked done; a
resumable one (training, search) continues from its checkpoint on the next launch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nemo_subnet.config import to_dict
from nemo_subnet.files import write_text_atomic
from nemo_subnet.pipeline.config import PipelineConfig
from nemo_subnet.pipeline.kinds import EVERY_RANK_KINDS, StageKind

MARKERS = ".stages"
REQUIRE_CUDA_VAR = "NEMO_SUBNET_REQUIRE_CUDA"
"""= ``nemo_subnet.runtime.gpu_request.REQUIRE_CUDA_VAR``; spelled out so host stages need not load the runtime."""
_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "GROUP_WORLD_SIZE",
                "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                "SLURM_LOCALID")
# (also every TORCHELASTIC_* variable: TORCHELASTIC_USE_AGENT_STORE=True makes a child's init_process_group
# wait forever for the agent's store instead of starting its own)


class StageError(RuntimeError):
    """A stage failed; the message (one line) names the stage and says what went wrong."""

    def __init__(self, message: str, *, command: str | None = None, returncode: int | None = None):
        super().__init__(message)
        self.command = command
        self.returncode = returncode


class StageInterrupted(StageError):
    """A stage command stopped on SIGTERM (checkpointed and exited EXIT_PREEMPTED, or killed): not finished."""


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[["StageContext"], dict]
    """Makes the stage's directory; returns a summary dict stored in the marker."""
    deps: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    """Config fields (dotted) that determine the output."""
    kind: StageKind | Callable[[PipelineConfig], StageKind] = "host"
    """Where it runs (kinds.py; a function of the config when that decides, e.g. import vs pretrain the teacher)."""
    resumable: bool = False
    """Keeps a started directory and resumes it instead of starting over."""
    help: str = ""
    applies: Callable[[PipelineConfig], bool] | None = None
    """Whether the config needs this stage (None: always). A stage that does not apply is skipped: it runs
    nothing, writes no marker, and counts as finished for the stages after it."""

    def applies_to(self, config: PipelineConfig) -> bool:
        return self.applies is None or self.applies(config)

    def kind_of(self, config: PipelineConfig) -> StageKind:
        return self.kind(config) if callable(self.kind) else self.kind

    def every_rank(self, config: PipelineConfig) -> bool:
        """Runs on every rank of its launch; False: on global rank 0 only."""
        return self.kind_of(config) in EVERY_RANK_KINDS


@dataclass
class StageContext:
    config: PipelineConfig
    stage: Stage
    out: Path
    """The pipeline's output root."""
    resume: bool = False
    every_rank: bool = False
    """Its commands run on every rank (evaluate, train stages); else one process."""

    @property
    def dir(self) -> Path:
        return self.out / self.stage.name

    def path(self, stage: str) -> Path:
        return self.out / stage

    def cli(self, *args: str) -> None:
        """Run ``nemo-subnet ARGS`` as a child process (on every rank of an evaluate / train stage)."""
        self.python("nemo_subnet.cli", *args, distributed=self.every_rank)

    def python(self, module: str, *args, distributed: bool = False) -> None:
        """Run ``python -m MODULE ARGS``; raise StageError (its one-line error) on failure, StageInterrupted when
        SIGTERM stopped it. Not distributed: launcher variables are removed so the child is a single process."""
        from nemo_subnet.pipeline.child import error_line, interrupted, run_child

        env = dict(os.environ)
        if not distributed:  # a single process: nothing may point it at the launcher's rendezvous
            for var in list(env):
                if var in _LAUNCH_VARS or var.startswith(("TORCHELASTIC_", "TORCHX_", "PET_")):
                    env.pop(var)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2))))
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        cmd = [sys.executable, "-m", module, *map(str, args)]
        result = run_child(cmd, env)
        if result.returncode == 0:
            return
        shown = " ".join(["nemo-subnet" if module == "nemo_subnet.cli" else f"python -m {module}", *map(str, args)])
        code, name = result.returncode, self.stage.name
        if interrupted(code) or result.got_sigterm:
            then = ("the next launch resumes it from its last checkpoint" if self.stage.resumable
                    else "the next launch runs it again")
            raise StageInterrupted(f"stage {name}: interrupted by SIGTERM (exit {code}), not finished; {then}",
                                   command=shown, returncode=code)
        line = error_line(result.stderr_tail)
        raise StageError(f"stage {name}: {line}" if line else f"stage {name}: `{shown}` exited {code}",
                         command=shown, returncode=code)

    @property
    def is_main(self) -> bool:
        return _rank() == 0


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def _lookup(config: PipelineConfig, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def fingerprint(config: PipelineConfig, stage: Stage, upstream: dict[str, str]) -> str:
    """Hash of what determines a stage's output: the fields it reads and its inputs' fingerprints."""
    reads = {key: to_dict(_lookup(config, key)) for key in stage.reads}
    blob = json.dumps({"stage": stage.name, "reads": reads, "deps": [upstream[d] for d in stage.deps if d in upstream]},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def marker_path(out: Path, name: str, kind: str = "done") -> Path:
    return out / MARKERS / f"{name}.{kind}.json"


def read_marker(out: Path, name: str, kind: str = "done") -> dict | None:
    path = marker_path(out, name, kind)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_marker(out: Path, name: str, data: dict, kind: str = "done") -> None:
    path = marker_path(out, name, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2, default=str))  # several ranks may record a failure


def _record_failure(out: Path, stage: Stage, err: Exception) -> None:
    """``<stage>.failed.json``: the stage's own one-line error for whoever launched it (rank 0's wins)."""
    if _rank() != 0 and marker_path(out, stage.name, "failed").exists():
        return
    from nemo_subnet.errors import UserError

    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not isinstance(err, (StageError, UserError)):
        message = f"stage {stage.name}: {type(err).__name__}: {message}"
    elif not message.startswith(f"stage {stage.name}"):
        message = f"stage {stage.name}: {message}"
    _write_marker(out, stage.name, {
        "stage": stage.name, "error": message, "command": getattr(err, "command", None),
        "exit_code": getattr(err, "returncode", None), "interrupted": isinstance(err, StageInterrupted),
        "resumable": stage.resumable, "rank": _rank(), "host": os.uname().nodename, "time": time.time()}, "failed")


def stage_fingerprints(config: PipelineConfig, stages: dict[str, Stage], upto: str) -> dict[str, str]:
    """Fingerprints of ``upto`` and everything it depends on (deps resolved recursively)."""
    prints: dict[str, str] = {}

    def visit(name: str) -> str:
        if name not in prints:
            stage = stages[name]
            # a skipped stage is no input (a config that skips it keeps the fingerprints it had before it existed)
            upstream = {dep: visit(dep) for dep in stage.deps if stages[dep].applies_to(config)}
            prints[name] = fingerprint(config, stage, upstream)
        return prints[name]

    visit(upto)
    return prints


def is_done(config: PipelineConfig, stages: dict[str, Stage], name: str) -> bool:
    """Its output is complete for this config (a stage the config does not need counts as done)."""
    if not stages[name].applies_to(config):
        return True
    out = Path(config.out_dir)
    marker = read_marker(out, name)
    return bool(marker and marker.get("fingerprint") == stage_fingerprints(config, stages, name)[name]
                and (out / name).exists())


def run_stage(config: PipelineConfig, stages: dict[str, Stage], name: str, *, log=print) -> dict:
    """Run one stage unless its output is complete; returns its marker (summary, seconds, reused). A failure
    (or SIGTERM) raises and leaves ``<stage>.failed.json``, never the done marker."""
    if name not in stages:
        from nemo_subnet.errors import UserError

        raise UserError(f"unknown stage {name!r}; stages: {', '.join(stages)}")
    stage = stages[name]
    out = Path(config.out_dir)
    try:
        return _run_stage(config, stages, stage, out, log)
    except Exception as err:
        _record_failure(out, stage, err)
        raise


def _run_stage(config: PipelineConfig, stages: dict[str, Stage], stage: Stage, out: Path, log) -> dict:
    if os.environ.get(REQUIRE_CUDA_VAR, "0") != "0":  # a task given GPUs fails here, before any work
        from nemo_subnet.runtime.gpu_request import check_requested_gpus

        check_requested_gpus()
    name = stage.name
    if not stage.applies_to(config):
        log(f"[{name}] skipped: this config does not need it")
        return {"stage": name, "skipped": True, "reused": False}
    prints = stage_fingerprints(config, stages, name)
    marker = read_marker(out, name)
    if marker and marker.get("fingerprint") == prints[name] and (out / name).exists():
        log(f"[{name}] reusing finished stage ({marker.get('seconds', 0):.0f} s when it ran)")
        return {**marker, "reused": True}
    for dep in stage.deps:
        if not is_done(config, stages, dep):
            raise StageError(f"stage {name} needs stage {dep}, which has not finished (run it first)")
    every_rank = stage.every_rank(config)
    if not every_rank and _rank() != 0:
        return {"skipped_rank": _rank()}

    # Rank 0 clears a stale directory, then writes the "started" marker; the other ranks of a distributed
    # stage wait for that marker, so no rank starts on a directory that is about to be removed.
    if _rank() == 0:
        started = read_marker(out, name, "started")
        keep = stage.resumable and started is not None and started.get("fingerprint") == prints[name]
        marker_path(out, name).unlink(missing_ok=True)
        marker_path(out, name, "failed").unlink(missing_ok=True)
        if (out / name).exists() and not keep:
            shutil.rmtree(out / name)
        _write_marker(out, name, {"fingerprint": prints[name]}, "started")
    else:
        _wait_for_started(out, name, prints[name])
    resume = stage.resumable and (out / name).exists()
    begin = time.perf_counter()
    summary = stage.run(StageContext(config=config, stage=stage, out=out, resume=resume, every_rank=every_rank))
    seconds = time.perf_counter() - begin
    result = {"stage": name, "fingerprint": prints[name], "seconds": round(seconds, 1), "summary": summary or {}}
    if _rank() == 0:
        _write_marker(out, name, result)
        marker_path(out, name, "started").unlink(missing_ok=True)
    log(f"[{name}] done in {seconds:.0f} s")
    return {**result, "reused": False}


def _wait_for_started(out: Path, name: str, fingerprint_: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        marker = read_marker(out, name, "started")
        if marker and marker.get("fingerprint") == fingerprint_:
            return
        time.sleep(0.5)
    raise StageError(f"stage {name}: rank 0 did not start it within {timeout:.0f} s")


def run_all(config: PipelineConfig, stages: dict[str, Stage], names: list[str] | None = None, *, log=print) -> dict:
    """Run stages in order (``names`` default: all, in definition order); returns {stage: marker}."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if _rank() == 0:
        config.save(out / "pipeline.yaml")
    def needed(name: str) -> bool:  # a stage the config does not need is skipped without a line
        return name not in stages or stages[name].applies_to(config)

    return {name: run_stage(config, stages, name, log=log if needed(name) else lambda _: None)
            for name in (names or list(stages))}
