"""The recipe from an HF model shaped like a real Pythia checkpoint: GPT-NeoX whose embedding has 50304 rows
while its tokenizer has ~50k tokens (Pythia: 50304 vs 50277). Every stage runs, distillation and export
included: a model vocabulary larger than the tokenizer is normal (unused rows), not a mismatch."""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from recipe_utils import assert_complete, nemo_subnet, run_cli  # noqa: E402

MODEL_VOCAB = 50304
TOKENIZER_VOCAB = 50277
STAGES = ("data", "teacher", "importance", "search", "extract", "distill", "baseline", "export", "report")


def _stdlib_text(max_bytes: int):
    total = 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        text = path.read_text(errors="ignore")
        total += len(text)
        yield text
        if total >= max_bytes:
            return


def _pythia_shaped_hf(out: Path) -> int:
    """A tiny GPT-NeoX with Pythia's embedding rows and a byte-level BPE of Pythia's size; its token count."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from nemo_subnet.models.tiny_hf import make_hf_model

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_stdlib_text(12_000_000), trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    make_hf_model("gpt_neox", seed=0, vocab_size=MODEL_VOCAB, num_hidden_layers=2).save_pretrained(out)
    hf_tok.save_pretrained(out)
    return len(hf_tok)


@pytest.mark.slow
@pytest.mark.extended  # ~2.5 min (a 50304-row vocabulary through every stage); CI runs the GGUF recipe and the
# conversion tests' 1001-row models with 297-token tokenizers
def test_recipe_runs_from_a_pythia_shaped_checkpoint(tmp_path):
    hf, out = tmp_path / "pythia_like", tmp_path / "out"
    n_tokens = _pythia_shaped_hf(hf)
    assert 50_000 <= n_tokens < MODEL_VOCAB, n_tokens
    proc = run_cli(nemo_subnet("run", "--factory", "tiny", f"config.out_dir={out}", f"config.hf_model={hf}",
                               # the tiny width makes the 50304-row embeddings most of the model: a budget it can meet
                               "config.search.budget.target=0.5", "config.student_train.schedule.train_steps=3",
                               "config.search.evaluations=4"), tmp_path, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert_complete(out, STAGES)
    exported = json.loads((out / "export" / "student_hf" / "config.json").read_text())
    assert exported["model_type"] == "gpt_neox" and exported["vocab_size"] == MODEL_VOCAB
    for run in ("distill", "baseline"):
        rows = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        assert any(r["kind"] == "train" for r in rows), run
