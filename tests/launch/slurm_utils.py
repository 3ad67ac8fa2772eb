"""A real SLURM for tests: skip where none answers, except in CI (``NEMO_SUBNET_CI_SLURM=1``, set by .ci/run as
root after starting one), where a missing SLURM is a failure, never a silent skip."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

CI_VAR = "NEMO_SUBNET_CI_SLURM"


def require_slurm() -> str:
    """The default partition of a SLURM that answers here; skips (fails under CI) otherwise."""
    from nemo_subnet.recipes.executors import slurm_reachable

    reason = slurm_reachable()
    if reason is not None:
        if os.environ.get(CI_VAR) == "1":
            pytest.fail(f"{CI_VAR}=1 (CI started a local SLURM) but {reason}")
        pytest.skip(f"no SLURM reachable: {reason} (run `sudo launch/local_slurm.sh`, or .ci/run as root)")
    partitions = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout.split()
    default = [p for p in partitions if p.endswith("*")]
    return (default or partitions)[0].rstrip("*")


def job_field(job_id: str, field: str) -> str | None:
    """One ``Field=value`` of ``scontrol show job`` (None once the controller forgot the job)."""
    proc = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    for token in proc.stdout.split():
        if token.startswith(f"{field}="):
            return token.split("=", 1)[1]
    return None


def wait_for(predicate, what: str, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def scontrol(*args: str) -> None:
    proc = subprocess.run(["scontrol", *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"scontrol {' '.join(args)}: {proc.stderr.strip()}"
