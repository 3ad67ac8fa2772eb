"""The stage runner: finished stages are reused, changed settings redo a stage and everything after it."""

from __future__ import annotations

import dataclasses

import pytest

from nemo_subnet.pipeline.config import PipelineConfig, section
from nemo_subnet.pipeline.runner import Stage, StageError, run_all, run_stage


def _stages(calls: list[str]) -> dict[str, Stage]:
    def make(name):
        def body(ctx):
            calls.append(name)
            ctx.dir.mkdir(parents=True, exist_ok=True)
            (ctx.dir / "out.txt").write_text(name)
            return {"made": name}
        return body

    return {"a": Stage("a", make("a"), reads=("data",)),
            "b": Stage("b", make("b"), ("a",), reads=("search.strategy_config.population",)),
            "c": Stage("c", make("c"), ("b",))}


def test_reuse_and_invalidation(tmp_path):
    calls: list[str] = []
    stages = _stages(calls)
    config = PipelineConfig(out_dir=str(tmp_path))
    first = run_all(config, stages, log=lambda _: None)
    assert calls == ["a", "b", "c"] and not any(m["reused"] for m in first.values())
    second = run_all(config, stages, log=lambda _: None)
    assert calls == ["a", "b", "c"] and all(m["reused"] for m in second.values())
    # a setting read by b changes: b and c (downstream) run again, a is reused
    changed = section(config, **{"search.strategy_config.population": 99})
    run_all(changed, stages, log=lambda _: None)
    assert calls == ["a", "b", "c", "b", "c"]
    # a stage whose directory vanished is redone even with a marker
    import shutil

    shutil.rmtree(tmp_path / "c")
    run_all(changed, stages, log=lambda _: None)
    assert calls[-1] == "c" and calls.count("c") == 3


def test_failed_stage_leaves_no_marker_and_blocks_dependents(tmp_path):
    def boom(ctx):
        ctx.dir.mkdir(parents=True)
        raise StageError("stage a: boom")

    stages = {"a": Stage("a", boom), "b": Stage("b", lambda ctx: {}, ("a",))}
    config = PipelineConfig(out_dir=str(tmp_path))
    with pytest.raises(StageError, match="boom"):
        run_stage(config, stages, "a")
    assert not (tmp_path / ".stages" / "a.done.json").exists()
    with pytest.raises(StageError, match="stage b needs stage a, which has not finished"):
        run_stage(config, stages, "b")


def test_config_yaml_round_trip_and_overrides(tmp_path):
    from nemo_subnet.cli import UserError
    from nemo_subnet.pipeline.config import apply_overrides
    from nemo_subnet.recipes.presets import PRESETS

    config = PRESETS["tiny"]()
    config.save(tmp_path / "p.yaml")
    loaded = PipelineConfig.load(tmp_path / "p.yaml", ["search.evaluations=3", "data.inputs=[a.txt, b.txt]"])
    assert loaded.search.evaluations == 3 and loaded.data.inputs == ["a.txt", "b.txt"]
    assert dataclasses.replace(loaded, search=config.search, data=config.data) == config
    with pytest.raises(UserError, match="search.evaluationz: unknown key; did you mean evaluations"):
        apply_overrides(config, ["search.evaluationz=3"])


def test_old_flat_keys_are_read_at_their_new_places(tmp_path):
    """YAML files and overrides of the layout before the stages' configs were composed keep working."""
    import yaml

    (tmp_path / "old.yaml").write_text(yaml.safe_dump({
        "seed": 7, "student_train": {"steps": 30, "lr": 1e-3, "tp": 2, "checkpoint_every": 5},
        "distill": {"temperature": 2.0, "fused_output": "on", "baseline_kd": True},
        "search": {"param_fraction": 0.5, "granularity": "coarse_uniform", "population": 3, "eval_batches": 6,
                   "calibration_batches": 5}}))
    c = PipelineConfig.load(tmp_path / "old.yaml", ["teacher_train.steps=40"])
    assert (c.student_train.schedule.train_steps, c.student_train.optimizer.lr, c.student_train.parallel.tp,
            c.student_train.checkpoint.every_steps) == (30, 1e-3, 2, 5)
    assert c.teacher_train.schedule.train_steps == 40
    assert (c.student_train.distill.temperature, c.student_train.distill.fused_output, c.baseline_kd) == (2.0, "on", True)
    assert (c.search.budget.target, c.search.space.granularity.value, c.search.strategy_config.population,
            c.search.eval.batches, c.importance.batches) == (0.5, "coarse_uniform", 3, 6, 5)
    assert c.data.seed == c.teacher_train.seed == c.student_train.seed == c.importance.seed == 7
    # the rest of each section keeps the pipeline's defaults (a partial section is merged, not replaced)
    assert c.search.space.round_to == 8 and c.student_train.logging.eval_at_start


def test_every_problem_of_a_pipeline_config_at_once():
    from nemo_subnet.cli import UserError

    bad = {"search": {"strategy": "evolutionaryy", "granularity": "fine"},
           "distill": {"divergence": "kl", "fused_output": "maybe"},
           "student_train": {"schedule": {"train_steps": 0}, "run_dir": "elsewhere"}, "data": {"test_fraction": 0}}
    with pytest.raises(UserError) as err:
        PipelineConfig.from_dict(bad)
    lines = str(err.value).splitlines()
    assert lines[0] == "6 problems in the config:"
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == [
        "data.test_fraction", "search.space.granularity", "search.strategy", "student_train.distill.divergence",
        "student_train.distill.fused_output", "student_train.schedule.train_steps"]
    assert "allowed: random, evolutionary, proxy" in str(err.value)
    # the rules between sections run on the sections that read correctly (data here), not on those that did not
    # (student_train's run_dir is reported once its values read)
    with pytest.raises(UserError) as err:
        PipelineConfig.from_dict({"student_train": {"run_dir": "elsewhere"}, "data": {"test_fraction": 0}})
    assert "student_train.run_dir: set by the pipeline" in str(err.value)
    assert "data.test_fraction: must be > 0" in str(err.value)
