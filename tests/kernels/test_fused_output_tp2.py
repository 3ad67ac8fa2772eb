"""Fused-output ops at TP=2 (two gloo processes, device-discipline mode) equal the full-vocabulary
single-process references and the same ops at TP=1: loss, grad of the weight shard, grad_hidden summed
over ranks; the teacher's top-k selection gives the same values and ids. See fused_output_worker.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from fused_output_worker import CASES
from torchrun_utils import run_torchrun

WORKER = str(Path(__file__).with_name("fused_output_worker.py"))
TRITON_CASES = ["fused_jsd_ce_logits", "fused_ce_only", "topk_fkl_T2_ce", "fused_topk_jsd", "fused_sampled_T2_ce",
                "fused_topk_tail_ce"]
pytestmark = pytest.mark.distributed


def _check(output: str, cases: list[str], backend: str) -> None:
    for case in cases:
        for rank in (0, 1):
            assert f"FO OK {case} rank={rank} backend={backend}" in output, output[-3000:]


def test_tp2_equals_full_vocab_torch():
    _check(run_torchrun(WORKER, 2, "--backend", "torch"), list(CASES), "torch")


def test_tp2_equals_full_vocab_triton_interpreter():
    output = run_torchrun(WORKER, 2, "--backend", "triton", "--shape", "small", "--cases", ",".join(TRITON_CASES),
                          env={"TRITON_INTERPRET": "1"})
    _check(output, TRITON_CASES, "triton")
