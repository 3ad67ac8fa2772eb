"""Small corpora in every input format and a quiet ``prepare``, imported by name: a test module cannot import
them from ``conftest``, a name pytest gives every test directory's conftest in turn."""

from __future__ import annotations

import json
from pathlib import Path

from nemo_subnet.data.corpus import stdlib_files
from nemo_subnet.data.prepare import PrepareConfig, prepare_dataset

VOCAB = 400  # small: trains in well under a second, still learns merges


def make_documents(n: int = 40, lines: int = 30) -> list[str]:
    """``n`` documents of real-looking text: consecutive slices of stdlib source, plus odd characters."""
    source = "".join(path.read_text(encoding="utf-8") for path in stdlib_files()[:40]).splitlines(keepends=True)
    docs = ["".join(source[i * lines:(i + 1) * lines]) for i in range(n)]
    docs[1] += "unicode: é ☃ 😀 ﬁ and a literal </s> <s> <unk> <0x41>\n"
    return docs


def write_corpus(directory: Path, fmt: str, docs: list[str], text_key: str = "text") -> Path:
    """``docs`` written in ``fmt`` (txt: one file per document) under ``directory``; returns the --input path."""
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "txt":
        for i, doc in enumerate(docs):
            (directory / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
        return directory
    if fmt == "jsonl":
        path = directory / "corpus.jsonl"
        path.write_text("".join(json.dumps({text_key: doc, "id": i}) + "\n" for i, doc in enumerate(docs)))
        return path
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = directory / "corpus.parquet"
        pq.write_table(pa.table({text_key: docs, "id": list(range(len(docs)))}), path)
        return path
    raise ValueError(fmt)


def prepare(inputs, out: Path, **overrides):
    """prepare_dataset with a trained sentencepiece tokenizer unless a tokenizer is given; no progress bar."""
    if not any(k in overrides for k in ("tokenizer", "sentencepiece", "train_tokenizer")):
        overrides.setdefault("train_tokenizer", "sentencepiece")
        overrides.setdefault("vocab_size", VOCAB)
    overrides.setdefault("progress", False)
    return prepare_dataset(PrepareConfig(inputs=[str(i) for i in inputs], out=out, **overrides))
