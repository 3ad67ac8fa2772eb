"""The optional search / test splits and views: disjoint documents, the old split unchanged, clear errors."""

from __future__ import annotations

import json

import pytest
from corpora import prepare, write_corpus
from test_data_prepare import read_split
from token_pieces import as_text, eod_pieces

from nemo_subnet.cli import UserError
from nemo_subnet.data.prepare import _split_documents
from nemo_subnet.data import GPTDataConfig, build_gpt_datasets, make_view, read_metadata

SEQ = 32


@pytest.fixture(scope="module")
def four_splits(tmp_path_factory, documents):
    root = tmp_path_factory.mktemp("splits")
    source = write_corpus(root / "corpus", "jsonl", documents)
    return prepare([source], root / "out", valid_fraction=0.15, search_fraction=0.15, test_fraction=0.15)


def test_four_splits_partition_the_documents(four_splits, documents):
    meta = read_metadata(four_splits.out)
    assert list(meta["splits"]) == ["train", "valid", "search", "test"]
    counts = {split: meta["splits"][split]["documents"] for split in meta["splits"]}
    assert counts == {"train": 22, "valid": 6, "search": 6, "test": 6} and sum(counts.values()) == len(documents)
    rows = {split: {tuple(r) for r in read_split(four_splits.out, split)} for split in meta["splits"]}
    for a in rows:
        for b in rows:
            assert a == b or not rows[a] & rows[b], f"{a} and {b} share a document"
    # without search / test splits a corpus is split exactly as before (valid first in the permutation)
    three = _split_documents(40, {"valid": 0.15, "search": 0.15, "test": 0.15}, seed=1234)
    assert _split_documents(40, {"valid": 0.15}, seed=1234)["valid"] == three["valid"]
    assert sorted(sum(three.values(), [])) == list(range(40))


def test_test_split_dataset_and_view(four_splits, tmp_path):
    cfg = GPTDataConfig(data_dir=four_splits.out, seq_length=SEQ)
    built = build_gpt_datasets(cfg, train_samples=10, valid_samples=4, test_samples=4)
    assert built.test is not None and len(built.test) >= 4
    assert build_gpt_datasets(cfg, train_samples=10).test is None

    view = make_view(four_splits.out, four_splits.out / "search_view", train="search", valid="search")
    meta = json.loads((view / "dataset.json").read_text())
    assert meta["roles"] == {"train": "search", "valid": "search"}
    through_view = build_gpt_datasets(GPTDataConfig(data_dir=view, seq_length=SEQ), train_samples=4)
    search_docs = read_split(four_splits.out, "search")
    assert len(through_view.valid) > 0 and len(through_view.train) > 0
    for dataset in (through_view.train, through_view.valid):  # every sample is made of search documents only
        for i in range(len(dataset)):
            assert pieces_of(dataset[i]["tokens"].tolist(), search_docs, meta["eod"])


def pieces_of(window: list[int], docs: list[list[int]], eod: int) -> bool:
    """Every EOD-free piece of ``window`` is a contiguous run of one of ``docs``."""
    texts = [as_text(doc) for doc in docs]
    return all(any(as_text(p) in t for t in texts) for p in eod_pieces(window, eod) if p)


def test_split_errors(four_splits, tmp_path, documents):
    source = write_corpus(tmp_path / "corpus", "jsonl", documents)
    with pytest.raises(UserError, match=r"sum to less than 1"):
        prepare([source], tmp_path / "a", valid_fraction=0.5, search_fraction=0.3, test_fraction=0.2)
    with pytest.raises(UserError, match=r"search_fraction: -0.1 is out of range; allowed: >= 0 and < 1"):
        prepare([source], tmp_path / "b", search_fraction=-0.1)
    plain = prepare([source], tmp_path / "plain", valid_fraction=0.2)
    with pytest.raises(UserError, match=r"no 'test' split .*--test-fraction > 0"):
        build_gpt_datasets(GPTDataConfig(data_dir=plain.out, seq_length=SEQ), train_samples=4, test_samples=4)
    with pytest.raises(UserError, match=r"no 'search' split"):
        make_view(plain.out, tmp_path / "view", train="search", valid="search")
    assert not (tmp_path / "view").exists()
