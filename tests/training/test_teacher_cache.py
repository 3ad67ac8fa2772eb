"""Teacher cache: the build covers exactly the training stream (checksums, the teacher's own draws), does not
depend on the build's DP / micro-batch (per-sample draws) and barely on its TP, resumes after a kill, and every
mismatch between a cache and a run (or a second build) is refused up front by name."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import CLI, TINY, run_config, write_yaml
from torchrun_utils import run_torchrun

from nemo_subnet import config as configs
from nemo_subnet.errors import UserError
from nemo_subnet.models import ModelConfig
from nemo_subnet.teacher_cache import store
from nemo_subnet.teacher_cache.build import build_teacher_cache, sample_uniforms
from nemo_subnet.teacher_cache.config import TeacherCacheConfig
from nemo_subnet.teacher_cache.training import open_for_training
from nemo_subnet.training.config import TrainConfig

SAMPLES, SEQ, K, T = 24, 64, 12, 2.0


def _config(out, data_dir, teacher_ckpt, **kw) -> TeacherCacheConfig:
    base = dict(out=str(out), teacher=str(teacher_ckpt), samples=SAMPLES, k=K, temperature=T, segment_microbatches=2,
                progress=False, data={"path": str(data_dir), "seq_length": SEQ, "micro_batch_size": 2})
    return configs.updated(TeacherCacheConfig(), {**base, **kw})


@pytest.fixture(scope="module")
def cache(tmp_path_factory, data_dir, teacher_ckpt) -> Path:
    out = tmp_path_factory.mktemp("cache") / "k12"
    result = build_teacher_cache(_config(out, data_dir, teacher_ckpt))
    assert (result.covered, result.built_now, result.bytes_per_token) == (SAMPLES, SAMPLES, 2 * K)
    return out


def _all_rows(root) -> np.ndarray:
    c = store.TeacherCache(root)
    return c.rows(0, SAMPLES)[0]


def test_cache_holds_the_teachers_draws_on_the_training_stream(cache, data_dir, teacher_ckpt, megatron_runtime):
    """Sample i's checksum is the training stream's sample i, and its ids are the teacher's draws from its own
    (seed, i) uniforms: recomputed here from full logits."""
    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.data import GPTDataConfig, build_gpt_datasets
    from nemo_subnet.kernels import vocab_parallel_sample
    from nemo_subnet.models.inference import forward_logits

    c = store.TeacherCache(cache)
    assert c.layout.covered == SAMPLES and c.provenance.dataset_samples == SAMPLES
    train = build_gpt_datasets(GPTDataConfig(data_dir=data_dir, seq_length=SEQ), SAMPLES).train
    ids, probs, sums = c.rows(0, SAMPLES)
    assert probs is None and ids.shape == (SAMPLES, SEQ, K) and int(ids.max()) < TINY["vocab_size"]
    for i in (0, 5, SAMPLES - 1):
        assert sums[i] == store.sample_checksum(train[i]["tokens"], train[i]["labels"])
    cfg, model = load_model(teacher_ckpt)
    for i in (0, 13):
        logits = forward_logits(model, cfg, train[i]["tokens"][None])[0]  # [s, vocab]
        want, _ = vocab_parallel_sample(logits, k=K, uniforms=sample_uniforms(1234, i, 1, SEQ, K, logits.device)[0],
                                        temperature=T)
        assert (torch.from_numpy(ids[i]).long() == want.cpu()).float().mean() > 0.999  # fp32 rounding at CDF edges


@pytest.mark.distributed
def test_build_does_not_depend_on_dp_or_pp_and_barely_on_tp(cache, tmp_path, data_dir, teacher_ckpt):
    for name, parallel, mbs in (("dp2", {"tp": 1}, 3), ("pp2", {"pp": 2}, 2), ("tp2", {"tp": 2}, 2)):
        config = _config(tmp_path / name, data_dir, teacher_ckpt, **{"data.micro_batch_size": mbs})
        config.parallel = dataclasses.replace(config.parallel, **parallel)
        configs.save(config, tmp_path / f"{name}.yaml")
        run_torchrun(str(CLI), 2, "teacher-cache", "--config", str(tmp_path / f"{name}.yaml"), env={"PYTHONWARNINGS": "ignore"})
        got, want = _all_rows(tmp_path / name), _all_rows(cache)
        if name == "dp2":  # each DP rank wrote its own segment files; the rows are the same draws
            assert sorted(p.name for p in (tmp_path / name / store.SEGMENTS).iterdir())[:4] == [
                "000000-dp000.ids.npy", "000000-dp000.sums.npy", "000000-dp001.ids.npy", "000000-dp001.sums.npy"]
            assert np.array_equal(got, want)
        elif name == "pp2":  # the last stage samples and writes: the same draws
            assert np.array_equal(got, want)
        else:  # the shards' CDFs differ from one device's by fp32 rounding: at most a few draws move
            assert (got == want).mean() > 0.999


def test_killed_build_resumes_to_the_same_cache(cache, tmp_path, data_dir, teacher_ckpt):
    killed = tmp_path / "killed"
    shutil.copytree(cache, killed)
    # what a kill during segment 4 (of 6) leaves: no manifest, segment 4's ids renamed but not its checksums,
    # segment 5 absent, a temporary file of the writer
    (killed / store.MANIFEST_FILE).unlink()
    for kind in ("sums",):
        store.part_path(killed, 4, 0, kind).unlink()
    for kind in ("ids", "sums"):
        store.part_path(killed, 5, 0, kind).unlink()
    (killed / store.SEGMENTS / ".000004-dp000.sums.npy.123.tmp").write_bytes(b"cut")
    config = _config(killed, data_dir, teacher_ckpt)
    with pytest.raises(UserError, match=r"is partial: 16 of 24 samples built \(4 of 6 segments\); finish it .*--resume"):
        store.TeacherCache(killed)
    with pytest.raises(UserError, match=r"partial build of this cache \(4 of 6 segments\): pass --resume"):
        build_teacher_cache(config)
    result = build_teacher_cache(config, resume=True)
    assert result.built_now == SAMPLES - 4 * 4
    assert np.array_equal(_all_rows(killed), _all_rows(cache))
    assert build_teacher_cache(config, resume=True).built_now == 0  # complete: nothing to do


def test_another_build_into_the_same_directory_is_refused(cache, data_dir, teacher_ckpt, student_ckpt):
    with pytest.raises(UserError, match=r"another teacher cache build: k: the cache has 12, this one 4"):
        build_teacher_cache(_config(cache, data_dir, teacher_ckpt, k=4))
    with pytest.raises(UserError, match=r"teacher_fingerprint"):
        build_teacher_cache(_config(cache, data_dir, student_ckpt))


def _run(tmp_path, data_dir, student_ckpt, teacher_ckpt, cache_dir, **distill) -> TrainConfig:
    teacher = None if teacher_ckpt is None else str(teacher_ckpt)
    raw = run_config(tmp_path, tmp_path / "run", data_dir, {"from_checkpoint": str(student_ckpt)},
                     schedule={"train_steps": 6, "warmup_steps": 1},
                     distill={"teacher": teacher, "teacher_source": "cache", "cache": str(cache_dir),
                              "temperature": T, **distill})
    return TrainConfig.from_dict(raw)


@pytest.mark.parametrize("change,match", [
    ({"distill.temperature": 1.0}, r"distill.temperature: the cache has 2.0, this run 1.0"),
    ({"data.seed": 7}, r"data.seed: the cache has 1234, this run 7"),
    ({"data.seq_length": 32}, r"data.seq_length: the cache has 64, this run 32"),
    ({"schedule.train_steps": 7}, r"it covers 24 samples, this run reads 28 .* samples >= 28"),
])
def test_mismatched_runs_are_refused_by_name(change, match, tmp_path, data_dir, student_ckpt, teacher_ckpt, cache):
    config = _run(tmp_path, data_dir, student_ckpt, teacher_ckpt, cache)
    for key, value in change.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    config.validate()
    with pytest.raises(UserError, match=match):
        open_for_training(config, ModelConfig(**TINY))


def test_cache_of_another_teacher_or_vocabulary_is_refused(tmp_path, data_dir, student_ckpt, teacher_ckpt, cache):
    config = _run(tmp_path, data_dir, student_ckpt, student_ckpt, cache)
    with pytest.raises(UserError, match=r"built from teacher .*teacher \(fingerprint .*\), this run names .*student"):
        open_for_training(config, ModelConfig(**TINY))
    config = _run(tmp_path, data_dir, student_ckpt, teacher_ckpt, cache)
    with pytest.raises(UserError, match=r"vocab_size \(student\): the cache has 500, this run 400"):
        open_for_training(config, ModelConfig(**{**TINY, "vocab_size": 400}))


@pytest.mark.parametrize("distill,match", [
    ({"divergence": "jsd"}, r"distill.divergence: teacher_source: cache estimates forward_kl only, not jsd"),
    ({"top_k": 4}, r"distill.top_k: does not apply to a cache"),
    ({"fused_output": "off"}, r"distill.fused_output: .* auto or on, not off"),
    ({"teacher_source": "online"}, r"distill.cache: read only with teacher_source: cache"),
])
def test_settings_that_cannot_read_a_cache_are_refused(distill, match, tmp_path, data_dir, student_ckpt, teacher_ckpt,
                                                       cache):
    with pytest.raises(UserError, match=match):
        _run(tmp_path, data_dir, student_ckpt, teacher_ckpt, cache, **distill)


def test_a_cache_run_needs_its_teacher_and_its_cache(tmp_path, data_dir, student_ckpt, teacher_ckpt, cache):
    """The teacher is only checked against the cache, never built, but it must be named; so must the cache. Both are
    inputs a run must have, not rules of the section (a pipeline fills them in, building the cache itself)."""
    config = _run(tmp_path, data_dir, student_ckpt, None, cache)
    with pytest.raises(UserError, match=r"distill.teacher: teacher_source: cache needs the checkpoint"):
        config.validate()
    config = _run(tmp_path, data_dir, student_ckpt, teacher_ckpt, cache, cache=None)
    with pytest.raises(UserError, match=r"distill.cache: teacher_source: cache needs the cache directory"):
        config.validate()


def test_build_settings_are_checked():
    with pytest.raises(UserError) as err:
        TeacherCacheConfig(k=0).validate()
    for line in ("out: required", "teacher: required", "data.path: required", "samples: required", "k: 0"):
        assert line in str(err.value)
    with pytest.raises(UserError, match=r"method: 'nucleus' is not allowed; allowed: sample, topk"):
        configs.updated(TeacherCacheConfig(), {"method": "nucleus"})


def test_teacher_cache_flags_come_from_its_config(tmp_path):
    """``nemo-subnet teacher-cache`` flags are TeacherCacheConfig's fields; --for-run fills what a run decides, and
    flags win over it."""
    import argparse

    from nemo_subnet.teacher_cache.cli import register

    run = write_yaml(tmp_path / "run.yaml", run_config(
        tmp_path, tmp_path / "run", tmp_path / "data", {"random": str(tmp_path / "model.yaml")},
        schedule={"train_steps": 5}, distill={"teacher": str(tmp_path / "teacher"), "temperature": T}))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["teacher-cache", "--for-run", str(run), "--out", str(tmp_path / "c"), "--k", "4",
                              "--data.micro-batch-size", "1", "method=topk"])
    from nemo_subnet.config import config_from_arguments
    from nemo_subnet.teacher_cache.config import REQUIRED

    config = config_from_arguments(TeacherCacheConfig, args, required=REQUIRED,
                                   base=TeacherCacheConfig.for_run(TrainConfig.load(run)))
    trained = TrainConfig.load(run)
    assert (config.k, config.method, config.data.micro_batch_size, config.temperature) == (4, "topk", 1, T)
    assert config.samples == trained.schedule.train_steps * trained.data.global_batch_size
    assert config.teacher == tmp_path / "teacher" and config.data.path == trained.data.path
    with pytest.raises(UserError) as err:
        config_from_arguments(TeacherCacheConfig, parser.parse_args(["teacher-cache", "--out", "x"]), required=REQUIRED)
    assert all(f"{name}: required" in str(err.value) for name in ("teacher", "data.path", "samples"))


def _train(root, name, data_dir, student_ckpt, teacher_ckpt, cache_dir, parallel, ranks, *extra) -> Path:
    from train_helpers import run_train

    config = write_yaml(root / f"{name}.yaml", run_config(
        root, root / name, data_dir, {"from_checkpoint": str(student_ckpt)},
        schedule={"train_steps": 6, "warmup_steps": 1}, parallel=parallel,
        distill={"teacher": str(teacher_ckpt), "teacher_source": "cache", "cache": str(cache_dir), "temperature": T,
                 "alpha_ce": 0.5, "beta_kd": 0.5},
        logging={"eval_every": 3, "eval_iters": 2, "progress": False, "tensorboard": False}))
    if ranks == 1:
        run_train(config, *extra)
    else:
        run_torchrun(str(CLI), ranks, "train", "--config", str(config), *extra, env={"PYTHONWARNINGS": "ignore"})
    return root / name


@pytest.mark.distributed
def test_training_from_the_cache_resumes_exactly_and_reads_the_same_rows_at_any_layout(
        tmp_path, data_dir, student_ckpt, teacher_ckpt, cache):
    """A run from the cache: resumed after a kill (step-3 checkpoint) it repeats the uninterrupted run bit for bit;
    at DP=2 (other rows per rank), TP=2 (ids split over vocab shards) and PP=2 (rows read on the last stage) it
    follows the same curve."""
    from train_helpers import metrics

    from nemo_subnet.training import checkpoint as ckpt

    keys = ("loss", "ce", "kd", "grad_norm")
    curve = lambda run: torch.tensor([[r[k] for k in keys] for r in metrics(run)], dtype=torch.float64)  # noqa: E731
    base = _train(tmp_path, "tp1", data_dir, student_ckpt, teacher_ckpt, cache, {"tp": 1}, 1)
    killed = tmp_path / "killed"
    shutil.copytree(base, killed)
    shutil.rmtree(ckpt.step_dir(killed, 6))
    _train(tmp_path, "killed", data_dir, student_ckpt, teacher_ckpt, cache, {"tp": 1}, 1, "--resume")
    assert [r["loss"] for r in metrics(killed)] == [r["loss"] for r in metrics(base)]
    assert torch.equal(curve(killed), curve(base))
    for name, parallel in (("dp2", {"tp": 1}), ("tp2", {"tp": 2}), ("pp2", {"pp": 2})):
        run = _train(tmp_path, name, data_dir, student_ckpt, teacher_ckpt, cache, parallel, 2)
        torch.testing.assert_close(curve(run), curve(base), rtol=2e-5, atol=2e-5)
    assert all("kd" in r for r in metrics(base))
