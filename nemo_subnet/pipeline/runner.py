"""Run a pipeline stage once: skip it when its output is complete for the same inputs, else (re)make it.

A stage owns one directory ``<out_dir>/<stage>``. Its completion marker ``<out_dir>/.stages/<stage>.json``
lives outside it (so the commands that write the directory atomically never see it) and records a
fingerprint: a hash of the config sections the stage reads and of its upstream stages' fingerprints.
A stage is reused iff the marker exists, its fingerprint matches and its directory exists; otherwise
its directory is removed and it runs again, except training stages, which resume their own checkpoints
when they were started with the same fingerprint (a killed demo continues where it stopped).

Stages run the ``nemo-subnet`` commands as child processes (``python -m nemo_subnet.cli ...``) with the
caller's environment, so a stage launched under torchrun / srun passes its rank variables on. Stages
that are single-process by nature run on global rank 0 only, with the launcher's variables removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nemo_subnet.pipeline.config import PipelineConfig

MARKERS = ".stages"
_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "GROUP_WORLD_SIZE",
                "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                "SLURM_LOCALID")
# (also every TORCHELASTIC_* variable: TORCHELASTIC_USE_AGENT_STORE=True makes a child's init_process_group
# wait forever for the agent's store instead of starting its own)


class StageError(RuntimeError):
    """A stage command failed; the message names the stage and the command."""


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[["StageContext"], dict]
    """Makes the stage's directory; returns a summary dict stored in the marker."""
    deps: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    """Config fields (dotted) that determine the output."""
    distributed: bool = False
    """Runs on every rank (training); False: on global rank 0 only."""
    resumable: bool = False
    """Keeps a started directory and resumes it instead of starting over."""
    help: str = ""


@dataclass
class StageContext:
    config: PipelineConfig
    stage: Stage
    out: Path
    """The pipeline's output root."""
    resume: bool = False

    @property
    def dir(self) -> Path:
        return self.out / self.stage.name

    def path(self, stage: str) -> Path:
        return self.out / stage

    def cli(self, *args: str) -> None:
        """Run ``nemo-subnet ARGS`` as a child process (on every rank of a distributed stage)."""
        self.python("nemo_subnet.cli", *args, distributed=self.stage.distributed)

    def python(self, module: str, *args, distributed: bool = False) -> None:
        """Run ``python -m MODULE ARGS``; raise StageError on failure. Not distributed: launcher variables
        are removed so the child is a single process."""
        env = dict(os.environ)
        if not distributed:  # a single process: nothing may point it at the launcher's rendezvous
            for var in list(env):
                if var in _LAUNCH_VARS or var.startswith(("TORCHELASTIC_", "TORCHX_", "PET_")):
                    env.pop(var)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2))))
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("PYTHONWARNINGS", "ignore")
        cmd = [sys.executable, "-m", module, *map(str, args)]
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            shown = "nemo-subnet" if module == "nemo_subnet.cli" else f"python -m {module}"
            raise StageError(f"stage {self.stage.name}: `{shown} {' '.join(map(str, args))}` exited {proc.returncode}")

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
    from dataclasses import asdict, is_dataclass

    reads = {}
    for key in stage.reads:
        value = _lookup(config, key)
        reads[key] = asdict(value) if is_dataclass(value) else value
    blob = json.dumps({"stage": stage.name, "reads": reads, "deps": [upstream[d] for d in stage.deps]},
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
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def stage_fingerprints(config: PipelineConfig, stages: dict[str, Stage], upto: str) -> dict[str, str]:
    """Fingerprints of ``upto`` and everything it depends on (deps resolved recursively)."""
    prints: dict[str, str] = {}

    def visit(name: str) -> str:
        if name not in prints:
            stage = stages[name]
            upstream = {dep: visit(dep) for dep in stage.deps}
            prints[name] = fingerprint(config, stage, upstream)
        return prints[name]

    visit(upto)
    return prints


def is_done(config: PipelineConfig, stages: dict[str, Stage], name: str) -> bool:
    out = Path(config.out_dir)
    marker = read_marker(out, name)
    return bool(marker and marker.get("fingerprint") == stage_fingerprints(config, stages, name)[name]
                and (out / name).exists())


def run_stage(config: PipelineConfig, stages: dict[str, Stage], name: str, *, log=print) -> dict:
    """Run one stage unless its output is complete; returns its marker (summary, seconds, reused)."""
    if name not in stages:
        from nemo_subnet.cli import UserError

        raise UserError(f"unknown stage {name!r}; stages: {', '.join(stages)}")
    stage = stages[name]
    out = Path(config.out_dir)
    prints = stage_fingerprints(config, stages, name)
    marker = read_marker(out, name)
    if marker and marker.get("fingerprint") == prints[name] and (out / name).exists():
        log(f"[{name}] reusing finished stage ({marker.get('seconds', 0):.0f} s when it ran)")
        return {**marker, "reused": True}
    for dep in stage.deps:
        if not is_done(config, stages, dep):
            raise StageError(f"stage {name} needs stage {dep}, which has not finished (run it first)")
    if not stage.distributed and _rank() != 0:
        return {"skipped_rank": _rank()}

    # Rank 0 clears a stale directory, then writes the "started" marker; the other ranks of a distributed
    # stage wait for that marker, so no rank starts on a directory that is about to be removed.
    if _rank() == 0:
        started = read_marker(out, name, "started")
        keep = stage.resumable and started is not None and started.get("fingerprint") == prints[name]
        marker_path(out, name).unlink(missing_ok=True)
        if (out / name).exists() and not keep:
            shutil.rmtree(out / name)
        _write_marker(out, name, {"fingerprint": prints[name]}, "started")
    else:
        _wait_for_started(out, name, prints[name])
    resume = stage.resumable and (out / name).exists()
    begin = time.perf_counter()
    summary = stage.run(StageContext(config=config, stage=stage, out=out, resume=resume))
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
    return {name: run_stage(config, stages, name, log=log) for name in (names or list(stages))}
