"""Recipes build and dry-run for every preset through both CLIs; bad input fails with one clear line."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from recipe_utils import BIN, fake_hf_dir, nemo_subnet, run_cli  # noqa: E402


@pytest.fixture
def home(tmp_path) -> Path:
    home = tmp_path / "nemo_run"
    home.mkdir()
    return home


@pytest.mark.parametrize("preset", ["tiny", "pythia_410m", "llama_1b"])
def test_presets_build_every_stage_with_dependencies(preset, tmp_path):
    from nemo_subnet.pipeline.stages import build_stages
    from nemo_subnet.recipes.executors import LaunchConfig
    from nemo_subnet.recipes.presets import PRESETS
    from nemo_subnet.recipes.search_then_pretrain import build_experiment

    config = PRESETS[preset]()
    if config.hf_model:
        config = dataclasses.replace(config, hf_model=str(fake_hf_dir(tmp_path / "hf")))
    config = dataclasses.replace(config, out_dir=str(tmp_path / "out"))
    config.validate()
    launch = LaunchConfig(executor="slurm", nodes=2, nproc_per_node=1, gpus_per_node=8, partition="batch",
                          account="acct", container_image="registry.example/x/nemo-subnet:latest")
    exp = build_experiment(config, launch)
    stages = build_stages()
    jobs = {job.id: job for job in exp.jobs}
    assert list(jobs) == list(stages)
    for name, stage in stages.items():
        assert sorted(jobs[name].dependencies) == sorted(stage.deps)
        ex = jobs[name].executor
        assert ex.nodes == (2 if stage.distributed else 1)
        assert (ex.gpus_per_node == 8) == stage.distributed
        assert ex.partition == "batch" and ex.account == "acct"
        assert ex.container_image == "registry.example/x/nemo-subnet:latest"


def test_nemo_run_cli_dryrun_tiny_torchrun(home):
    """`nemo subnet search-then-pretrain --factory tiny --dryrun` (NeMo-Run's entry-point group)."""
    proc = run_cli([BIN / "nemo", "subnet", "search-then-pretrain", "--factory", "tiny", "--dryrun", "-y",
                    f"config.out_dir={home / 'out'}", "launch.nproc_per_node=2",
                    "config.student_train.steps=3"], home, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "steps=3" in out  # the override reached the config
    for stage in ("data", "teacher", "importance", "search", "extract", "distill", "baseline", "export", "report"):
        assert f"Task {stage}" in out or f"'{stage}'" in out, stage
    assert "torchrun" in out and "nproc-per-node" in out.replace("nproc_per_node", "nproc-per-node")
    assert not (home / "out").exists(), "a dry run must not run anything"


def test_nemo_subnet_run_dryrun_pythia_on_slurm(home):
    """A realistic preset on a (simulated) 2-node GPU cluster: sbatch scripts only, nothing submitted."""
    hf = fake_hf_dir(home / "pythia-410m")
    proc = run_cli(nemo_subnet("run", "--factory", "pythia_410m", "--dryrun", f"config.hf_model={hf}",
                               f"config.out_dir={home / 'out'}", "launch.executor=slurm", "launch.nodes=2",
                               "launch.gpus_per_node=8", "launch.partition=batch", "launch.account=me"),
                   home, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "#SBATCH" in out and "--partition=batch" in out and "--account=me" in out
    assert "--nodes=2" in out and "--gpus-per-node=8" in out


def test_unknown_factory():
    from nemo_subnet.cli import UserError, main
    from nemo_subnet.recipe_cli import resolve

    with pytest.raises(UserError, match="unknown factory 'gpt5'; available: tiny, pythia_410m, llama_1b"):
        resolve("gpt5", [])
    assert main(["run", "--factory", "gpt5", "--dryrun"]) == 2


def test_unknown_factory_through_nemo_run_cli(home):
    proc = run_cli([BIN / "nemo", "subnet", "search-then-pretrain", "--factory", "gpt5", "--dryrun", "-y"], home,
                   timeout=300)
    assert proc.returncode != 0
    assert "gpt5" in proc.stdout + proc.stderr


def test_missing_hf_path(tmp_path, capsys):
    from nemo_subnet.cli import main

    code = main(["run", "--factory", "pythia_410m", "--dryrun", f"config.hf_model={tmp_path / 'nowhere'}"])
    assert code == 2
    assert f"hf_model {tmp_path / 'nowhere'}: no such HF model directory (config.json missing)" in capsys.readouterr().err


def test_slurm_not_reachable(tmp_path, monkeypatch, capsys):
    import nemo_subnet.recipes.executors as executors
    from nemo_subnet.cli import main

    monkeypatch.setattr(executors.shutil, "which", lambda name: None)
    code = main(["run", "--factory", "tiny", f"config.out_dir={tmp_path / 'out'}", "launch.executor=slurm"])
    assert code == 2
    err = capsys.readouterr().err
    assert "SLURM is not reachable: SLURM client commands (sinfo, sbatch) are not installed" in err
    assert not (tmp_path / "out").exists()


def test_bad_override_keys(capsys):
    from nemo_subnet.cli import main

    assert main(["run", "--dryrun", "config.student_train.stepz=3"]) == 2
    assert "unknown keys in student_train." in capsys.readouterr().err
    assert main(["run", "--dryrun", "launch.gpus=3"]) == 2
    assert "unknown keys in launch." in capsys.readouterr().err
