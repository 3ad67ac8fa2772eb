"""megatron's checkpoint-writer helper process survives SIGTERM (SLURM signals every process of a job; the
rank decides when to stop) and never outlives its rank (a hard-killed rank used to leave it as an orphan)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

CHILD = """
import os, sys, time
from nemo_subnet.training.checkpoint import start_checkpoint_writer_helper
from megatron.core.dist_checkpointing.strategies import filesystem_async
start_checkpoint_writer_helper()
start_checkpoint_writer_helper()  # idempotent: one helper
queue = filesystem_async._get_write_results_queue()  # megatron's own accessor returns our queue
queue.put("ok")
assert queue.get() == "ok"
import multiprocessing
print(os.getpid(), *[p.pid for p in multiprocessing.active_children()], flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_writer_helper_ignores_sigterm_and_dies_with_its_rank():
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        rank, *helpers = map(int, proc.stdout.readline().split())
        assert rank == proc.pid and len(helpers) == 1, helpers
        helper = helpers[0]
        os.kill(helper, signal.SIGTERM)
        time.sleep(1.0)
        assert _alive(helper), "SIGTERM killed the checkpoint-writer helper"
        proc.kill()  # SIGKILL: no finalizer of the rank runs
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(helper) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(helper), "the helper outlived its SIGKILLed rank"
    finally:
        if proc.poll() is None:
            proc.kill()
