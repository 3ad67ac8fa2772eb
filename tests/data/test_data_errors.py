"""Every bad input to preparation is one clear UserError, and no output (nor temporary) is left behind."""

from __future__ import annotations

import json

import pytest
from corpora import prepare, write_corpus

from nemo_subnet.cli import UserError, main


def assert_fails_cleanly(tmp_path, match, inputs, **overrides):
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError, match=match):
        prepare(inputs, tmp_path / "out", **overrides)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no out/, no .out.tmp-*


def test_missing_path(tmp_path):
    assert_fails_cleanly(tmp_path, "input path does not exist: .*nope.jsonl", [tmp_path / "nope.jsonl"])


def test_empty_corpus(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("  \n\n")
    (tmp_path / "c" / "b.txt").write_text("")
    assert_fails_cleanly(tmp_path, "empty corpus: no non-empty documents in 2 text files", [tmp_path / "c"])
    (tmp_path / "e.jsonl").write_text("")
    assert_fails_cleanly(tmp_path, "empty corpus", [tmp_path / "e.jsonl"])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "e.parquet")
    assert_fails_cleanly(tmp_path, "empty corpus", [tmp_path / "e.parquet"])
    (tmp_path / "w.jsonl").write_text('{"text": "  "}\n{"text": ""}\n')
    assert_fails_cleanly(tmp_path, "empty corpus", [tmp_path / "w.jsonl"])


def test_single_document(tmp_path):
    (tmp_path / "a.txt").write_text("only one document\n")
    assert_fails_cleanly(tmp_path, "at least 2", [tmp_path / "a.txt"])


def test_unknown_format(tmp_path):
    (tmp_path / "data.csv").write_text("text\nhello\n")
    assert_fails_cleanly(tmp_path, r"unknown input format \.csv .* allowed are .*\.jsonl", [tmp_path / "data.csv"])
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.csv").write_text("a")
    assert_fails_cleanly(tmp_path, "holds no files of a known format", [tmp_path / "d"])


def test_mixed_formats(tmp_path, documents):
    write_corpus(tmp_path / "c", "jsonl", documents)
    write_corpus(tmp_path / "c", "txt", documents[:3])
    assert_fails_cleanly(tmp_path, "mix formats", [tmp_path / "c"])


def test_text_key_missing(tmp_path, documents):
    source = write_corpus(tmp_path / "c", "jsonl", documents)
    assert_fails_cleanly(tmp_path, r"text key 'body' not found .* columns are \['text', 'id'\]", [source], text_key="body")
    source = write_corpus(tmp_path / "p", "parquet", documents)
    assert_fails_cleanly(tmp_path, "text key 'body' not found", [source], text_key="body")


def test_text_key_not_text(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": i}) + "\n" for i in range(5)))
    assert_fails_cleanly(tmp_path, "not text", [path])


def test_malformed_json(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n')
    assert_fails_cleanly(tmp_path, "could not read .*c.jsonl as json", [path])


def test_vocab_size_too_small(tmp_path, documents):
    source = write_corpus(tmp_path / "c", "jsonl", documents)
    assert_fails_cleanly(tmp_path, "--vocab-size 100 is too small: .* at least 261", [source], vocab_size=100)
    # above the floor but below what this corpus's characters need: sentencepiece's own message, as a UserError
    assert_fails_cleanly(tmp_path, "--vocab-size 262 does not fit this corpus", [source], vocab_size=262)


def test_vocab_size_too_large_for_corpus(tmp_path, documents):
    source = write_corpus(tmp_path / "c", "jsonl", documents[:3])
    assert_fails_cleanly(tmp_path, "--vocab-size 50000 does not fit this corpus", [source], vocab_size=50000)


def test_tokenizer_choice(tmp_path, documents):
    source = write_corpus(tmp_path / "c", "jsonl", documents)
    assert_fails_cleanly(tmp_path, "give one of tokenizer, sentencepiece, train_tokenizer, not sentencepiece and "
                         "train_tokenizer", [source], train_tokenizer="sentencepiece", vocab_size=400,
                         sentencepiece="x.model")
    assert_fails_cleanly(tmp_path, "vocab_size: required with train_tokenizer", [source],
                         train_tokenizer="sentencepiece", vocab_size=None)
    assert_fails_cleanly(tmp_path, "needs out and one of tokenizer, sentencepiece, train_tokenizer", [source],
                         train_tokenizer=None, vocab_size=None)
    assert_fails_cleanly(tmp_path, "is not a directory", [source], tokenizer=str(tmp_path / "none"))
    assert_fails_cleanly(tmp_path, "does not exist", [source], sentencepiece=str(tmp_path / "none.model"))
    (tmp_path / "bad.model").write_bytes(b"not a model")
    assert_fails_cleanly(tmp_path, "is not a sentencepiece model", [source], sentencepiece=str(tmp_path / "bad.model"))


def test_bad_fractions_and_limits(tmp_path, documents):
    source = write_corpus(tmp_path / "c", "jsonl", documents)
    assert_fails_cleanly(tmp_path, r"valid_fraction: 1.0 is out of range; allowed: > 0 and < 1", [source],
                         valid_fraction=1.0)
    assert_fails_cleanly(tmp_path, "max_docs: 0 is out of range; allowed: >= 1", [source], max_docs=0)


def test_failure_after_output_started_leaves_nothing(tmp_path, documents, monkeypatch):
    """A crash mid-tokenization (here: in the writer) removes the partly written temporary directory."""
    import nemo_subnet.data.prepare as prepare_module

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    source = write_corpus(tmp_path / "c", "jsonl", documents)
    monkeypatch.setattr(prepare_module, "_publish", explode)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="disk full"):
        prepare([source], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_prepare_and_error(tmp_path, documents, capsys):
    source = write_corpus(tmp_path / "c", "txt", documents)
    out = tmp_path / "out"
    code = main(["data", "prepare", "--input", str(source), "--out", str(out), "--train-tokenizer", "sentencepiece",
                 "--vocab-size", "400", "--valid-fraction", "0.1", "--no-progress"])
    assert code == 0
    assert "train 36 docs" in capsys.readouterr().out
    assert json.loads((out / "dataset.json").read_text())["splits"]["valid"]["documents"] == 4

    code = main(["data", "prepare", "--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o2"),
                 "--train-tokenizer", "sentencepiece", "--vocab-size", "400"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "input path does not exist" in err
    assert not (tmp_path / "o2").exists()


def test_hub_name_without_network(tmp_path, monkeypatch):
    """A name that is no local path goes to the hub; unreachable (offline here), it is one clear error."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying DNS
    assert_fails_cleanly(tmp_path, "'someone/corpus' is not a local path, and loading it as a hub dataset failed", ["someone/corpus"])
