"""Run configuration (YAML + overrides) and bad inputs that must fail fast with one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from train_helpers import CLI, TINY, env, make_checkpoint, run_config, write_yaml

from nemo_subnet.cli import UserError
from nemo_subnet.training import TrainConfig, train


def test_yaml_round_trip_and_overrides(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"run_dir": "r", "init": {"random": "m.yaml"}, "data": {"path": "d"},
                                              "distill": {"teacher": "t", "divergence": "jsd"}})
    config = TrainConfig.load(path, ["schedule.train_steps=7", "distill.temperature=2", "distill.top_k=4",
                                     "optimizer.lr=1e-3", "distill.teacher="])
    assert config.schedule.train_steps == 7 and config.distill.temperature == 2.0 and config.distill.top_k == 4
    assert config.optimizer.lr == 1e-3 and config.distill.teacher is None and config.loss_weights == (1.0, 0.0)
    config.save(tmp_path / "resolved.yaml")
    assert TrainConfig.load(tmp_path / "resolved.yaml") == config


@pytest.mark.parametrize("overrides,message", [
    (["optimiser.lr=1"], "optimiser: unknown key; did you mean optimizer"),
    (["schedule.decay_style=exp"], "schedule.decay_style: 'exp' is not allowed; allowed: cosine, linear, constant"),
    (["schedule.train_steps=abc"], "cannot read"),
    (["init.from_checkpoint=x"], "exactly one of"),
    (["data.global_batch_size=3"], "not a multiple"),
    (["distill.teacher=t", "distill.top_k=4", "distill.divergence=reverse_kl"], "top_k needs"),
    (["distill.divergence=kl"], "distill.divergence: 'kl' is not allowed; allowed: forward_kl, reverse_kl, jsd"),
    (["parallel.collective_timeout_minutes=0"], "parallel.collective_timeout_minutes: 0 is out of range; allowed: >= 1"),
    (["schedule.train_steps=2", "schedule.warmup_steps=2"], "schedule.warmup_steps: 2 must be fewer than the decay steps 2"),
    (["distill.fused_output=maybe"], "distill.fused_output: 'maybe' is not allowed; allowed: auto, on, off"),
])
def test_bad_config(tmp_path, overrides, message):
    path = write_yaml(tmp_path / "run.yaml", {"init": {"random": "m.yaml"}, "data": {"path": "d"}})
    with pytest.raises(UserError, match=message):
        TrainConfig.load(path, overrides).validate()


def test_every_problem_is_reported_at_once(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"init": {"random": "m.yaml"}, "data": {"path": "d"}})
    with pytest.raises(UserError) as err:
        TrainConfig.load(path, ["schedule.train_steps=0", "distill.divergence=kl", "distill.temperature=-1",
                                "data.global_batch_size=6", "data.micro_batch_size=4", "logging.evals=2"])
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 4 problems in the config:"
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == [
        "distill.divergence", "distill.temperature", "logging.evals", "schedule.train_steps"]
    # the cross-field rules of the sections that read correctly run too (global batch vs micro-batch)
    with pytest.raises(UserError, match="data.global_batch_size 6 is not a multiple"):
        TrainConfig.load(path, ["data.global_batch_size=6", "data.micro_batch_size=4"])


def _config(tmp_path, data_dir, init, **sections) -> TrainConfig:
    return TrainConfig.from_dict(run_config(tmp_path, tmp_path / "run", data_dir, init, **sections))


def test_sequence_longer_than_position_limit(tmp_path, data_dir, model_yaml):
    config = _config(tmp_path, data_dir, {"random": str(model_yaml)}, data={"seq_length": 256})
    with pytest.raises(UserError, match="longer than the position limit 128"):
        train(config)


def test_model_vocab_smaller_than_data_vocab(tmp_path, data_dir):
    small = write_yaml(tmp_path / "small.yaml", {**TINY, "vocab_size": 300})
    with pytest.raises(UserError, match="vocab mismatch"):
        train(_config(tmp_path, data_dir, {"random": str(small)}))


def test_teacher_vocab_mismatch(tmp_path, data_dir, model_yaml):
    teacher = make_checkpoint({**TINY, "vocab_size": 700}, tmp_path / "teacher", seed=3)
    config = _config(tmp_path, data_dir, {"random": str(model_yaml)}, distill={"teacher": str(teacher)})
    with pytest.raises(UserError, match="vocab mismatch: teacher vocab_size 700"):
        train(config)


def test_empty_corpus(tmp_path, data_dir, model_yaml):
    from nemo_subnet.data import PrepareConfig, prepare_dataset

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"d{i}.txt").write_text(f"x = {i}\n")
    data = tmp_path / "data"
    prepare_dataset(PrepareConfig(inputs=[str(corpus)], out=data, sentencepiece=str(data_dir / "tokenizer" / "tokenizer.model"),
                                  valid_fraction=0.25, progress=False))
    with pytest.raises(UserError, match="fewer than seq_length"):
        train(_config(tmp_path, data, {"random": str(model_yaml)}))


def test_cli_reports_one_line_and_exit_2(tmp_path, data_dir, model_yaml):
    config = write_yaml(tmp_path / "run.yaml", run_config(tmp_path, tmp_path / "run", data_dir, {"random": str(model_yaml)}))
    proc = subprocess.run([sys.executable, str(CLI), "train", "--config", str(config), "data.seq_length=512"],
                          capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("nemo-subnet train: error: ")
    assert not (tmp_path / "run").exists()  # nothing created for a run that cannot start
    assert yaml.safe_load(config.read_text())["data"]["seq_length"] == 64
