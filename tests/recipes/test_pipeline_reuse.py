"""The stage runner: finished stages are reused, changed settings redo a stage and everything after it."""

from __future__ import annotations

import dataclasses

import pytest

from nemo_subnet.pipeline.config import PipelineConfig, SearchSpec
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
            "b": Stage("b", make("b"), ("a",), reads=("search.population",)),
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
    changed = dataclasses.replace(config, search=SearchSpec(population=99))
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
    with pytest.raises(UserError, match="unknown keys in search"):
        apply_overrides(config, ["search.evals=3"])
