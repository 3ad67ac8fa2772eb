"""GPTDatasets over a prepared directory: shifted samples, determinism, resumable DP micro-batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from corpora import prepare, write_corpus

from nemo_subnet.cli import UserError
from nemo_subnet.data import GPTDataConfig, MicroBatchIterator, build_gpt_datasets

SEQ = 32


def build(prepared, seq_length=SEQ, train_samples=200, valid_samples=None, **config):
    return build_gpt_datasets(GPTDataConfig(data_dir=prepared.out, seq_length=seq_length, **config), train_samples, valid_samples)


def test_samples_are_shifted_windows_of_the_document_stream(prepared_jsonl):
    data = build(prepared_jsonl, create_attention_mask=True)
    train = data.train
    assert len(train) >= 200 and len(data.valid) >= 1
    # the token stream megatron cuts samples from: documents in its (shuffled, multi-epoch) order
    stream = np.concatenate([train.dataset[int(d)] for d in train.document_index])
    starts = np.concatenate([[0], np.cumsum([len(train.dataset[int(d)]) for d in train.document_index])])
    for i in (0, 1, 17, len(train) - 1):
        sample = train[i]
        assert set(sample) == {"tokens", "labels", "loss_mask", "position_ids", "attention_mask"}
        assert sample["tokens"].shape == sample["labels"].shape == (SEQ,)
        torch.testing.assert_close(sample["labels"][:-1], sample["tokens"][1:], rtol=0, atol=0)
        torch.testing.assert_close(sample["position_ids"], torch.arange(SEQ), rtol=0, atol=0)
        assert sample["loss_mask"].sum() == SEQ and sample["attention_mask"].shape == (1, SEQ, SEQ)
        doc_pos, offset = train.sample_index[train.shuffle_index[i]]
        begin = starts[doc_pos] + offset
        window = torch.from_numpy(stream[begin:begin + SEQ + 1].astype(np.int64))
        torch.testing.assert_close(torch.cat([sample["tokens"], sample["labels"][-1:]]), window, rtol=0, atol=0)
    eod = data.metadata["eod"]
    assert any((train[i]["tokens"] == eod).any() for i in range(len(train)))  # documents are EOD-separated


def test_same_seed_same_samples(prepared_jsonl, tmp_path):
    a = build(prepared_jsonl, seed=5)
    b = build(prepared_jsonl, seed=5, cache_dir=tmp_path / "other_cache")  # rebuilt, not read from a's cache
    c = build(prepared_jsonl, seed=6)
    for i in range(10):
        torch.testing.assert_close(a.train[i]["tokens"], b.train[i]["tokens"], rtol=0, atol=0)
    assert any(not torch.equal(a.train[i]["tokens"], c.train[i]["tokens"]) for i in range(10))
    assert any((tmp_path / "other_cache").iterdir())


def take(iterator, n):
    return [next(iterator)["tokens"] for _ in range(n)]


def test_micro_batches_partition_the_stream_across_ranks(prepared_jsonl):
    train = build(prepared_jsonl).train
    ranks = [MicroBatchIterator(train, 3, dp_rank=r, dp_size=2) for r in range(2)]
    steps = [[next(it)["tokens"] for it in ranks] for _ in range(5)]
    for k, (rank0, rank1) in enumerate(steps):
        expected = torch.stack([train[i]["tokens"] for i in range(6 * k, 6 * k + 6)])
        torch.testing.assert_close(torch.cat([rank0, rank1]), expected, rtol=0, atol=0)
    assert ranks[0].consumed_samples == ranks[1].consumed_samples == 30


def test_resume_continues_exactly(prepared_jsonl):
    train = build(prepared_jsonl).train
    full = take(MicroBatchIterator(train, 2, dp_rank=1, dp_size=2), 9)
    first = MicroBatchIterator(train, 2, dp_rank=1, dp_size=2)
    take(first, 4)
    state = first.state_dict()
    assert state == {"consumed_samples": 16}
    resumed = MicroBatchIterator(train, 2, dp_rank=1, dp_size=2, consumed_samples=state["consumed_samples"])
    for a, b in zip(full[4:], take(resumed, 5)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a rebuilt dataset (new process after a restart) continues the same way
    rebuilt = MicroBatchIterator(build(prepared_jsonl).train, 2, dp_rank=1, dp_size=2)
    rebuilt.load_state_dict(state)
    torch.testing.assert_close(next(rebuilt)["tokens"], full[4], rtol=0, atol=0)


def test_iterator_stops_when_the_dataset_is_used_up(prepared_jsonl):
    valid = build(prepared_jsonl).valid
    batches = list(MicroBatchIterator(valid, 1))
    assert len(batches) == len(valid)


def test_seq_length_over_position_limit(prepared_jsonl):
    with pytest.raises(UserError, match="longer than the model's position limit 16"):
        build(prepared_jsonl, max_position=16)


def test_split_too_small_for_seq_length(prepared_jsonl):
    valid_tokens = prepared_jsonl.splits["valid"].tokens
    with pytest.raises(UserError, match=f"the valid split has {valid_tokens} tokens"):
        build(prepared_jsonl, seq_length=valid_tokens + 10)


def test_vocab_mismatch(prepared_jsonl):
    with pytest.raises(UserError, match=r"vocab mismatch: the data's tokenizer has 400 tokens but the model's vocabulary has 300"):
        build(prepared_jsonl, model_vocab_size=300)
    build(prepared_jsonl, model_vocab_size=512)  # a padded embedding is fine


def test_hf_tokenizer_dir(prepared_jsonl):
    from transformers import AutoTokenizer

    from nemo_subnet.data import hf_tokenizer_dir

    path = hf_tokenizer_dir(prepared_jsonl.out)
    assert path == prepared_jsonl.out / "tokenizer"
    assert AutoTokenizer.from_pretrained(str(path), local_files_only=True).eos_token_id == prepared_jsonl.eod


def test_not_a_prepared_dir(tmp_path):
    with pytest.raises(UserError, match="not a prepared dataset"):
        build_gpt_datasets(GPTDataConfig(data_dir=tmp_path, seq_length=SEQ), 10)


def test_bad_iterator_arguments(prepared_jsonl):
    train = build(prepared_jsonl).train
    with pytest.raises(UserError, match="dp_rank 2"):
        MicroBatchIterator(train, 1, dp_rank=2, dp_size=2)
    with pytest.raises(UserError, match="consumed_samples"):
        MicroBatchIterator(train, 1, consumed_samples=len(train) + 1)


@pytest.mark.distributed
def test_two_ranks_build_on_rank0_first_and_split_the_stream(prepared_jsonl, tmp_path):
    """With a gloo process group, megatron builds the index cache on rank 0 first; every rank sees the same data."""
    import json
    from pathlib import Path

    from torchrun_utils import run_torchrun

    worker = Path(__file__).with_name("data_dist_worker.py")
    run_torchrun(str(worker), 2, str(prepared_jsonl.out), str(tmp_path / "cache"), str(tmp_path), timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["len"] == ranks[1]["len"] and ranks[0]["first"] == ranks[1]["first"]
    train = build(prepared_jsonl, train_samples=100, cache_dir=tmp_path / "cache").train  # reads rank 0's cache
    assert train[0]["tokens"].tolist() == ranks[0]["first"]
    for step in range(3):
        both = ranks[0]["batches"][step] + ranks[1]["batches"][step]
        assert both == [train[i]["tokens"].tolist() for i in range(4 * step, 4 * step + 4)]


def test_eval_seed_fixes_the_evaluation_samples_across_data_orders(tmp_path, documents):
    """Training order follows seed; valid and test follow eval_seed, so runs of different seeds are measured on
    the same samples (without it, valid and test are reshuffled by the seed too)."""
    prepared = prepare([write_corpus(tmp_path / "corpus", "jsonl", documents)], tmp_path / "out", valid_fraction=0.2,
                       test_fraction=0.2)

    def datasets(seed, eval_seed):
        return build_gpt_datasets(GPTDataConfig(data_dir=prepared.out, seq_length=SEQ, seed=seed,
                                                eval_seed=eval_seed), 200, 4, 4)

    a, b, same_seed = datasets(5, 99), datasets(6, 99), datasets(5, None)
    assert any(not torch.equal(a.train[i]["tokens"], b.train[i]["tokens"]) for i in range(10))
    for split in ("valid", "test"):
        for i in range(4):
            torch.testing.assert_close(getattr(a, split)[i]["tokens"], getattr(b, split)[i]["tokens"], rtol=0, atol=0)
    for i in range(10):  # the training order is the seed's alone
        torch.testing.assert_close(a.train[i]["tokens"], same_seed.train[i]["tokens"], rtol=0, atol=0)
    reshuffled = [datasets(seed, None).valid for seed in (5, 6)]
    assert any(not torch.equal(reshuffled[0][i]["tokens"], reshuffled[1][i]["tokens"]) for i in range(4))
