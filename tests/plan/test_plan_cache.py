"""The planner's teacher cache: training from a cache is the no-teacher plan plus the cached ids, its read
traffic is bytes per token x tokens/s, and the build job is the teacher's forward only at its own layout."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nemo_subnet.plan.cache import cache_bytes_per_token, plan_cache_build
from nemo_subnet.plan.hardware import gpu
from nemo_subnet.plan.memory import PlanOptions, plan_memory, stage_parameters
from nemo_subnet.plan.models import preset_config
from nemo_subnet.plan.throughput import step_time
from nemo_subnet.models.counting import forward_flops_per_token

TEACHER, STUDENT = preset_config("llama-3.1-70b"), preset_config("llama-3.1-8b")
OPTS = PlanOptions(seq_length=4096, micro_batch_size=1, global_batch_size=1024, tp=8, dp=64, sequence_parallel=True,
                   fused_output=True)


def test_bytes_per_token_by_vocabulary_and_method():
    assert cache_bytes_per_token(preset_config("pythia-160m"), 12) == 24  # 50,304 ids fit uint16
    assert cache_bytes_per_token(TEACHER, 12) == 48  # 128,256 ids need int32
    assert cache_bytes_per_token(TEACHER, 6, "topk") == 36  # + float16 masses
    assert {k: cache_bytes_per_token(preset_config("pythia-160m"), k) for k in (4, 12, 32)} == {4: 8, 12: 24, 32: 64}


def test_cache_training_is_the_no_teacher_plan_plus_the_cached_ids():
    cached = dataclasses.replace(OPTS, teacher_cache=12)
    memory, plain = plan_memory(STUDENT, None, cached), plan_memory(STUDENT, None, OPTS)
    online = plan_memory(STUDENT, TEACHER, OPTS)
    assert memory.parts["teacher weights"] == 0 and online.parts["teacher weights"] > 16 * 2**30
    ids = OPTS.tokens * 12 * 4  # int32 on the device
    assert memory.phases["loss"] - plain.phases["loss"] == pytest.approx(ids - 4096 * 128256 // 8 * 2)  # one chunk buffer less
    device = gpu("H100")
    assert step_time(STUDENT, None, cached, device).step_s == step_time(STUDENT, None, OPTS, device).step_s
    assert step_time(STUDENT, TEACHER, OPTS, device).step_s > 3 * step_time(STUDENT, None, cached, device).step_s
    with pytest.raises(ValueError, match="no teacher in the step"):
        plan_memory(STUDENT, TEACHER, cached)


def test_cache_build_is_the_teachers_forward_only():
    opts = PlanOptions(seq_length=4096, micro_batch_size=2, global_batch_size=8, tp=8, dp=4)
    device = gpu("H100")
    build = plan_cache_build(TEACHER, opts, device, k=12)
    assert build.parts["teacher weights"] == stage_parameters(TEACHER, 8, 1, 0) * 2
    assert build.flops_per_token == forward_flops_per_token(TEACHER, 4096)
    compute_only = 32 * device.peak_bf16_flops * 0.40 / build.flops_per_token
    assert 0.7 * compute_only < build.tokens_per_s < compute_only  # TP all-reduces on top of the compute
    assert build.write_bytes_per_s == pytest.approx(build.tokens_per_s * 48)
    twice = plan_cache_build(TEACHER, dataclasses.replace(opts, dp=8), device, k=12)
    assert twice.tokens_per_s == pytest.approx(2 * build.tokens_per_s)


def _cli(capsys, *argv):
    from nemo_subnet.cli import main

    code = main(["plan", "--teacher", "llama-3.1-70b", "--student", "llama-3.1-8b", "--seq-length", "4096",
                 "--global-batch-size", "1024", "--tp", "8", "--dp", "64", "--tokens", "1e11", "--json", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_reports_cache_training_and_build(capsys):
    code, out, _ = _cli(capsys, "--teacher-cache", "12")
    report = json.loads(out)
    cache = report["teacher_cache"]
    assert code == 0 and report["options"]["fused_output"] and cache["bytes_per_token"] == 48
    assert cache["read_bytes_per_s"] == pytest.approx(report["time"]["tokens_per_s"] * 48)
    assert cache["read_bytes_per_s_per_node"] == pytest.approx(cache["read_bytes_per_s"] / 64)
    assert cache["storage_bytes"] == 1e11 * 48
    code, out, _ = _cli(capsys, "--teacher-cache", "12", "--cache-build")
    build = json.loads(out)
    assert code == 0 and build["cache"]["storage_bytes"] == 1e11 * 48
    assert build["time"]["days"] == pytest.approx(1e11 / build["time"]["tokens_per_s"] / 86400)


@pytest.mark.parametrize("argv,message", [
    (["--cache-build"], "--cache-build needs --teacher-cache K"),
    (["--teacher-cache", "12", "--top-k", "8"], "no top_k"),
])
def test_cli_cache_errors(capsys, argv, message):
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1
