"""Peak memory of real training steps, in this process: a thin driver around ``nemo_subnet.training.loop.train``.

    python benchmarks/kd_memory_probe.py --config run.yaml --out result.json [--mode profiler|rss] [--source DIR]

Run it in a fresh subprocess per measurement (the benchmarks do): nothing of an earlier case stays resident.

Two measurements of the same thing, the peak of memory held by tensors during the training steps:

- ``profiler`` (the reference): torch.profiler with ``profile_memory`` records every allocation and free of
  the CPU allocator (c10) from before the model is built, with its size. The running sum of those events is
  the bytes held by live tensors at each moment — exactly what a GPU's caching allocator would be asked for,
  without allocator slack, page granularity or Python objects. The peak is taken over the step window: from
  the first call of megatron's forward/backward schedule (the first micro-batch of step 1) to the end of
  ``train``. Loading (a checkpoint's tensors held next to the model's while they are copied) happens before
  it and is reported separately.
- ``rss``: Linux's resident-set high-water mark (VmHWM, reset to the current RSS by writing 5 to
  /proc/self/clear_refs when the window opens) minus the resident set after imports, before ``train``.
  glibc maps large tensors with mmap and unmaps them when freed, so the RSS follows tensors, but it also
  holds the interpreter's and the allocator's own growth, dataset index arrays and touched file pages; it
  is an upper bound, compared once against ``profiler`` in the calibration table.

``--source DIR`` imports nemo_subnet (and its ``kernels`` / ``recipes`` packages, mapped as pyproject maps
them) from another checkout, e.g. a ``git worktree`` of an older commit, instead of the installed one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

WINDOW_MARK = "kd_memory_probe/window_open"


def _use_source(source: Path) -> None:
    """Import nemo_subnet from ``source``: the package directory, plus kernels/ and recipes/ under its names."""
    sys.path.insert(0, str(source))
    import nemo_subnet

    if Path(nemo_subnet.__file__).resolve().parent != (source / "nemo_subnet").resolve():
        raise SystemExit(f"nemo_subnet was imported from {nemo_subnet.__file__}, not from {source}")
    for name, folder in (("nemo_subnet.kernels", "kernels"), ("nemo_subnet.recipes", "recipes")):
        init = source / folder / "__init__.py"
        if not init.is_file():
            continue
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(source / folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


class _Window:
    """Marks the step window: opened by the first call of megatron's schedule, closed after ``train``."""

    def __init__(self, mode: str):
        self.mode = mode
        self.opened_ns: int | None = None
        self.hwm_before_kib: int | None = None

    def open(self) -> None:
        if self.opened_ns is not None:
            return
        self.opened_ns = time.time_ns()
        if self.mode == "profiler":
            import torch

            with torch.profiler.record_function(WINDOW_MARK):  # an event on the profiler's own clock
                pass
        if self.mode == "rss":
            self.hwm_before_kib = _status_kib("VmHWM")  # the loading peak
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS

    def patch_schedules(self) -> None:
        """Every schedule megatron hands out (no-pipelining, 1F1B, interleaved) opens the window when called."""
        from megatron.core.pipeline_parallel import schedules

        for name in ("forward_backward_no_pipelining", "forward_backward_pipelining_without_interleaving",
                     "forward_backward_pipelining_with_interleaving"):
            original = getattr(schedules, name)

            def marked(*args, __original=original, **kwargs):
                self.open()
                return __original(*args, **kwargs)

            setattr(schedules, name, marked)


def _timeline(events, opened_ns: int, points: int = 2000) -> list[tuple[float, float]]:
    """(ms since the window opened, MiB live) at most ``points`` pairs, each the maximum of its time bin."""
    live, curve = 0, []
    for event in events:
        live += event.nbytes()
        if event.start_ns() >= opened_ns:
            curve.append(((event.start_ns() - opened_ns) / 1e6, live / 2**20))
    if not curve:
        return []
    span = curve[-1][0] or 1.0
    bins: dict[int, tuple[float, float]] = {}
    for t, mib in curve:
        key = min(points - 1, int(t / span * points))
        if key not in bins or mib > bins[key][1]:
            bins[key] = (t, mib)
    return [bins[k] for k in sorted(bins)]


def _profiler_peaks(prof, timeline: bool = False) -> dict:
    """Running sum of the allocator's events: peak before and inside the window (bytes)."""
    all_events = prof.profiler.kineto_results.events()
    marks = [e.start_ns() for e in all_events if e.name() == WINDOW_MARK]
    if not marks:
        raise RuntimeError("the step window never opened: train() ran no schedule")
    opened_ns = min(marks)
    events = [e for e in all_events if e.name() == "[memory]" and e.device_type().name == "CPU"]
    events.sort(key=lambda e: e.start_ns())
    live, load_peak, step_peak, peak_ns, window_start_live = 0, 0, 0, None, None
    for event in events:
        live += event.nbytes()
        inside = event.start_ns() >= opened_ns
        if inside:
            if window_start_live is None:
                window_start_live = live - event.nbytes()
            if live > step_peak:
                step_peak, peak_ns = live, event.start_ns()
        else:
            load_peak = max(load_peak, live)
    # the ops running at the peak, outermost first: where in the step it happens
    at_peak = sorted((e for e in all_events if e.name() != "[memory]" and e.start_ns() <= (peak_ns or 0) <= e.end_ns()),
                     key=lambda e: (e.start_ns(), -e.end_ns()))
    return {"peak_bytes": step_peak, "load_peak_bytes": load_peak, "window_start_bytes": window_start_live or 0,
            "end_bytes": live, "n_events": len(events), "ops_at_peak": [e.name() for e in at_peak][-12:],
            "timeline_ms_mib": _timeline(events, opened_ns) if timeline else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--mode", choices=("profiler", "rss"), default="profiler")
    parser.add_argument("--source", type=Path, help="import nemo_subnet from this checkout instead")
    parser.add_argument("--timeline", action="store_true", help="profiler mode: also keep the live-bytes curve")
    args = parser.parse_args()
    if args.source is not None:
        _use_source(args.source.resolve())

    import torch
    from nemo_subnet.runtime import shutdown_runtime
    from nemo_subnet.training.config import TrainConfig
    from nemo_subnet.training.loop import train

    config = TrainConfig.load(args.config)
    window = _Window(args.mode)
    window.patch_schedules()
    baseline_kib = _status_kib("VmRSS")
    started = time.perf_counter()
    result: dict = {"mode": args.mode, "threads": torch.get_num_threads()}
    if args.mode == "profiler":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            train(config)
        result.update(_profiler_peaks(prof, args.timeline))
    else:
        train(config)
        result.update(rss_peak_bytes=(_status_kib("VmHWM") * 1024) - baseline_kib * 1024,
                      rss_load_peak_bytes=(window.hwm_before_kib or 0) * 1024 - baseline_kib * 1024,
                      baseline_rss_bytes=baseline_kib * 1024)
    shutdown_runtime()
    result["wall_s"] = time.perf_counter() - started
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
