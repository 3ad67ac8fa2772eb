"""Training-side reading of a prepared directory: megatron-core GPTDatasets and resumable micro-batches.

``build_gpt_datasets`` hands the prepared splits to megatron-core's ``BlendedMegatronDatasetBuilder``
(``blend_per_split``: train from ``train_text_document``, valid from ``valid_text_document``, and, when asked
for, test from ``test_text_document``), which
builds ``GPTDataset``s: documents concatenated (EOD-separated) and cut into ``seq_length + 1`` token
windows, shuffled with ``seed``, repeated over as many epochs as the requested sample count needs.
Each sample is ``tokens`` [s], ``labels`` [s] (tokens shifted left by one), ``loss_mask`` [s],
``position_ids`` [s] and, when asked, ``attention_mask`` [1, s, s] (megatron's local attention builds
the causal mask itself when it is absent, so it is off by default).

The index files the builder writes (document / sample / shuffle indices) go to ``cache_dir``
(default ``<data_dir>/cache``). With ``torch.distributed`` initialized the builder makes rank 0 write
them first while the other ranks wait at a barrier, then reads them everywhere; without a process group
it just builds.

``MicroBatchIterator`` walks one dataset the way Megatron's pretraining sampler does: the global sample
stream 0, 1, 2, ... is cut into steps of ``micro_batch_size * dp_size`` samples and data-parallel rank
``r`` takes the ``r``-th slice of each step. Its whole state is ``consumed_samples`` (summed over ranks),
so a checkpoint stores one integer and a resumed iterator continues with exactly the next samples.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from nemo_subnet.errors import UserError
from nemo_subnet.data.prepare import SPLITS, read_metadata, split_path

# megatron's dataset builder logs each index build and missing blend at INFO; once anything configures root
# logging (NeMo-Run does) those lines land between our CLIs' result lines. Warnings still show; a user who set
# this logger's level keeps it.
_MEGATRON_DATASETS_LOG = logging.getLogger("megatron.core.datasets")
if _MEGATRON_DATASETS_LOG.level == logging.NOTSET:
    _MEGATRON_DATASETS_LOG.setLevel(logging.WARNING)


@dataclass
class GPTDataConfig:
    """How training reads a prepared directory."""

    data_dir: Path
    """A directory made by ``nemo-subnet data prepare``."""
    seq_length: int
    """Tokens per sample (the model's sequence length)."""
    seed: int = 1234
    """Seed of megatron's document and sample shuffles."""
    eval_seed: int | None = None
    """Seed of the valid and test shuffles (None: ``seed``). Fixed, runs of different data orders are measured
    on the same evaluation samples, so their differences are not evaluation noise."""
    max_position: int | None = None
    """The model's position limit (max_position_embeddings); seq_length may not exceed it."""
    model_vocab_size: int | None = None
    """The model's (possibly padded) vocabulary size; it must cover every token id."""
    cache_dir: Path | None = None
    """Where megatron writes its index caches; default ``<data_dir>/cache``."""
    create_attention_mask: bool = False
    """Put a [1, s, s] causal mask in every sample (the model builds one itself when absent)."""
    eod_mask_loss: bool = False
    """Zero the loss on EOD tokens."""
    reset_position_ids: bool = False
    """Restart position ids after each EOD."""
    reset_attention_mask: bool = False
    """Block attention across EOD (needs create_attention_mask)."""


@dataclass
class GPTDatasets:
    train: torch.utils.data.Dataset
    valid: torch.utils.data.Dataset
    metadata: dict
    """dataset.json of the prepared directory."""
    test: torch.utils.data.Dataset | None = None
    """The test split (built only when ``test_samples`` is given): evaluated once, at the end."""


class _EodTokenizer:
    """The part of a megatron tokenizer GPTDataset uses: ``eod``, ``vocab_size`` and a cache identity."""

    def __init__(self, vocab_size: int, eod: int, fingerprint: str):
        self.vocab_size = vocab_size
        self.eod = eod
        # megatron hashes this into its cache file names: a re-prepared corpus never hits a stale cache
        self.unique_identifiers = {"class": "nemo_subnet.data", "vocab_size": vocab_size, "eod": eod, "data": fingerprint}


def validate_data(config: GPTDataConfig, metadata: dict) -> None:
    """Raise a UserError when the model and the prepared data cannot work together."""
    if config.seq_length < 1:
        raise UserError(f"seq_length must be at least 1, got {config.seq_length}")
    if config.max_position is not None and config.seq_length > config.max_position:
        raise UserError(
            f"seq_length {config.seq_length} is longer than the model's position limit {config.max_position}: "
            f"use seq_length <= {config.max_position}"
        )
    vocab = metadata["vocab_size"]
    if config.model_vocab_size is not None and config.model_vocab_size < vocab:
        raise UserError(
            f"vocab mismatch: the data's tokenizer has {vocab} tokens but the model's vocabulary has "
            f"{config.model_vocab_size}; the model vocabulary must be at least the tokenizer's (padding allowed)"
        )
    for split in SPLITS:
        _check_split_length(config, metadata, split)


def _check_split_length(config: GPTDataConfig, metadata: dict, split: str) -> None:
    tokens = metadata["splits"][split]["tokens"]
    if tokens < config.seq_length + 1:
        raise UserError(
            f"the {split} split has {tokens} tokens, fewer than seq_length + 1 = {config.seq_length + 1}: "
            f"use a larger corpus, a larger {split} fraction, or a shorter seq_length"
        )


def build_gpt_datasets(config: GPTDataConfig, train_samples: int, valid_samples: int | None = None,
                       test_samples: int | None = None) -> GPTDatasets:
    """megatron-core GPTDatasets over a prepared directory.

    ``train_samples``: samples the training run will draw in total (epochs repeat as needed).
    ``valid_samples``: the same for validation; None builds exactly one pass over the valid split.
    ``test_samples``: the same for the test split; None builds no test dataset (a directory without a test
    split is then fine).
    Call on every rank when torch.distributed is initialized (the builder synchronizes them).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    data_dir = Path(config.data_dir).absolute()
    metadata = read_metadata(data_dir)
    validate_data(config, metadata)
    if train_samples < 1:
        raise UserError(f"train_samples must be at least 1, got {train_samples}")
    if valid_samples is not None and valid_samples < 1:
        raise UserError(f"valid_samples must be at least 1 or None, got {valid_samples}")
    if test_samples is not None and test_samples < 1:
        raise UserError(f"test_samples must be at least 1 or None, got {test_samples}")

    splits = SPLITS + (("test",) if test_samples is not None else ())
    prefixes = {split: str(split_path(data_dir, metadata, split)) for split in splits}
    if test_samples is not None:
        _check_split_length(config, metadata, "test")
    tokenizer = _EodTokenizer(metadata["vocab_size"], metadata["eod"], split_fingerprint(prefixes.values()))
    blends = [([prefixes["train"]], None), ([prefixes["valid"]], None),
              ([prefixes["test"]], None) if test_samples is not None else None]
    sizes = [train_samples, valid_samples, test_samples]

    def build(seed: int, wanted: tuple[int, ...]) -> list:
        """The splits in ``wanted`` (0 train, 1 valid, 2 test) shuffled with ``seed``; None for the others."""
        gpt_config = GPTDatasetConfig(
            random_seed=seed,
            sequence_length=config.seq_length,
            blend_per_split=[blend if i in wanted else None for i, blend in enumerate(blends)],
            path_to_cache=str(config.cache_dir or data_dir / "cache"),
            tokenizer=tokenizer,
            reset_position_ids=config.reset_position_ids,
            reset_attention_mask=config.reset_attention_mask,
            eod_mask_loss=config.eod_mask_loss,
            create_attention_mask=config.create_attention_mask,
        )
        return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, gpt_config).build()

    if config.eval_seed is None or config.eval_seed == config.seed:
        train, valid, test = build(config.seed, (0, 1, 2))
    else:  # the training order follows the seed, the evaluation samples stay fixed
        train = build(config.seed, (0,))[0]
        _, valid, test = build(config.eval_seed, (1, 2))
    return GPTDatasets(train=train, valid=valid, metadata=metadata, test=test)


def hf_tokenizer_dir(data_dir: str | Path) -> Path | None:
    """The prepared directory's Hugging Face tokenizer (to ship with an exported model), or None if it has none."""
    metadata = read_metadata(data_dir)
    path = Path(os.path.normpath(Path(data_dir).absolute() / metadata["tokenizer"]["path"]))
    return path if metadata["tokenizer"].get("hf_tokenizer") else None


def split_fingerprint(prefixes) -> str:
    """A short hash of the splits' document lengths (their .idx files): megatron's cache key, and a teacher cache's
    record of the data it was built from."""
    digest = hashlib.sha256()
    for prefix in prefixes:
        digest.update(Path(f"{prefix}.idx").read_bytes())  # lengths of every document: small, and changes with the data
    return digest.hexdigest()[:16]


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-sample tensors: [s] -> [b, s], [1, s, s] -> [b, 1, s, s]."""
    return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}


class MicroBatchIterator:
    """Micro-batches of ``dataset`` for one data-parallel rank, resumable from ``consumed_samples``.

    Step ``k`` covers global samples ``[c_k, c_k + micro_batch_size * dp_size)`` with ``c_k`` the
    samples consumed before it; rank ``r`` gets ``micro_batch_size`` of them starting at
    ``c_k + r * micro_batch_size``. Iteration stops when a full step no longer fits in the dataset.
    """

    def __init__(self, dataset, micro_batch_size: int, *, dp_rank: int = 0, dp_size: int = 1, consumed_samples: int = 0):
        if micro_batch_size < 1:
            raise UserError(f"micro_batch_size must be at least 1, got {micro_batch_size}")
        if not 0 <= dp_rank < dp_size:
            raise UserError(f"dp_rank {dp_rank} is outside [0, {dp_size})")
        if not 0 <= consumed_samples <= len(dataset):
            raise UserError(f"consumed_samples {consumed_samples} is outside the dataset's {len(dataset)} samples")
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.consumed_samples = consumed_samples

    def __iter__(self) -> MicroBatchIterator:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        step = self.micro_batch_size * self.dp_size
        if self.consumed_samples + step > len(self.dataset):
            raise StopIteration
        start = self.consumed_samples + self.dp_rank * self.micro_batch_size
        batch = collate([self.dataset[i] for i in range(start, start + self.micro_batch_size)])
        self.consumed_samples += step
        return batch

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict) -> None:
        self.consumed_samples = int(state["consumed_samples"])
