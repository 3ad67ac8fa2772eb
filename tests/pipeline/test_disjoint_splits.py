"""Search, validation and test batches never overlap, checked on token ids through the pipeline's own wiring.

The ``data`` stage runs for real (``nemo-subnet data prepare`` + the search view). The importance, search and
training stages run with their command captured instead of executed: their argv goes through the real
``nemo-subnet`` parser (importance, search) or the run YAML through ``TrainConfig`` (distill, baseline), and
the batches are drawn by the functions those commands use (distill writes the same data section as baseline) (``load_batches`` with the split each command reads;
the training loop's dataset builder and iterator). Every drawn sequence is traced back to documents: each of
its EOD-free pieces (>= MIN_PIECE tokens) must occur in its own split's documents and in no other split's.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from token_pieces import as_text, eod_pieces

from nemo_subnet.pipeline import run_pipeline
from nemo_subnet import config as configs
from nemo_subnet.pipeline.config import PipelineConfig
from nemo_subnet.pipeline.runner import StageContext
from nemo_subnet.pipeline.stages import build_stages

SEQ = 64
MIN_PIECE = 24  # shorter runs of tokens (an import line, a docstring quote) legitimately recur across documents


class _Captured(Exception):
    pass


def _config(out) -> PipelineConfig:
    return configs.updated(PipelineConfig(), {
        "out_dir": str(out), "data.vocab_size": 512, "data.max_bytes": 600_000, "teacher_train.data.seq_length": SEQ,
        "student_train.data.seq_length": SEQ, "student_train.logging.eval_iters": 4, "student_train.logging.test_iters": 4,
        "importance.batches": 4, "importance.seq_length": SEQ, "search.eval.batches": 4, "search.eval.seq_length": SEQ})


def _stage_config(cls, argv: list[str]):
    """The config a stage handed its command (``--config FILE``)."""
    return configs.load(cls, argv[argv.index("--config") + 1])


def _capture(config: PipelineConfig, stage_name: str) -> list[str]:
    """The ``nemo-subnet`` argv the stage would run (the first one), without running it."""
    stages = build_stages()
    seen: list[list[str]] = []

    def cli(self, *args):
        seen.append([str(a) for a in args])
        raise _Captured

    ctx = StageContext(config=config, stage=stages[stage_name], out=Path(config.out_dir))
    ctx.cli = types.MethodType(cli, ctx)
    with pytest.raises(_Captured):
        stages[stage_name].run(ctx)
    return seen[0]


def _split_docs(data_dir) -> dict[str, list[str]]:
    """Per split: each document's token ids as a ' 1 2 3 ' string (for substring search)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from nemo_subnet.data import read_metadata, split_path

    meta = read_metadata(data_dir)
    docs = {}
    for split in meta["splits"]:
        dataset = IndexedDataset(str(split_path(data_dir, meta, split)))
        docs[split] = [as_text(dataset[i].tolist()) for i in range(len(dataset))]
    return docs, meta["eod"]


def _sequences(batches) -> list[list[int]]:
    """Each sample as its s + 1 tokens (tokens and the last label)."""
    return [row_t.tolist() + [row_l[-1].item()] for b in batches for row_t, row_l in zip(b["tokens"], b["labels"])]


def _splits_of(sequence: list[int], docs: dict[str, list[str]], eod: int) -> set[str]:
    """The splits whose documents contain the sequence's long EOD-free pieces (a piece in two splits: both)."""
    found = set()
    for piece in (p for p in eod_pieces(sequence, eod) if len(p) >= MIN_PIECE):
        text = as_text(piece)
        found |= {split for split, texts in docs.items() if any(text in t for t in texts)}
    return found


def _train_batches(run_yaml) -> dict[str, list]:
    """The valid and test batches the training loop evaluates for this run YAML (its own builder and iterator)."""
    from nemo_subnet.data import MicroBatchIterator, build_gpt_datasets
    from nemo_subnet.models.config import ModelConfig
    from nemo_subnet.training.config import TrainConfig
    from nemo_subnet.training.loop import _data_config

    config = TrainConfig.load(run_yaml)
    model = ModelConfig.load(config.init.random) if config.init.random else None
    data, log = config.data, config.logging
    built = build_gpt_datasets(_data_config(config, model), config.schedule.train_steps * data.global_batch_size,
                               log.eval_iters * data.micro_batch_size, log.test_iters * data.micro_batch_size)
    out = {}
    for name, dataset, iters in (("valid", built.valid, log.eval_iters), ("test", built.test, log.test_iters)):
        iterator = MicroBatchIterator(dataset, data.micro_batch_size)
        out[name] = [next(iterator) for _ in range(iters)]
    assert log.eval_at_start and log.test_iters > 0
    return out


def test_search_validation_and_test_batches_never_overlap(tmp_path):
    from nemo_subnet.importance.collect import ImportanceConfig
    from nemo_subnet.importance.evaluation import load_batches
    from nemo_subnet.runtime import runtime_scope
    from nemo_subnet.search.runner import SearchConfig

    config = _config(tmp_path / "out")
    run_pipeline(config, ["data"], log=lambda _: None)
    docs, eod = _split_docs(tmp_path / "out" / "data")
    assert set(docs) == {"train", "valid", "search", "test"}
    vocab = json.loads((tmp_path / "out" / "data" / "dataset.json").read_text())["vocab_size"]
    model_cfg = types.SimpleNamespace(max_position_embeddings=SEQ, padded_vocab_size=vocab)

    # the baseline's run YAML names a random-init model.yaml: give it one (the extract stage would)
    extract = tmp_path / "out" / "extract"
    extract.mkdir(parents=True)
    (extract / "model.yaml").write_text(
        f"family: llama\nvocab_size: {vocab}\nhidden_size: 32\nnum_layers: 1\nnum_attention_heads: 2\n"
        f"num_query_groups: 2\nkv_channels: 16\nffn_hidden_size: 64\nmax_position_embeddings: {SEQ}\n"
        "normalization: RMSNorm\nnorm_eps: 1.0e-5\nactivation: silu\ngated_mlp: true\nadd_bias_linear: false\n"
        "add_qkv_bias: false\n")
    drawn: dict[str, list[list[int]]] = {}
    with runtime_scope(tp=1, pp=1, seed=0):
        imp = _stage_config(ImportanceConfig, _capture(config, "importance"))
        common = dict(seq_length=imp.seq_length, micro_batch_size=imp.micro_batch_size, seed=imp.seed)
        drawn["importance calibration"] = _sequences(load_batches(imp.data, model_cfg, split=imp.split,
                                                                  num_batches=imp.batches, **common).batches)
        drawn["importance layer drop"] = _sequences(load_batches(imp.data, model_cfg, split="valid",
                                                                 num_batches=imp.batches, **common).batches)
        search = _stage_config(SearchConfig, _capture(config, "search"))  # the runner reads the valid split of data
        ev = search.eval
        drawn["search objective"] = _sequences(load_batches(
            search.data, model_cfg, split="valid", num_batches=ev.batches, seq_length=ev.seq_length,
            micro_batch_size=ev.micro_batch_size, seed=ev.seed).batches)
        # the old wiring (search on the data directory's valid split) is what this test must catch
        old_search = _sequences(load_batches(tmp_path / "out" / "data", model_cfg, split="valid",
                                             num_batches=ev.batches, seq_length=ev.seq_length,
                                             micro_batch_size=ev.micro_batch_size, seed=ev.seed).batches)
    for stage in ("baseline",):
        argv = _capture(config, stage)
        batches = _train_batches(argv[argv.index("--config") + 1])
        drawn[f"{stage} valid"], drawn[f"{stage} test"] = _sequences(batches["valid"]), _sequences(batches["test"])

    expected = {"importance calibration": "search", "importance layer drop": "search", "search objective": "search",
                "baseline valid": "valid", "baseline test": "test"}
    for name, sequences in drawn.items():
        assert sequences, name
        traced = [_splits_of(seq, docs, eod) for seq in sequences]
        assert sum(bool(t) for t in traced) >= len(sequences) // 2, f"{name}: too few sequences could be traced"
        assert all(t <= {expected[name]} for t in traced), f"{name}: sequences from {set().union(*traced)}"
    windows = {name: {tuple(s) for s in seqs} for name, seqs in drawn.items()}
    for a in windows:
        for b in windows:
            if expected[a] != expected[b]:
                assert not windows[a] & windows[b], f"{a} and {b} share sequences"
    # the check has teeth: the old wiring (search on the data directory's valid split) traces to valid
    old = [_splits_of(seq, docs, eod) for seq in old_search]
    assert all(t <= {"valid"} for t in old) and sum(t == {"valid"} for t in old) >= len(old) // 2
