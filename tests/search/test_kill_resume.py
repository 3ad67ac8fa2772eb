"""A search process killed for real (SIGKILL, mid-run) and resumed: every evaluation (candidate, rung) run
once, and the same candidates, promotions, objectives and best as an uninterrupted search. Multi-fidelity
is on (the default schedule: 2 validation batches make rungs of 1 and 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nemo_subnet.search.results import CANDIDATES

CLI = Path(__file__).parents[2] / "nemo_subnet" / "cli.py"
EVALUATIONS, KILL_AFTER = 14, 4


def _command(ckpt, data_dir, space, out):
    return [sys.executable, str(CLI), "search", "--ckpt", str(ckpt), "--data", str(data_dir), "--space", str(space),
            "--budget", "0.6", "--tolerance", "0.15", "--strategy", "evolutionary", "--population", "4",
            "--evaluations", str(EVALUATIONS), "--out", str(out), "--no-progress", "--no-plots",
            "--val-batches", "2", "--seq-length", "32", "--micro-batch-size", "2"]


def _records(out):
    return [json.loads(line) for line in (out / CANDIDATES).read_text().splitlines()]


def test_sigkill_mid_search_then_resume_equals_uninterrupted(ckpt, data_dir, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("granularity: coarse_layerwise\nordering: first_k\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    reference = tmp_path / "reference"
    subprocess.run(_command(ckpt, data_dir, space, reference), env=env, check=True, capture_output=True, timeout=900)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(ckpt, data_dir, space, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    try:
        while not ((out / CANDIDATES).is_file() and len((out / CANDIDATES).read_text().splitlines()) >= KILL_AFTER):
            assert proc.poll() is None, f"search ended before the kill: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "search made no progress"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = (out / CANDIDATES).read_text().count("\n")  # complete lines; one cut by the kill is dropped on resume
    assert KILL_AFTER <= before < EVALUATIONS

    subprocess.run(_command(ckpt, data_dir, space, out), env=env, check=True, capture_output=True, timeout=900)
    resumed, uninterrupted = _records(out), _records(reference)
    keys = [json.dumps([r["key"], r["rung"]]) for r in resumed]
    assert len(keys) == len(set(keys))  # no evaluation run twice
    assert sum(r["rung"] == 0 for r in resumed) == EVALUATIONS and any(r["rung"] == 1 for r in resumed)
    assert [(r["key"], r["objective"], r["index"], r["rung"]) for r in resumed] == [
        (r["key"], r["objective"], r["index"], r["rung"]) for r in uninterrupted]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replayed"] == before and summary["evaluated_this_session"] == len(resumed) - before
    assert (out / "best.yaml").read_text() == (reference / "best.yaml").read_text()
