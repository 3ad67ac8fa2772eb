"""Run metrics: a JSONL record per logged step / evaluation, TensorBoard scalars, and the peak FLOP/s of MFU
(the FLOPs themselves: ``nemo_subnet.models.counting``).

``metrics.jsonl`` holds one JSON object per line, ``{"kind": "train" | "valid", "step", "tokens", ...}``;
it is the source of truth (tokens-to-target and tests read it). On resume the records past the resumed
step are dropped first, so the file of a preempted-and-resumed run equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from nemo_subnet.files import read_jsonl, write_jsonl_atomic

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"

# dense bf16 peak FLOP/s per device (no sparsity)
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops(configured: float | None, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of one device: the configured value, else bf16 GPUs from the table, else None (CPU)."""
    if configured:
        return float(configured)
    if torch.cuda.is_available() and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name()
        for key, value in PEAK_BF16_FLOPS.items():
            if key in name:
                return value
    return None


class MetricsLogger:
    """Writes records on the main rank only; a no-op elsewhere."""

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self.writer = None
        if not enabled:
            return
        if resume_step is not None:
            truncate(self.path, resume_step)
        elif self.path.exists():
            self.path.unlink()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / TB_DIR), purge_step=(resume_step or 0) + 1)
        self.file = self.path.open("a")

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            kind, step = record["kind"], record["step"]
            for key, value in record.items():
                if key in ("kind", "step") or not isinstance(value, (int, float)) or value is None:
                    continue
                if isinstance(value, float) and not math.isfinite(value):
                    continue
                self.writer.add_scalar(f"{kind}/{key}", value, step)
            if "valid_loss" in record:
                self.writer.add_scalar("valid/loss_vs_tokens", record["valid_loss"], record["tokens"])
            self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()


def truncate(path: Path, step: int) -> None:
    """Keep only the records of ``path`` with step <= ``step`` (and none of a line a kill cut), atomically."""
    if not path.exists():
        return
    records, cut = read_jsonl(path)
    if cut:
        print(f"metrics: dropped the last line of {path}, cut when the run was killed", flush=True)
    write_jsonl_atomic(path, [r for r in records if r["step"] <= step])


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    """The run's records (a last line cut by a kill left out); a missing file is an error naming it."""
    path = Path(run_dir) / METRICS_FILE if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics at {path}: not a training run directory, or the run never logged")
    records, _ = read_jsonl(path)
    return [r for r in records if kind is None or r["kind"] == kind]
