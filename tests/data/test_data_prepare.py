"""prepare_dataset: every input format, round trip through the .bin files, split, EOD, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from corpora import VOCAB, prepare, write_corpus

from nemo_subnet.data.prepare import read_metadata, split_prefix
from nemo_subnet.data.tokenizer import SentencePieceTokenizer


def read_split(out: Path, split: str) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(str(out / split_prefix(split)))
    return [dataset[i].tolist() for i in range(len(dataset))]


def check_round_trip(prepared, docs: list[str]) -> None:
    """Every document comes back from the .bin files as its tokens + EOD, once, in exactly one split."""
    out, meta = prepared.out, read_metadata(prepared.out)
    sp = SentencePieceTokenizer((out / "tokenizer" / "tokenizer.model").read_bytes(), source="test", trained=False)
    expected = {tuple(ids + [meta["eod"]]) for ids in sp.encode(docs)}
    seen = []
    for split in ("train", "valid"):
        rows = read_split(out, split)
        assert len(rows) == meta["splits"][split]["documents"]
        assert sum(map(len, rows)) == meta["splits"][split]["tokens"]
        for row in rows:
            assert row[-1] == meta["eod"] and meta["eod"] not in row[:-1]  # one EOD, at the end
        seen.extend(tuple(row) for row in rows)
    assert len(seen) == len(docs) and set(seen) == expected
    assert sp.decode(list(seen[0][:-1])) in docs


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "parquet"])
def test_each_format_round_trips(tmp_path, documents, fmt):
    source = write_corpus(tmp_path / "corpus", fmt, documents)
    prepared = prepare([source], tmp_path / "out")
    check_round_trip(prepared, documents)
    meta = read_metadata(prepared.out)
    assert meta["source"]["kind"] == {"txt": "text", "jsonl": "json", "parquet": "parquet"}[fmt]
    assert meta["vocab_size"] == VOCAB and meta["dtype"] == "uint16"
    # 5% of 40 documents
    assert (meta["splits"]["train"]["documents"], meta["splits"]["valid"]["documents"]) == (38, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]  # no temporary left behind


def test_txt_per_line_and_text_key(tmp_path, documents):
    lines = [line for doc in documents[:10] for line in doc.splitlines() if line.strip()]
    (tmp_path / "lines").mkdir()
    (tmp_path / "lines" / "a.txt").write_text("\n".join(lines) + "\n\n\n")
    prepared = prepare([tmp_path / "lines"], tmp_path / "out", txt_per_line=True)
    check_round_trip(prepared, lines)  # blank lines dropped

    source = write_corpus(tmp_path / "keyed", "jsonl", documents, text_key="content")
    prepared = prepare([source], tmp_path / "out2", text_key="content")
    check_round_trip(prepared, documents)


def test_stdlib_corpus_with_limits(tmp_path):
    from nemo_subnet.data.corpus import stdlib_files

    prepared = prepare(["stdlib"], tmp_path / "out", max_docs=12, valid_fraction=0.25)
    meta = read_metadata(prepared.out)
    assert meta["source"]["kind"] == "stdlib"
    assert meta["splits"]["train"]["documents"] + meta["splits"]["valid"]["documents"] == 12
    assert meta["splits"]["valid"]["documents"] == 3
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_files()]
    check_round_trip(prepared, [t for t in texts if t.strip()][:12])
    assert all("site-packages" not in p.parts and "test" not in p.parts for p in stdlib_files())

    small = prepare(["stdlib"], tmp_path / "small", max_bytes=20_000)
    total = sum(read_metadata(small.out)["splits"][s]["documents"] for s in ("train", "valid"))
    assert 2 <= total < 12


def test_valid_split_is_seeded(tmp_path, documents):
    source = write_corpus(tmp_path / "corpus", "jsonl", documents)
    a = read_split(prepare([source], tmp_path / "a", seed=1).out, "valid")
    b = read_split(prepare([source], tmp_path / "b", seed=2).out, "valid")
    assert a != b


def test_two_runs_are_byte_identical(tmp_path, documents):
    source = write_corpus(tmp_path / "corpus", "parquet", documents)
    a, b = prepare([source], tmp_path / "a").out, prepare([source], tmp_path / "b").out
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert [str(f) for f in files] == sorted(
        ["dataset.json", "train_text_document.bin", "train_text_document.idx", "valid_text_document.bin",
         "valid_text_document.idx", "tokenizer/tokenizer.model", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"]
    )
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_trained_tokenizer_has_an_identical_hf_twin(tmp_path, documents):
    from transformers import AutoTokenizer

    prepared = prepare(["stdlib"], tmp_path / "out", max_docs=30, vocab_size=1000)
    sp = SentencePieceTokenizer((prepared.out / "tokenizer" / "tokenizer.model").read_bytes(), source="t", trained=False)
    hf = AutoTokenizer.from_pretrained(str(prepared.out / "tokenizer"), local_files_only=True)
    texts = documents + ["", " ", "  lead and trail  ", "\t\r\n\n x", "😀 </s><s> <0x41> ﬁ Ａ ①", "x" * 3000]
    assert hf(texts, add_special_tokens=False)["input_ids"] == sp.encode(texts)
    assert [hf.decode(ids) for ids in sp.encode(texts)] == texts  # byte fallback: lossless
    assert hf.eos_token_id == prepared.eod == sp.eod


def test_sentencepiece_file_gives_the_same_data(tmp_path, documents):
    """--sentencepiece with the model a trained run saved reproduces that run's .bin files."""
    source = write_corpus(tmp_path / "corpus", "jsonl", documents)
    trained = prepare([source], tmp_path / "trained").out
    loaded = prepare([source], tmp_path / "loaded", sentencepiece=str(trained / "tokenizer" / "tokenizer.model")).out
    for split in ("train", "valid"):
        assert (trained / f"{split_prefix(split)}.bin").read_bytes() == (loaded / f"{split_prefix(split)}.bin").read_bytes()
    meta = read_metadata(loaded)
    assert meta["tokenizer"]["kind"] == "sentencepiece" and not meta["tokenizer"]["trained"]
    assert meta["tokenizer"]["hf_tokenizer"]


def make_hf_tokenizer(directory: Path, docs: list[str]) -> Path:
    """A byte-level BPE Hugging Face tokenizer trained locally with `tokenizers` (never downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(docs, trainer)
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>").save_pretrained(str(directory))
    return directory


def test_hf_tokenizer(tmp_path, documents):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoTokenizer

    tok_dir = make_hf_tokenizer(tmp_path / "hf_tok", documents)
    source = write_corpus(tmp_path / "corpus", "txt", documents)
    prepared = prepare([source], tmp_path / "out", tokenizer=str(tok_dir))
    meta = read_metadata(prepared.out)
    hf = AutoTokenizer.from_pretrained(str(prepared.out / "tokenizer"), local_files_only=True)
    assert meta["tokenizer"]["kind"] == "hf" and meta["eod"] == hf.eos_token_id == 0 and meta["vocab_size"] == len(hf)
    expected = {tuple(ids + [hf.eos_token_id]) for ids in hf(documents, add_special_tokens=False)["input_ids"]}
    rows = set()
    for split in ("train", "valid"):
        dataset = IndexedDataset(str(prepared.out / split_prefix(split)))
        rows |= {tuple(dataset[i].tolist()) for i in range(len(dataset))}
    assert rows == expected


def test_overwrite_replaces_atomically(tmp_path, documents):
    from nemo_subnet.cli import UserError

    source = write_corpus(tmp_path / "corpus", "jsonl", documents)
    out = prepare([source], tmp_path / "out").out
    with pytest.raises(UserError, match="already exists"):
        prepare([source], out)
    prepare([source], out, overwrite=True, seed=7)
    assert json.loads((out / "dataset.json").read_text())["seed"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "out"]


def test_foreign_sentencepiece_without_hf_twin(tmp_path, documents):
    """A sentencepiece model with default settings (NFKC, dummy prefix) is used as is, without an HF twin."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(documents), model_writer=model, vocab_size=300,
                                   model_type="unigram", minloglevel=2, num_threads=1)
    (tmp_path / "foreign.model").write_bytes(model.getvalue())
    source = write_corpus(tmp_path / "corpus", "jsonl", documents)
    prepared = prepare([source], tmp_path / "out", sentencepiece=str(tmp_path / "foreign.model"))
    meta = read_metadata(prepared.out)
    assert meta["tokenizer"]["hf_tokenizer"] is False
    assert sorted(p.name for p in (prepared.out / "tokenizer").iterdir()) == ["tokenizer.model"]
    rows = read_split(prepared.out, "train") + read_split(prepared.out, "valid")
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    assert {tuple(r) for r in rows} == {tuple(ids + [sp.eos_id()]) for ids in sp.encode(documents)}


def test_token_dtype():
    from nemo_subnet.data.prepare import token_dtype

    assert token_dtype(400) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.int32 and token_dtype(151_936) == np.int32
