"""`nemo-subnet data prepare`: corpus -> tokenizer -> Megatron indexed datasets (.bin/.idx) + dataset.json.

Output layout of ``out``::

    train_text_document.bin/.idx   megatron-core IndexedDataset, one sequence per document, EOD-terminated
    valid_text_document.bin/.idx
    search_text_document.bin/.idx  (with search_fraction > 0) calibration / search split
    test_text_document.bin/.idx    (with test_fraction > 0) the final held-out test split
    tokenizer/                     tokenizer.model (sentencepiece) and/or tokenizer.json + config (HF)
    dataset.json                   what was made and how: source, tokenizer, dtype, split sizes, seed

Everything is written into a temporary sibling directory that is renamed to ``out`` only when complete:
an error removes it, so ``out`` is either the previous complete one or absent (a hard kill can leave a
hidden ``.out.tmp-*`` sibling, never a half-written ``out``). The split is by document: a
seeded permutation picks ``valid_fraction`` of them (at least one; the train split gets at least one
too), then ``search_fraction`` and ``test_fraction`` of them for the optional ``search`` and ``test``
splits (at least one each when asked for); each split keeps corpus order inside. No document is in two
splits. A trained tokenizer sees only train documents.

Three held-out splits keep a search-then-pretrain run honest: the sub-network search (and importance
calibration) chooses by perplexity on ``search``, training curves are measured on ``valid``, and the final
number is measured once on ``test``; the selection never sees the data the result is reported on.

A *view* (:func:`make_view`) is a directory holding only a ``dataset.json`` whose ``train`` / ``valid``
entries point at splits of a prepared directory (``view_of``): commands that read a prepared directory's
train and valid splits (importance calibration, the search objective) read the ``search`` split through
a view without knowing about it.
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
from typing import Annotated, Iterator, Literal

import numpy as np
import torch
from tqdm import tqdm

from nemo_subnet import config as configs
from nemo_subnet.config import Fraction, PositiveInt, Range
from nemo_subnet.errors import UserError
from nemo_subnet.files import write_text_atomic
from nemo_subnet.data.corpus import Source, load_corpus, resolve_source
from nemo_subnet.data.tokenizer import HFTokenizer, SentencePieceTokenizer, TextTokenizer, train_sentencepiece

METADATA_FILE = "dataset.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "valid")
"""The splits every prepared directory has (training reads ``train``, curves are measured on ``valid``)."""
OPTIONAL_SPLITS = ("search", "test")
"""Written when their fraction is > 0: ``search`` for importance calibration and the sub-network search,
``test`` for the final number reported once."""
ALL_SPLITS = SPLITS + OPTIONAL_SPLITS
FORMAT_VERSION = 1


def split_prefix(split: str) -> str:
    """File prefix (without .bin/.idx) of a split inside a prepared directory."""
    return f"{split}_text_document"


HeldOut = Annotated[float, Range(ge=0, lt=1)]


@dataclass
class PrepareConfig:
    """Inputs of :func:`prepare_dataset`; ``nemo-subnet data prepare``'s flags are generated from it, and the
    pipeline's ``data`` section is one."""

    inputs: list[str]
    """Files, directories, ``["stdlib"]`` or ``[hub_name]``."""
    out: Path | None = None
    """Output directory; replaced atomically when ``overwrite`` (required to run; the pipeline sets it)."""
    tokenizer: str | None = None
    """A local Hugging Face tokenizer directory, or a .gguf file (its embedded tokenizer)."""
    sentencepiece: str | None = None
    """A sentencepiece ``.model`` file."""
    train_tokenizer: Literal["sentencepiece"] | None = None
    """Train a tokenizer on the train split instead of loading one."""
    vocab_size: PositiveInt | None = None
    """Vocabulary size of the trained tokenizer."""
    tokenizer_train_bytes: PositiveInt = 32_000_000
    """Train the tokenizer on at most this much text (the first train documents); plenty for 32k vocabs."""
    text_key: str = "text"
    """Field / column holding the text in JSON and parquet inputs."""
    txt_per_line: bool = False
    """One document per line of .txt files instead of one per file."""
    max_docs: PositiveInt | None = None
    """Keep only the first N documents."""
    max_bytes: PositiveInt | None = None
    """Keep only the first documents up to about this many bytes (``4M``)."""
    valid_fraction: Fraction = 0.05
    """Share of documents for the ``valid`` split (the training curves)."""
    search_fraction: HeldOut = 0.0
    """Share of documents for the ``search`` split (calibration and sub-network search); 0: no such split."""
    test_fraction: HeldOut = 0.0
    """Share of documents for the ``test`` split (the final, once-reported number); 0: no such split."""
    seed: int = 1234
    batch_docs: PositiveInt = 256
    """Documents per tokenizer call (both backends parallelize inside a call)."""
    overwrite: bool = False
    progress: bool = True

    def problems(self) -> Iterator[tuple[str | None, str]]:
        chosen = [name for name in ("tokenizer", "sentencepiece", "train_tokenizer") if getattr(self, name)]
        if len(chosen) > 1:
            yield None, f"give one of tokenizer, sentencepiece, train_tokenizer, not {' and '.join(chosen)}"
        if self.train_tokenizer is not None and self.vocab_size is None:
            yield "vocab_size", "required with train_tokenizer (the size of the tokenizer to train)"
        if self.train_tokenizer is None and self.vocab_size is not None:
            yield "vocab_size", "only applies with train_tokenizer; a loaded tokenizer has its own"
        held_out = self.valid_fraction + self.search_fraction + self.test_fraction
        if held_out >= 1.0:
            yield None, (f"valid_fraction + search_fraction + test_fraction = {held_out:g} leaves no train "
                         "documents: the three must sum to less than 1")


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
    search_fraction: float = 0.0
    test_fraction: float = 0.0
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
    configs.check(config)
    if config.out is None or not any(getattr(config, n) for n in ("tokenizer", "sentencepiece", "train_tokenizer")):
        raise UserError("preparing data needs out and one of tokenizer, sentencepiece, train_tokenizer "
                        "(--out, --tokenizer / --sentencepiece / --train-tokenizer)")
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


def _prepare_into(config: PrepareConfig, source: Source, tmp: Path) -> PreparedDataset:
    given = _load_given_tokenizer(config)  # before the corpus: a bad tokenizer path fails fast
    corpus = load_corpus(
        source, text_key=config.text_key, txt_per_line=config.txt_per_line,
        max_docs=config.max_docs, max_bytes=config.max_bytes, cache_dir=str(tmp / "hf_datasets_cache"),
    )
    fractions = {"valid": config.valid_fraction, "search": config.search_fraction, "test": config.test_fraction}
    fractions = {split: f for split, f in fractions.items() if f > 0}
    if len(corpus) < len(fractions) + 1:
        raise UserError(f"corpus has {len(corpus)} documents: train and {', '.join(fractions)} splits need at least "
                        f"{len(fractions) + 1} (one document each)")
    doc_ids = _split_documents(len(corpus), fractions, config.seed)

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
        search_fraction=config.search_fraction, test_fraction=config.test_fraction,
    )
    for split in (s for s in ALL_SPLITS if s in doc_ids):
        texts = corpus.select(doc_ids[split])
        prepared.splits[split] = _write_split(texts, tokenizer, dtype, tmp / split_prefix(split), config, split)
        prepared.splits[split].prefix = split_prefix(split)

    shutil.rmtree(tmp / "hf_datasets_cache", ignore_errors=True)
    (tmp / METADATA_FILE).write_text(json.dumps(prepared.to_json(), indent=2) + "\n")
    return prepared


def _split_documents(num_docs: int, fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Seeded document split: held-out splits take consecutive runs of one permutation (valid first, so a
    directory prepared without search / test splits is split exactly as before), train the rest; each split
    sorted so that files read in corpus order. Every held-out split gets at least one document, train too."""
    order = np.random.default_rng(seed).permutation(num_docs)
    splits, begin = {}, 0
    for split, fraction in fractions.items():
        left = num_docs - begin - (len(fractions) - len(splits) - 1) - 1  # one for each later split and train
        count = min(max(1, round(fraction * num_docs)), left)
        splits[split] = sorted(order[begin:begin + count].tolist())
        begin += count
    return {"train": sorted(order[begin:].tolist()), **splits}


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


def split_path(data_dir: str | Path, metadata: dict, split: str) -> Path:
    """The .bin/.idx prefix of ``split`` (its ``prefix`` entry, relative to ``data_dir``: a view's point into
    the directory it views), or a UserError naming the splits there are."""
    splits = metadata["splits"]
    if split not in splits:
        raise UserError(f"{data_dir} has no {split!r} split (it has {', '.join(splits)}): prepare it with "
                        f"--{split}-fraction > 0" if split in OPTIONAL_SPLITS else
                        f"{data_dir} has no {split!r} split (it has {', '.join(splits)})")
    return Path(os.path.normpath(Path(data_dir).absolute() / (splits[split].get("prefix") or split_prefix(split))))


def make_view(data_dir: str | Path, out: str | Path, *, train: str, valid: str) -> Path:
    """A directory whose ``dataset.json`` serves ``data_dir``'s ``train`` split as its train split and ``valid``
    as its valid split (e.g. both ``search``); written atomically, replacing a previous view. Its index caches
    go to ``out/cache``; the token files are not copied."""
    data_dir, out = Path(data_dir).absolute(), Path(out).absolute()
    metadata = read_metadata(data_dir)
    for split in (train, valid):
        split_path(data_dir, metadata, split)  # exists, else one clear error
    rel = lambda path: os.path.relpath(path, out)  # noqa: E731 -- the view keeps working when both move together
    view = {**metadata, "view_of": rel(data_dir), "roles": {"train": train, "valid": valid},
            "tokenizer": {**metadata["tokenizer"], "path": rel(data_dir / metadata["tokenizer"]["path"])},
            "splits": {role: {**metadata["splits"][split], "prefix": rel(split_path(data_dir, metadata, split))}
                       for role, split in (("train", train), ("valid", valid))}}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / METADATA_FILE, json.dumps(view, indent=2) + "\n")
    return out
