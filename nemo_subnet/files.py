"""Files a kill never leaves half-written, and append-only JSON-lines logs read back after one.

- ``atomic_write``: a temporary path beside the target, renamed over it once the block completes (``os.replace``
  is atomic on POSIX file systems): readers see the old file or the new one, never a prefix; an error removes
  the temporary file. The temporary name is per process, so several ranks may write the same file at once.
  ``write_text_atomic`` is the common case; writers that need a path (``safetensors``, ``savefig``) use the
  context manager itself.
- ``read_jsonl``: the records of an append-only ``.jsonl`` log (metrics, search candidates). A writer
  killed mid-line (SIGKILL, OOM, a lost node, a full disk) leaves a last line without its newline or with
  cut JSON; that line is dropped and reported, so a resume continues from the last complete record. A bad
  line anywhere else is not a kill's doing: it is an error naming the file and the line.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` when the block ends without an error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_csv_atomic(path: str | Path, fieldnames: list[str], rows, *, extrasaction: str = "ignore") -> Path:
    """A CSV table (header + one line per dict in ``rows``) written through ``write_text_atomic``."""
    import csv
    import io

    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, extrasaction=extrasaction)
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def read_jsonl(path: str | Path) -> tuple[list[dict], bool]:
    """(records of the complete lines, whether a cut last line was dropped); ([], False) if ``path`` is absent."""
    path = Path(path)
    if not path.is_file():
        return [], False
    lines = path.read_text().splitlines(keepends=True)
    records = []
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if last:
                return records, True
            raise ValueError(f"{path} line {number} is not JSON ({err.msg}) and is not the last line, so a "
                             "killed writer did not cut it: the file is damaged; restore or remove it") from None
        if last and not line.endswith("\n"):
            return records, True  # complete JSON by chance, but its writer did not finish the line
        records.append(record)
    return records, False


def write_jsonl_atomic(path: str | Path, records: list[dict]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
