"""A training run reading a teacher cache (``distill.teacher_source: cache``): refused up front on any mismatch,
then rows handed to the loss by global sample index, whatever the run's TP / PP / DP and batch sizes.

Checked before any process group exists (``open_for_training``): the cache is complete (a partial one says how
far it got and how to resume), its teacher is the run's ``distill.teacher`` (by checkpoint fingerprint), its
data, data seed and sequence length are the run's, its vocabulary is the student's, its temperature is
``distill.temperature``, and it covers the ``train_steps * global_batch_size`` samples the run reads. The run
then builds its train dataset with the cache's ``dataset_samples`` (megatron's shuffle depends on the size, so
this is what makes sample i the cache's sample i) and reads a prefix of that stream.

``CachedTeacherIterator`` wraps the run's ``MicroBatchIterator``: the global index of a micro-batch's first
sample is the iterator's ``consumed_samples + dp_rank * micro_batch_size``, so resume (which restores
consumed_samples) reads the right rows; every sample's token ids are checked against the cache's checksum.
"""

from __future__ import annotations

import numpy as np
import torch

from nemo_subnet.data import read_metadata, split_path
from nemo_subnet.data.gpt_datasets import split_fingerprint
from nemo_subnet.errors import UserError
from nemo_subnet.teacher_cache.store import TeacherCache, batch_checksums, checkpoint_fingerprint
from nemo_subnet.training.distill import SparseTeacher


def open_for_training(config, student_cfg) -> TeacherCache:
    """The run's cache, or one UserError naming every way it does not fit ``config`` (a TrainConfig)."""
    d, data = config.distill, config.data
    cache = TeacherCache(d.cache)
    p, where = cache.provenance, f"teacher cache {d.cache}"
    problems = []
    fingerprint = checkpoint_fingerprint(d.teacher)
    if fingerprint != p.teacher_fingerprint:
        problems.append(f"it was built from teacher {p.teacher} (fingerprint {p.teacher_fingerprint}), this run names "
                        f"{d.teacher} (fingerprint {fingerprint})")
    metadata = read_metadata(data.path)
    data_fingerprint = split_fingerprint([split_path(data.path, metadata, "train")])
    if data_fingerprint != p.data_fingerprint:
        problems.append(f"data: built from {p.data} (train split {p.data_fingerprint}), this run reads {data.path} "
                        f"({data_fingerprint})")
    for name, cached, run in (("data.seed", p.data_seed, data.seed), ("data.seq_length", p.seq_length, data.seq_length),
                              ("vocab_size (student)", p.vocab_size, student_cfg.vocab_size),
                              ("padded vocab (student)", p.padded_vocab_size, student_cfg.padded_vocab_size),
                              ("distill.temperature", p.temperature, float(d.temperature))):
        if cached != run:
            problems.append(f"{name}: the cache has {cached}, this run {run}")
    needed = config.schedule.train_steps * data.global_batch_size
    if needed > cache.layout.covered:
        problems.append(f"it covers {cache.layout.covered} samples, this run reads {needed} (train_steps * "
                        f"global_batch_size): build a cache with samples >= {needed}")
    if problems:
        raise UserError(f"{where} does not fit this run: " + "; ".join(problems))
    return cache


class CachedTeacherIterator:
    """The run's micro-batches with the cache's rows added: ``teacher_ids`` [b, s, K] int32 (+ ``teacher_probs``)."""

    def __init__(self, inner, cache: TeacherCache, run_samples: int):
        self.inner, self.cache = inner, cache
        for sample in sorted({0, run_samples - 1}):  # the stream's ends, checked before the first step
            item = inner.dataset[sample]
            self._verify(sample, {"tokens": item["tokens"][None], "labels": item["labels"][None]},
                         cache.rows(sample, 1)[2])

    def _verify(self, first: int, batch: dict, sums: np.ndarray) -> None:
        bad = np.nonzero(batch_checksums(batch) != sums)[0]
        if bad.size:
            raise UserError(f"sample {first + int(bad[0])} of this run's stream is not the one teacher cache "
                            f"{self.cache.root} was built on (token checksum differs): rebuild the cache for this data")

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        first = self.inner.consumed_samples + self.inner.dp_rank * self.inner.micro_batch_size
        batch = next(self.inner)
        ids, probs, sums = self.cache.rows(first, batch["tokens"].shape[0])
        self._verify(first, batch, sums)
        batch["teacher_ids"] = torch.from_numpy(ids)  # [b, s, K]
        if probs is not None:
            batch["teacher_probs"] = torch.from_numpy(probs)  # [b, s, K] float16
        return batch

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def cached_teacher(batch: dict, cache: TeacherCache) -> SparseTeacher:
    """The loss's view of a micro-batch's cached rows (already on the device)."""
    return SparseTeacher(batch["teacher_ids"], batch.get("teacher_probs"), tail=cache.tail)
