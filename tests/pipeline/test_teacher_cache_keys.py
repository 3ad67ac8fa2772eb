"""The teacher cache in a pipeline config: student_train.distill.teacher_source / .cache are the train stage's own
fields (old flat distill.* keys read there too), checked with the rest of the config, and a plain-CE run of the
section (the baseline without baseline_kd) reads no cache."""

from __future__ import annotations

import pytest

from nemo_subnet.errors import UserError
from nemo_subnet.pipeline.config import PipelineConfig
from nemo_subnet.pipeline.stages import train_run


def test_the_cache_keys_are_student_train_distill_fields(tmp_path):
    (tmp_path / "k12").mkdir()
    config = PipelineConfig.from_dict({"distill": {"teacher_source": "cache", "cache": str(tmp_path / "k12")}})
    assert (config.student_train.distill.teacher_source, config.student_train.distill.cache) == ("cache", tmp_path / "k12")
    config.validate()

    distill = train_run(config.student_train, tmp_path / "d", tmp_path / "data", init_checkpoint=tmp_path / "x",
                        teacher=tmp_path / "teacher").distill
    assert (distill.teacher, distill.teacher_source, distill.cache) == (tmp_path / "teacher", "cache", tmp_path / "k12")
    baseline = train_run(config.student_train, tmp_path / "b", tmp_path / "data", init_random=tmp_path / "m.yaml")
    assert (baseline.distill.teacher, baseline.distill.teacher_source, baseline.distill.cache) == (None, "online", None)
    baseline.validate()


def test_bad_cache_settings_are_reported_at_once_before_anything_runs(tmp_path):
    with pytest.raises(UserError) as err:
        PipelineConfig.from_dict({"student_train": {"distill": {"teacher_source": "cache", "divergence": "jsd",
                                                                "fused_output": "off"}}})
    for line in ("student_train.distill.cache: teacher_source: cache needs the cache directory",
                 "student_train.distill.divergence: teacher_source: cache estimates forward_kl only, not jsd",
                 "student_train.distill.fused_output: teacher_source: cache computes its loss from hidden states"):
        assert line in str(err.value)
    with pytest.raises(UserError, match=r"student_train.distill.teacher_source: 'offline' is not allowed; allowed: "
                                        r"online, cache"):
        PipelineConfig.from_dict({"student_train": {"distill": {"teacher_source": "offline"}}})
    missing = PipelineConfig.from_dict({"student_train": {"distill": {"teacher_source": "cache",
                                                                      "cache": str(tmp_path / "none")}}})
    with pytest.raises(UserError, match=r"student_train.distill.cache: .*none: no such teacher-cache directory"):
        missing.validate()
