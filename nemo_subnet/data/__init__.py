"""Data: corpora -> tokenizer -> megatron-core indexed datasets, and GPTDatasets for training.

Preparation (``nemo-subnet data prepare``) is :func:`prepare_dataset`; training reads the result with
:func:`build_gpt_datasets` and walks it with :class:`MicroBatchIterator`. See docs/data.md.
"""

from nemo_subnet.data.gpt_datasets import GPTDataConfig, GPTDatasets, MicroBatchIterator, build_gpt_datasets, collate, hf_tokenizer_dir, validate_data
from nemo_subnet.data.prepare import (ALL_SPLITS, PrepareConfig, PreparedDataset, make_view, prepare_dataset, read_metadata,
                                      split_path, split_prefix)

__all__ = [
    "ALL_SPLITS",
    "GPTDataConfig",
    "GPTDatasets",
    "MicroBatchIterator",
    "PrepareConfig",
    "PreparedDataset",
    "build_gpt_datasets",
    "collate",
    "hf_tokenizer_dir",
    "make_view",
    "prepare_dataset",
    "read_metadata",
    "split_path",
    "split_prefix",
    "validate_data",
]
