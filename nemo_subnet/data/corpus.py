"""Text corpora as a `datasets.Dataset` with one document per row in a ``text`` column.

Three kinds of source, chosen by :func:`resolve_source`:

- ``stdlib``: the embedded default corpus, the ``*.py`` files of this interpreter's standard library.
  It exists on every machine, so demos and tests never need a download. Files are taken in sorted
  relative-path order, one file per document; test suites, ``site-packages`` and caches are skipped
  by directory name so the selection is the same wherever the same Python version is installed.
- local files or directories of one format: ``.txt`` (one document per file, or per line), ``.jsonl``
  / ``.json`` (the ``text_key`` field), ``.parquet`` (the ``text_key`` column). They are read through
  ``datasets.load_dataset`` with the packaged ``text`` / ``json`` / ``parquet`` builders.
- anything else that looks like a hub dataset name (``owner/name``) goes to ``load_dataset`` as-is;
  without network that fails, and the failure is reported as one line.

Empty (whitespace-only) documents are dropped: they would contribute nothing but an end-of-document
token. ``max_docs`` / ``max_bytes`` keep a prefix of the remaining documents, for small runs.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import datasets

from nemo_subnet.errors import UserError

STDLIB = "stdlib"

# directory names skipped in the stdlib corpus: test suites (large, full of deliberately odd code)
# and third-party / generated trees that differ from machine to machine
_STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})

# file suffix -> datasets packaged builder
_FORMATS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

SourceKind = Literal["stdlib", "text", "json", "parquet", "hub"]


@dataclass(frozen=True)
class Source:
    """Where documents come from, resolved from the user's ``--input`` values."""

    kind: SourceKind
    """``stdlib``, a local format (``text`` / ``json`` / ``parquet``) or ``hub``."""
    files: tuple[str, ...] = ()
    """Local files in reading order (sorted); empty for ``stdlib`` and ``hub``."""
    name: str = ""
    """The hub dataset name, or the stdlib root directory."""

    def describe(self) -> dict:
        """A JSON-able summary for ``dataset.json``."""
        out: dict = {"kind": self.kind}
        if self.files:
            out["files"] = list(self.files)
        if self.name:
            out["name"] = self.name
        if self.kind == STDLIB:
            out["python"] = sys.version.split()[0]
        return out


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The stdlib ``*.py`` files of the embedded corpus, in sorted relative-path order."""
    root = stdlib_root()
    files = [
        path for path in root.rglob("*.py")
        if not _STDLIB_EXCLUDED_DIRS.intersection(path.relative_to(root).parts[:-1])
    ]
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def resolve_source(inputs: list[str]) -> Source:
    """Turn ``--input`` values into a :class:`Source`, or raise a :class:`UserError` naming the cause."""
    if not inputs:
        raise UserError("no --input given: pass files, a directory, 'stdlib' or a hub dataset name")
    if inputs == [STDLIB]:
        return Source(kind=STDLIB, name=str(stdlib_root()))
    if STDLIB in inputs:
        raise UserError("'stdlib' cannot be combined with other inputs")

    files: list[Path] = []
    for value in inputs:
        path = Path(value)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _FORMATS)
            if not found:
                raise UserError(f"directory {value} holds no files of a known format ({_format_list()})")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in _FORMATS:
                raise UserError(f"unknown input format {path.suffix or '(no suffix)'} for {value}: allowed are {_format_list()}")
            files.append(path)
        elif len(inputs) == 1 and _looks_like_hub_name(value):
            return Source(kind="hub", name=value)
        else:
            raise UserError(f"input path does not exist: {value}")

    kinds = sorted({_FORMATS[p.suffix.lower()] for p in files})
    if len(kinds) > 1:
        raise UserError(f"inputs mix formats ({', '.join(kinds)}): prepare one format at a time")
    return Source(kind=kinds[0], files=tuple(str(p) for p in files))


def load_corpus(
    source: Source,
    *,
    text_key: str = "text",
    txt_per_line: bool = False,
    max_docs: int | None = None,
    max_bytes: int | None = None,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """Load ``source`` as a dataset with a single ``text`` column, empty documents removed.

    ``cache_dir`` is where ``datasets`` writes its Arrow files; the caller puts it inside its
    temporary output so that nothing outlives a failed run.
    """
    if max_docs is not None and max_docs < 1:
        raise UserError(f"--max-docs must be at least 1, got {max_docs}")
    if max_bytes is not None and max_bytes < 1:
        raise UserError(f"--max-bytes must be at least 1, got {max_bytes}")

    progress_was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # our own bar reports the tokenization; theirs is noise here
    try:
        if source.kind == STDLIB:
            corpus = datasets.Dataset.from_dict({"text": _read_stdlib(max_docs, max_bytes)})
        else:
            corpus = _load_with_datasets(source, text_key, txt_per_line, cache_dir)
        corpus = corpus.filter(lambda batch: [bool(t and t.strip()) for t in batch], input_columns="text", batched=True)
    finally:
        if progress_was_enabled:
            datasets.enable_progress_bars()
    corpus = _take_prefix(corpus, max_docs, max_bytes)
    if len(corpus) == 0:
        raise UserError(f"empty corpus: no non-empty documents in {_name(source)}")
    return corpus


def _read_stdlib(max_docs: int | None, max_bytes: int | None) -> list[str]:
    """Read stdlib files until the limits are met (reading all 12 MB is wasted for a small run)."""
    texts, total = [], 0
    for path in stdlib_files():
        if max_docs is not None and len(texts) >= max_docs:
            break
        if max_bytes is not None and total >= max_bytes:
            break
        text = path.read_text(encoding="utf-8", errors="replace")  # a stray byte must not drop a file
        if not text.strip():
            continue  # empty __init__.py files: skipped here so that max_docs counts real documents
        texts.append(text)
        total += len(text.encode("utf-8"))
    return texts


def _load_with_datasets(source: Source, text_key: str, txt_per_line: bool, cache_dir: str | None) -> datasets.Dataset:
    if source.kind != "hub":
        files = [f for f in source.files if _has_rows(f, source.kind)]  # empty files trip up the builders
        if not files:
            raise UserError(f"empty corpus: no non-empty documents in {_name(source)}")
        source = Source(kind=source.kind, files=tuple(files))
    kwargs: dict = {"split": "train", "cache_dir": cache_dir}
    if source.kind == "text":
        kwargs["sample_by"] = "line" if txt_per_line else "document"
    try:
        if source.kind == "hub":
            corpus = datasets.load_dataset(source.name, **kwargs)
        else:
            corpus = datasets.load_dataset(source.kind, data_files=list(source.files), **kwargs)
    except (ConnectionError, OSError) as err:
        if source.kind == "hub":
            raise UserError(
                f"{source.name!r} is not a local path, and loading it as a hub dataset failed "
                f"(no network, or no such dataset?): {_one_line(err)}"
            ) from err
        raise UserError(f"could not read {_name(source)}: {_one_line(err)}") from err
    except Exception as err:  # datasets raises many types for malformed files (ArrowInvalid, DatasetGenerationError, ...)
        raise UserError(f"could not read {_name(source)} as {source.kind}: {_one_line(err)}") from err

    if source.kind != "text":
        if text_key not in corpus.column_names:
            raise UserError(
                f"text key {text_key!r} not found in {_name(source)}: columns are {corpus.column_names}; pick one with --text-key"
            )
        if text_key != "text":
            corpus = corpus.select_columns([text_key]).rename_column(text_key, "text")
    feature = corpus.features["text"]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise UserError(f"column {text_key!r} in {_name(source)} is {feature}, not text")
    return corpus.select_columns(["text"])


def _take_prefix(corpus: datasets.Dataset, max_docs: int | None, max_bytes: int | None) -> datasets.Dataset:
    keep = len(corpus) if max_docs is None else min(max_docs, len(corpus))
    if max_bytes is not None:
        total = 0
        for i, text in enumerate(corpus.select(range(keep))["text"]):
            if total >= max_bytes:
                keep = i
                break
            total += len(text.encode("utf-8"))
    return corpus if keep == len(corpus) else corpus.select(range(keep))


def _has_rows(path: str, kind: str) -> bool:
    if Path(path).stat().st_size == 0:
        return False
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows > 0
        except Exception:
            return True  # unreadable: let load_dataset report it
    return True


def _looks_like_hub_name(value: str) -> bool:
    return bool(_HUB_NAME.match(value)) and Path(value).suffix.lower() not in _FORMATS


def _format_list() -> str:
    return ", ".join(sorted(_FORMATS))


def _name(source: Source) -> str:
    if source.kind == "hub":
        return source.name
    if source.kind == STDLIB:
        return "the stdlib corpus"
    return source.files[0] if len(source.files) == 1 else f"{len(source.files)} {source.kind} files"


def _one_line(err: BaseException) -> str:
    """The error and its root cause on one line (datasets wraps the useful message in generic ones)."""
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(err) if root is err else f"{err} ({type(root).__name__}: {root})"
    return " ".join(text.split())[:400]
