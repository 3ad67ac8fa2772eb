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


TWO_NODE_PARTITION = "two"
"""launch/local_slurm.sh's two-node partition (two slurmd on this host)."""


def require_two_nodes() -> str:
    """The partition with two nodes of the local SLURM; skips (fails under CI) where there is none."""
    require_slurm()
    proc = subprocess.run(["sinfo", "-h", "-p", TWO_NODE_PARTITION, "-o", "%D %T"], capture_output=True, text=True)
    nodes = sum(int(line.split()[0]) for line in proc.stdout.splitlines()
                if line.split() and line.split()[1] in ("idle", "mixed", "allocated"))
    if nodes < 2:
        reason = (f"partition {TWO_NODE_PARTITION!r} has {nodes} usable node(s), not 2 ({proc.stdout.strip() or proc.stderr.strip()}); "
                  "re-run `sudo launch/local_slurm.sh`")
        if os.environ.get(CI_VAR) == "1":
            pytest.fail(f"{CI_VAR}=1 but {reason}")
        pytest.skip(reason)
    return TWO_NODE_PARTITION


def node_addr(node: str) -> str:
    """A node's NodeAddr as slurmctld has it."""
    out = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True, text=True, check=True).stdout
    return next(t.split("=", 1)[1] for t in out.split() if t.startswith("NodeAddr="))
