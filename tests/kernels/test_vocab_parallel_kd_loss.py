"""Vocab-parallel KD loss at TP=2 (two gloo processes) equals the full-vocabulary loss."""

from __future__ import annotations

from pathlib import Path

import pytest
from torchrun_utils import run_torchrun

WORKER = str(Path(__file__).with_name("vocab_parallel_worker.py"))
ALL_CASES = ["fkl", "fkl_T2_ce_pad", "rkl_pad", "jsd0.1_ce", "jsd0.5_T2_ce_pad", "jsd0.9_pad"]
pytestmark = pytest.mark.distributed


def _check(output: str, cases: list[str], backend: str) -> None:
    for case in cases:
        for rank in (0, 1):
            assert f"VP OK {case} rank={rank} backend={backend}" in output, output[-3000:]


def test_tp2_equals_full_vocab_torch():
    _check(run_torchrun(WORKER, 2, "--backend", "torch"), ALL_CASES, "torch")


def test_tp2_equals_full_vocab_triton_interpreter():
    cases = ["fkl_T2_ce_pad", "jsd0.5_T2_ce_pad", "rkl_pad"]
    output = run_torchrun(WORKER, 2, "--backend", "triton", "--cases", ",".join(cases),
                          env={"TRITON_INTERPRET": "1"})
    _check(output, cases, "triton")
