"""Small shared benchmark harness: providers x modes, time and peak memory, CSV rows, PNG plots.

A benchmark script defines `Provider`s (a name, an availability check, and a `build(case)` returning a
zero-argument closure that computes a scalar loss from freshly prepared inputs) and calls `run_case` per
(provider, mode, case). Results are appended to a CSV (with device name and git commit) by writing a
temporary file and renaming it; `plot` draws time and peak memory per provider.

Timing (`Stopwatch`, `time_calls_ms`): CUDA events recorded around the work on GPU (the host does not wait between
reps' launches), perf_counter on CPU; median over `reps` after `warmup`. Peak memory: CUDA's
max_memory_allocated above the pre-call baseline; on CPU the peak of live tensor storage created during
the call, tracked through a TorchDispatchMode (a separate, untimed run).
"""

from __future__ import annotations

import csv
import enum
import os
import statistics
import subprocess
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nemo_subnet.files import atomic_write, write_csv_atomic, write_text_atomic


class Mode(str, enum.Enum):
    FWD = "fwd"  # loss only
    BWD = "bwd"  # backward only (forward run untimed before each rep)
    FULL = "full"  # forward + backward


@dataclass(frozen=True)
class Provider:
    name: str
    build: Callable[[dict], Callable[[], torch.Tensor]]  # case -> closure returning a scalar loss
    available: Callable[[torch.device], bool] = lambda device: True


@dataclass
class Result:
    ms: float
    peak_mb: float
    note: str = ""


def on_gpu(device: torch.device) -> bool:
    """A real GPU: the CPU backend's device-discipline mode names the host ``cuda:0``, and CUDA events, streams
    and memory statistics do not exist there."""
    return device.type == "cuda" and torch.cuda.is_available()


def device_name(device: torch.device) -> str:
    if on_gpu(device):
        return torch.cuda.get_device_name(device).replace(" ", "_")
    return "cpu"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _sync(device: torch.device) -> None:
    if on_gpu(device):
        torch.cuda.synchronize(device)


def _step(fn: Callable[[], torch.Tensor], mode: Mode) -> None:
    loss = fn()
    if mode is not Mode.FWD:
        loss.backward()


class Stopwatch:
    """Milliseconds of GPU (CUDA events recorded on the current stream around the work) or host work."""

    def __init__(self, device: torch.device):
        self.cuda = on_gpu(device)

    def __enter__(self):
        if self.cuda:
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self._end.record()
        else:
            self.ms = (time.perf_counter() - self._t0) * 1e3

    def elapsed_ms(self) -> float:
        """The interval's milliseconds (waits for the GPU to finish it)."""
        if self.cuda:
            self._end.synchronize()
            return self._start.elapsed_time(self._end)
        return self.ms


def time_calls_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> list[float]:
    """Milliseconds of each of ``reps`` calls of ``fn`` after ``warmup`` calls (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    watches = []
    for _ in range(reps):
        with Stopwatch(device) as watch:
            fn()
        watches.append(watch)
    return [w.elapsed_ms() for w in watches]


def _time_ms(fn: Callable[[], torch.Tensor], mode: Mode, device: torch.device, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        _step(fn, mode)
    times = []
    for _ in range(reps):
        if mode is Mode.BWD:
            loss = fn()
            _sync(device)
            with Stopwatch(device) as watch:
                loss.backward()
        else:
            _sync(device)
            with Stopwatch(device) as watch:
                _step(fn, mode)
        times.append(watch.elapsed_ms())
    return statistics.median(times)


class _LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages of tensors that ops return while active (CPU stand-in for CUDA's
    max_memory_allocated). A storage counts from the first op that returns it until the last tensor on it
    dies; kernel-internal scratch is not seen."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage ptr -> [nbytes, live tensors]

    def _drop(self, key: int) -> None:
        entry = self._refs[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self._refs[key]
            self.live -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            key = t.untyped_storage().data_ptr()
            if not key:
                continue
            if key in self._refs:
                self._refs[key][1] += 1
            else:
                self._refs[key] = [t.untyped_storage().nbytes(), 1]
                self.live += self._refs[key][0]
                self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._drop, key)
        return out


def _peak_mb(fn: Callable[[], torch.Tensor], mode: Mode, device: torch.device) -> float:
    if on_gpu(device):
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        _step(fn, mode)
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with _LiveBytes() as tracker:
        _step(fn, mode)
    return tracker.peak / 2**20


def run_case(provider: Provider, mode: Mode, case: dict, device: torch.device, warmup: int = 2, reps: int = 5) -> Result:
    """Time and memory of one provider on one case; errors (e.g. out of memory) become a note."""
    try:
        fn = provider.build(case)
        ms = _time_ms(fn, mode, device, warmup, reps)
        peak = _peak_mb(fn, mode, device)
        return Result(ms, peak)
    except (RuntimeError, torch.OutOfMemoryError) as err:  # OOM or an unsupported configuration
        if on_gpu(device):
            torch.cuda.empty_cache()
        return Result(float("nan"), float("nan"), note=f"{type(err).__name__}: {str(err).splitlines()[0][:120]}")


FIELDS = ["timestamp", "device", "commit", "op", "provider", "mode", "N", "H", "V", "dtype", "ms", "peak_mb", "note"]


def write_markdown(path, lines: list[str]) -> None:
    """Write a results table atomically (temporary file beside it, then rename) and print it."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text_atomic(path, "\n".join(lines) + "\n")
    print("\n".join(lines))


def append_rows(csv_path: str, rows: list[dict]) -> None:
    """Append rows to csv_path atomically (write a temporary file beside it, then rename)."""
    existing: list[dict] = []
    if os.path.exists(csv_path):
        with open(csv_path, newline="") as f:
            existing = list(csv.DictReader(f))
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    write_csv_atomic(csv_path, FIELDS, ({k: row.get(k, "") for k in FIELDS} for row in existing + rows))


def row(device: torch.device, commit: str, op: str, provider: str, mode: Mode, case: dict, result: Result) -> dict:
    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device_name(device),
        "commit": commit, "op": op, "provider": provider, "mode": mode.value, "N": case["N"], "H": case.get("H", ""),
        "V": case["V"], "dtype": str(case["dtype"]).replace("torch.", ""), "ms": f"{result.ms:.3f}",
        "peak_mb": f"{result.peak_mb:.1f}", "note": result.note,
    }


def plot(csv_path: str, png_path: str, title: str) -> bool:
    """Grouped bars of time and peak memory per provider, one column per (op, mode), latest commit only.

    Returns False (and draws nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False
    latest = rows[-1]["commit"]
    rows = [r for r in rows if r["commit"] == latest and r["ms"] != "nan"]
    panels = sorted({(r["op"], r["mode"]) for r in rows})
    providers = sorted({r["provider"] for r in rows})
    fig, axes = plt.subplots(2, len(panels), figsize=(5 * len(panels), 7), squeeze=False)
    for col, (op, mode) in enumerate(panels):
        sel = [r for r in rows if r["op"] == op and r["mode"] == mode]
        configs = sorted({(int(r["N"]), int(r["V"]), r["H"]) for r in sel})
        width = 0.8 / max(1, len(providers))
        for p_idx, provider in enumerate(providers):
            got = {(int(r["N"]), int(r["V"]), r["H"]): r for r in sel if r["provider"] == provider}
            xs = [i + p_idx * width for i, c in enumerate(configs) if c in got]
            for ax, key in ((axes[0][col], "ms"), (axes[1][col], "peak_mb")):
                ax.bar(xs, [float(got[c][key]) for c in configs if c in got], width, label=provider)
        for ax, ylabel in ((axes[0][col], "time (ms)"), (axes[1][col], "peak memory (MiB)")):
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(configs))])
            ax.set_xticklabels([f"N{n}\nV{v}" + (f"\nH{h}" if h else "") for n, v, h in configs], fontsize=7)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{op} {mode}", fontsize=9)
        axes[0][col].legend(fontsize=7)
    fig.suptitle(f"{title} ({rows[0]['device']}, {latest})")
    fig.tight_layout()
    with atomic_write(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True
