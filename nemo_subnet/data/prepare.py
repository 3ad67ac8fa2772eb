"""`nemo-subnet data prepare`: corpus -> tokenizer -> Megatron indexed datasets (.bin/.idx) + dataset.json.

Output layout of ``out``::

    train_text_document.bin/.idx   megatron-core IndexedDataset, one sequence per document, EOD-terminated
    valid_text_document.bin/.idx
    tokenizer/                     tokenizer.model (sentencepiece) and/or tokenizer.json + config (HF)
    dataset.json                   what was made and how: source, tokenizer, dtype, split sizes, seed

Everything is written into a temporary sibling directory that is renamed to ``out`` only when complete:
an error removes it, so ``out`` is either the previous complete one or absent (a hard kill can leave a
hidden ``.out.tmp-*`` sibling, never a half-written ``out``). The split is by document: a
seeded permutation picks ``valid_fraction`` of them (at least one; the train split gets at least one
too); each split keeps corpus order inside. A trained tokenizer sees only train documents.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from nemo_subnet.cli import UserError
from nemo_subnet.data.corpus import Source, load_corpus, resolve_source
from nemo_subnet.data.tokenizer import HFTokenizer, SentencePieceTokenizer, TextTokenizer, train_sentencepiece

METADATA_FILE = "dataset.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "valid")
FORMAT_VERSION = 1


def split_prefix(split: str) -> str:
    """File prefix (without .bin/.idx) of a split inside a prepared directory."""
    return f"{split}_text_document"


@dataclass
class PrepareConfig:
    """Inputs of :func:`prepare_dataset`; the CLI flags map one to one."""

    inputs: list[str]
    """Files, directories, ``["stdlib"]`` or ``[hub_name]``."""
    out: Path
    """Output directory; replaced atomically when ``overwrite``."""
    tokenizer: str | None = None
    """A local Hugging Face tokenizer directory."""
    sentencepiece: str | None = None
    """A sentencepiece ``.model`` file."""
    train_tokenizer: Literal["sentencepiece"] | None = None
    """Train a tokenizer on the train split instead of loading one."""
    vocab_size: int | None = None
    """Vocabulary size of the trained tokenizer."""
    tokenizer_train_bytes: int = 32_000_000
    """Train the tokenizer on at most this much text (the first train documents); plenty for 32k vocabs."""
    text_key: str = "text"
    """Field / column holding the text in JSON and parquet inputs."""
    txt_per_line: bool = False
    """One document per line of .txt files instead of one per file."""
    max_docs: int | None = None
    max_bytes: int | None = None
    valid_fraction: float = 0.05
    seed: int = 1234
    batch_docs: int = 256
    """Documents per tokenizer call (both backends parallelize inside a call)."""
    overwrite: bool = False
    progress: bool = True


@dataclass
class SplitStats:
    documents: int = 0
    tokens: int = 0
    prefix: str = ""


@dataclass
class PreparedDataset:
    """What :func:`prepare_dataset` made; also the content of dataset.json."""

    out: Path
    tokenizer: dict
    vocab_size: int
    eod: int
    dtype: str
    seed: int
    valid_fraction: float
    source: dict
    splits: dict[str, SplitStats] = field(default_factory=dict)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("out")
        return {"format_version": FORMAT_VERSION, **data}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (the rule GPTDatasetConfig uses for its dtype code), else int32."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


def prepare_dataset(config: PrepareConfig) -> PreparedDataset:
    """Tokenize a corpus into train/valid Megatron indexed datasets under ``config.out``."""
    _check_config(config)
    source = resolve_source(config.inputs)
    out = Path(config.out).absolute()
    if out.exists() and not config.overwrite:
        raise UserError(f"output {out} already exists: remove it or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        prepared = _prepare_into(config, source, tmp)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prepared.out = out
    return prepared


def _check_config(config: PrepareConfig) -> None:
    chosen = [flag for flag, value in (("--tokenizer", config.tokenizer), ("--sentencepiece", config.sentencepiece),
                                       ("--train-tokenizer", config.train_tokenizer)) if value]
    if len(chosen) != 1:
        raise UserError(f"pass exactly one of --tokenizer, --sentencepiece, --train-tokenizer (got {chosen or 'none'})")
    if config.train_tokenizer is not None and config.vocab_size is None:
        raise UserError("--train-tokenizer needs --vocab-size N")
    if config.train_tokenizer is None and config.vocab_size is not None:
        raise UserError("--vocab-size only applies with --train-tokenizer; a loaded tokenizer has its own")
    if not 0.0 < config.valid_fraction < 1.0:
        raise UserError(f"--valid-fraction must be in (0, 1), got {config.valid_fraction}")
    if config.batch_docs < 1:
        raise UserError(f"batch size must be at least 1, got {config.batch_docs}")


def _prepare_into(config: PrepareConfig, source: Source, tmp: Path) -> PreparedDataset:
    given = _load_given_tokenizer(config)  # before the corpus: a bad tokenizer path fails fast
    corpus = load_corpus(
        source, text_key=config.text_key, txt_per_line=config.txt_per_line,
        max_docs=config.max_docs, max_bytes=config.max_bytes, cache_dir=str(tmp / "hf_datasets_cache"),
    )
    if len(corpus) < 2:
        raise UserError(f"corpus has {len(corpus)} document: a train and a valid split need at least 2")
    doc_ids = _split_documents(len(corpus), config.valid_fraction, config.seed)

    tokenizer = given or _train_tokenizer(config, corpus, doc_ids["train"])
    sample = corpus.select(doc_ids["train"][:16])["text"]  # checks the HF twin of a sentencepiece model on real text
    if isinstance(tokenizer, SentencePieceTokenizer):
        tok_info = tokenizer.save(tmp / TOKENIZER_DIR, sample_texts=list(sample))
    else:
        tok_info = tokenizer.save(tmp / TOKENIZER_DIR)
    tok_info["path"] = TOKENIZER_DIR

    dtype = token_dtype(tokenizer.vocab_size)
    prepared = PreparedDataset(
        out=tmp, tokenizer=tok_info, vocab_size=tokenizer.vocab_size, eod=tokenizer.eod, dtype=dtype.name,
        seed=config.seed, valid_fraction=config.valid_fraction, source=source.describe(),
    )
    for split in SPLITS:
        texts = corpus.select(doc_ids[split])
        prepared.splits[split] = _write_split(texts, tokenizer, dtype, tmp / split_prefix(split), config, split)
        prepared.splits[split].prefix = split_prefix(split)

    shutil.rmtree(tmp / "hf_datasets_cache", ignore_errors=True)
    (tmp / METADATA_FILE).write_text(json.dumps(prepared.to_json(), indent=2) + "\n")
    return prepared


def _split_documents(num_docs: int, valid_fraction: float, seed: int) -> dict[str, list[int]]:
    """Seeded document split; each split sorted so that files read in corpus order."""
    num_valid = min(max(1, round(valid_fraction * num_docs)), num_docs - 1)
    order = np.random.default_rng(seed).permutation(num_docs)
    return {"train": sorted(order[num_valid:].tolist()), "valid": sorted(order[:num_valid].tolist())}


def _load_given_tokenizer(config: PrepareConfig) -> TextTokenizer | None:
    if config.tokenizer:
        return HFTokenizer(config.tokenizer)
    if config.sentencepiece:
        return SentencePieceTokenizer.load(config.sentencepiece)
    return None


def _train_tokenizer(config: PrepareConfig, corpus, train_ids: list[int]) -> TextTokenizer:
    texts = (row["text"] for row in corpus.select(train_ids))
    return train_sentencepiece(texts, config.vocab_size, seed=config.seed, max_bytes=config.tokenizer_train_bytes)


def _write_split(texts, tokenizer: TextTokenizer, dtype: np.dtype, prefix: Path, config: PrepareConfig, split: str) -> SplitStats:
    with warnings.catch_warnings():  # megatron's "Apex is not installed" import warnings are noise here
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    stats = SplitStats()
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype.type)  # megatron wants the scalar type
    bar = tqdm(total=len(texts), desc=f"tokenize {split}", unit="doc", disable=not config.progress, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for begin in range(0, len(texts), config.batch_docs):
            batch = texts[begin:begin + config.batch_docs]["text"]
            for ids in tokenizer.encode(list(batch)):
                ids.append(tokenizer.eod)
                builder.add_item(torch.from_numpy(np.asarray(ids, dtype=np.int64)))
                builder.end_document()
                stats.tokens += len(ids)
            stats.documents += len(batch)
            bar.update(len(batch))
            bar.set_postfix(tokens_per_s=f"{stats.tokens / max(time.perf_counter() - start, 1e-9):.0f}")
    finally:
        bar.close()
        builder.finalize(f"{prefix}.idx")
    return stats


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` is moved aside first, then deleted."""
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is meant to be shared
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_metadata(data_dir: str | Path) -> dict:
    """dataset.json of a prepared directory, or a UserError saying what is missing."""
    path = Path(data_dir) / METADATA_FILE
    if not path.is_file():
        raise UserError(f"{data_dir} is not a prepared dataset (no {METADATA_FILE}): run `nemo-subnet data prepare` first")
    metadata = json.loads(path.read_text())
    if metadata.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has format_version {metadata.get('format_version')}, this code reads {FORMAT_VERSION}")
    return metadata
