"""Prepared directories shared by the data tests."""

from __future__ import annotations

import pytest
from corpora import make_documents, prepare, write_corpus


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return make_documents()


@pytest.fixture(scope="session")
def prepared_jsonl(tmp_path_factory, documents):
    """A prepared directory from a jsonl corpus, shared read-only by the GPTDataset tests."""
    root = tmp_path_factory.mktemp("prepared")
    source = write_corpus(root / "corpus", "jsonl", documents)
    return prepare([source], root / "out", valid_fraction=0.2)
