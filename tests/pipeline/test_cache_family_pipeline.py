"""The pipeline builds the teacher cache once and trains a family of students from one search.

End to end on CPU (tiny teacher pretrained here, a few steps per stage): ``student_train.distill.teacher_source:
cache`` with no ``distill.cache`` and ``search.budgets`` of two targets runs the ``teacher_cache`` stage once, two
KD students read it with no teacher built (the training loop says so on stdout), two random-init students train
beside them, and the report has a row per budget. A second launch reuses every stage (no second build). The
stage graph's cheap properties (online KD skips the stage and keeps its fingerprints) are checked without training.
"""

from __future__ import annotations

import pytest
import yaml

from nemo_subnet.config import updated
from nemo_subnet.errors import UserError
from nemo_subnet.pipeline import run_pipeline
from nemo_subnet.pipeline.config import PipelineConfig, default_train
from nemo_subnet.pipeline.runner import run_stage, stage_fingerprints
from nemo_subnet.pipeline.stages import build_stages, student_dir
from nemo_subnet.recipes.presets import tiny

NO_TEACHER = "(set by distill.teacher_source: cache, whose loss is fused only)"
"""What the training loop prints when it reads a cache and builds no teacher."""


def _config(out, **changes) -> PipelineConfig:
    short = {"logging.eval_every": 2, "schedule.warmup_steps": 0}
    return updated(tiny(), {
        "out_dir": str(out), "teacher_train": updated(default_train(2), short),
        "student_train": updated(default_train(2), {**short, "data.micro_batch_size": 2, "logging.tensorboard": False,
                                                    "logging.progress": False}),
        "search.budget": None, "search.budgets": {"targets": [0.3, 0.6], "tolerance": 0.15},
        "search.evaluations": 4, **changes})


def test_online_kd_skips_the_cache_stage_and_keeps_the_fingerprints(tmp_path):
    stages = build_stages()
    online = PipelineConfig(out_dir=str(tmp_path))
    assert not stages["teacher_cache"].applies_to(online)
    assert run_stage(online, stages, "teacher_cache", log=lambda _: None)["skipped"]
    assert not (tmp_path / ".stages").exists() and not (tmp_path / "teacher_cache").exists()
    prints = stage_fingerprints(online, stages, "baseline")
    assert "teacher_cache" not in prints  # not an input: an online run's fingerprints are those before the stage
    cached = updated(online, {"student_train.distill.teacher_source": "cache"})
    assert stages["teacher_cache"].applies_to(cached)
    distill_print = lambda c: stage_fingerprints(c, stages, "distill")["distill"]  # noqa: E731
    assert distill_print(cached) != distill_print(online)  # the cache (its fingerprint) is the KD students' input
    given = updated(online, {"student_train.distill.teacher_source": "cache", "student_train.distill.cache": "c"})
    assert not stages["teacher_cache"].applies_to(given)  # a given cache is used as is
    assert student_dir(tmp_path, "distill", "") == tmp_path / "distill"  # one student: today's layout
    assert online.student_budgets() == [""] and _config(tmp_path).student_budgets() == ["0.3", "0.6"]


def test_one_cache_two_budgets_two_kd_students_and_a_report_row_each(tmp_path, capfd):
    out = tmp_path / "out"
    config = _config(out, **{"student_train.distill.teacher_source": "cache", "teacher_cache.k": 4})
    first = run_pipeline(config, log=lambda _: None)
    assert not any(m.get("reused") for m in first.values())
    printed = capfd.readouterr().out

    cache = first["teacher_cache"]["summary"]
    run_samples = config.student_train.schedule.train_steps * config.student_train.data.global_batch_size
    assert cache["cache"] == str(out / "teacher_cache") and cache["samples"] == run_samples
    assert cache["bytes_per_token"] == 4 * 2 and cache["flops"] > 0  # 4 uint16 ids per token
    assert (out / "teacher_cache" / "manifest.json").is_file()
    assert printed.count("teacher-cache: ") == 1 and "built " in printed  # built once, by the stage

    students = first["distill"]["summary"]["students"]
    assert list(students) == ["0.3", "0.6"]
    for name, student in students.items():
        assert student["teacher_cache"] == str(out / "teacher_cache") and student["test_ppl"] > 0
        run = yaml.safe_load((out / "distill" / name / "config.yaml").read_text())
        assert run["distill"]["teacher_source"] == "cache" and run["distill"]["cache"] == str(out / "teacher_cache")
        assert (out / "distill" / name / "model").is_dir() and (out / "baseline" / name / "model").is_dir()
    assert printed.count(NO_TEACHER) == 2  # the two KD students built no teacher; the baselines are plain CE
    extract = first["extract"]["summary"]["students"]
    assert extract["0.3"]["parameters"] < extract["0.6"]["parameters"]
    assert first["extract"]["summary"]["parameters"] == extract["0.3"]["parameters"]  # the first budget's, as before

    report = (out / "report" / "report.md").read_text()
    assert "### Every budget's students" in report and "teacher cache" in report
    rows = [line for line in report.splitlines() if line.startswith(("| 0.3 |", "| 0.6 |"))]
    assert len(rows) == 2 and all("—" not in row for row in rows), rows
    assert "| teacher_cache |" in report and (out / "report" / "students.png").stat().st_size > 0
    assert (out / "export" / "student_hf" / "config.json").is_file()
    assert first["export"]["summary"]["other_students"] == {"0.6": str(out / "distill" / "0.6" / "model")}

    again = run_pipeline(config, log=lambda _: None)  # a second launch: nothing rebuilt
    assert all(m["reused"] for m in again.values())
    assert "teacher-cache: " not in capfd.readouterr().out


def test_bad_combinations_are_refused_when_the_config_is_read():
    family = {"search": {"budget": None, "budgets": {"targets": [0.3, 0.33]}, "evaluations": 1}}
    with pytest.raises(UserError) as err:
        PipelineConfig.from_dict(family)
    assert "search.budgets.targets: 0.3 and 0.33 overlap at tolerance 0.05" in str(err.value)
    assert "search.evaluations: 1 is fewer than the 2 budgets of search.budgets" in str(err.value)
    with pytest.raises(UserError, match=r"search.budgets.targets: .* two targets share a name \(0.333333, 0.333333"):
        PipelineConfig.from_dict({"search": {"budget": None, "budgets": {"targets": [0.3333331, 0.3333332]}}})
    with pytest.raises(UserError, match=r"teacher_cache.k: read only when the pipeline builds the teacher cache"):
        PipelineConfig.from_dict({"teacher_cache": {"k": 4}})  # online KD: no cache is built
    with pytest.raises(UserError) as err:
        PipelineConfig.from_dict({"student_train": {"distill": {"teacher_source": "cache"}},
                                  "teacher_cache": {"samples": 8, "temperature": 2.0}})
    assert "teacher_cache.samples: set by the pipeline" in str(err.value)
    assert "teacher_cache.temperature: set by the pipeline" in str(err.value)
    built = PipelineConfig.from_dict({
        "student_train": {"distill": {"teacher_source": "cache"}}, "teacher_cache": {"k": 4, "method": "topk"},
        "search": {"budget": None, "budgets": {"targets": [0.25, 0.5]}}})
    assert built.builds_teacher_cache() and built.student_budgets() == ["0.25", "0.5"]
