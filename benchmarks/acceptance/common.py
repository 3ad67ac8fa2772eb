"""What every section shares: the run context, the recorder a section reports through, atomic writes.

A section is a function ``run(ctx, rec)``. It records numbers (``rec.number``), checks (``rec.check``; a
failed required check fails the section), artifacts for later sections (``rec.artifact``) or a skip with
its reason (``rec.skip``). Every call rewrites the section's result file atomically, so when the runner
kills a section at its time budget the results recorded so far survive.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nemo_subnet.files import write_text_atomic


def atomic_write_text(path: Path, text: str) -> None:
    """Write beside ``path`` and rename: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def jsonable(value):
    """Floats that JSON can hold (nan / inf become strings), tuples as lists, paths as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(jsonable(data), indent=2) + "\n")


@dataclass
class Context:
    """Everything a section child needs, passed as a JSON file."""

    out: Path
    """The --out directory (reports, logs, small copies of run outputs)."""
    work: Path
    """Scratch space (data, checkpoints, run directories); large."""
    profile: str
    """"gpu" or "smoke" (see profiles.py)."""
    peak_flops: float | None = None
    """Peak FLOP/s per device for MFU (None: the training metrics' table of known GPUs)."""
    artifacts: dict = field(default_factory=dict)
    """Outputs of earlier sections (paths, numbers), by name."""

    @property
    def smoke(self) -> bool:
        return self.profile == "smoke"

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "Context":
        data = json.loads(Path(path).read_text())
        return cls(out=Path(data["out"]), work=Path(data["work"]), profile=data["profile"],
                   peak_flops=data["peak_flops"], artifacts=data["artifacts"])


class Recorder:
    """Collects one section's numbers, checks, artifacts; persists them after every call."""

    def __init__(self, section: str, result_path: Path | None):
        self.section = section
        self.result_path = result_path
        self.numbers: dict = {}
        self.checks: list[dict] = []
        self.artifacts: dict = {}
        self.skipped: str | None = None
        self.error: str | None = None
        self.started = time.time()

    def number(self, key: str, value) -> None:
        self.numbers[key] = value
        self.flush()

    def check(self, name: str, ok: bool, detail: str = "", *, required: bool = True) -> bool:
        """Record a check. ``required=False``: a target reported as met / missed that does not fail the section."""
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail, "required": required})
        progress(self.section, f"{'ok  ' if ok else ('MISS' if not required else 'FAIL')} {name}"
                 + (f" ({detail})" if detail else ""))
        self.flush()
        return bool(ok)

    def artifact(self, key: str, value) -> None:
        self.artifacts[key] = value
        self.flush()

    def skip(self, reason: str) -> None:
        self.skipped = reason
        progress(self.section, f"skipped: {reason}")
        self.flush()

    def to_dict(self) -> dict:
        return {"numbers": self.numbers, "checks": self.checks, "artifacts": self.artifacts,
                "skipped": self.skipped, "error": self.error}

    def flush(self) -> None:
        if self.result_path is not None:
            write_json(self.result_path, self.to_dict())


def progress(section: str, message: str) -> None:
    """One progress line; the runner echoes lines that start with two spaces and a bracket to the console."""
    print(f"  [{section}] {message}", flush=True)
    sys.stdout.flush()
