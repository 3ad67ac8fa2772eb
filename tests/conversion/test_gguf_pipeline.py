"""The whole recipe from a GGUF teacher: ``hf_model: <file>.gguf`` (as the demo runs SmolLM2-135M's file).

The data stage tokenizes with the file's tokenizer (``data prepare --tokenizer X.gguf``), the teacher stage
imports it (``import-hf --hf X.gguf``), and every later stage runs on that checkpoint, export included.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import pytest
from gguf_files import write_gguf

sys.path.insert(0, str(Path(__file__).parents[1] / "recipes"))
from recipe_utils import assert_complete, nemo_subnet, run_cli  # noqa: E402

from nemo_subnet.models.tiny_hf import TOKENIZER_TOKENS, make_hf_model, make_tokenizer  # noqa: E402

STAGES = ("data", "teacher", "importance", "search", "extract", "distill", "baseline", "export", "report")


@pytest.mark.slow
def test_recipe_runs_from_a_gguf_teacher(tmp_path):
    model = make_hf_model("llama", seed=0, vocab_size=TOKENIZER_TOKENS, tie_word_embeddings=True)
    make_tokenizer(tmp_path / "tokenizer")
    path = write_gguf(model, tmp_path / "teacher.Q8_0.gguf", gguf.GGMLQuantizationType.Q8_0, tmp_path / "tokenizer")
    out = tmp_path / "out"
    proc = run_cli(nemo_subnet("run", "--factory", "tiny", f"config.out_dir={out}", f"config.hf_model={path}",
                               "config.data.max_bytes=60000", "config.search.evaluations=4",
                               "config.student_train.steps=3", "config.student_train.eval_every=3"), tmp_path, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert_complete(out, STAGES)
    dataset = json.loads((out / "data" / "dataset.json").read_text())
    assert dataset["vocab_size"] == TOKENIZER_TOKENS and dataset["tokenizer"]["source"] == str(path)
    teacher = (out / "teacher" / "model" / "model.yaml").read_text()
    assert "vocab_size: 297" in teacher and "tie_embeddings: true" in teacher
    exported = json.loads((out / "export" / "student_hf" / "config.json").read_text())
    assert exported["model_type"] == "llama" and exported["vocab_size"] == TOKENIZER_TOKENS
    assert (out / "export" / "generation.txt").read_text().startswith("def ")
    completions = json.loads((out / "export" / "completions.json").read_text())
    assert list(completions) == ["teacher", "sub-network before training", "KD student", "random-init student"]
    assert all(text.startswith("def ") for text in completions.values())
    export = json.loads((out / ".stages" / "export.done.json").read_text())["summary"]
    report = (out / "report" / "report.md").read_text()
    assert f"| teacher | {export['teacher_test_ppl']:,.2f} |" in report and "## Completions" in report

    # the teacher is measured on the students' own yardstick: the same evaluation of the extracted student
    # gives the KD run's step-0 (init) validation perplexity
    from nemo_subnet import config as configs
    from nemo_subnet.pipeline.evaluate_model import evaluate_model
    from nemo_subnet.training.config import TrainConfig
    from nemo_subnet.training.metrics import read_metrics

    run = configs.load(TrainConfig, out / "configs" / "distill.yaml")
    init = read_metrics(out / "distill", "valid")[0]
    assert init["tokens"] == 0
    assert evaluate_model(out / "extract", run)["valid_ppl"] == pytest.approx(init["valid_ppl"], rel=1e-4)

