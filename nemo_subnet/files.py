"""Files a kill never leaves half-written, and append-only JSON-lines logs read back after one.

- ``write_text_atomic`` / ``write_bytes_atomic``: a temporary file beside the target, renamed over it once complete (``os.replace``
  is atomic on POSIX file systems): readers see the old file or the new one, never a prefix. The temporary
  name is per process, so several ranks may write the same file at once.
- ``read_jsonl``: the records of an append-only ``.jsonl`` log (metrics, search candidates). A writer
  killed mid-line (SIGKILL, OOM, a lost node, a full disk) leaves a last line without its newline or with
  cut JSON; that line is dropped and reported, so a resume continues from the last complete record. A bad
  line anywhere else is not a kill's doing: it is an error naming the file and the line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
