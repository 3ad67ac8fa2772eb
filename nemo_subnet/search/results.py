"""A search's run directory: every candidate as it is evaluated, then the best, the Pareto front and plots.

    RUN/search.json      what was searched (space, budget, strategy, seed, model); resume checks it
    RUN/candidates.jsonl one line per evaluated candidate, appended and flushed (fsync) as soon as known
    RUN/candidates.csv   the same as a table (written at the end)
    RUN/best.yaml        the best sub-network (a SubnetConfig: `nemo-subnet extract --subnet RUN/best.yaml`)
    RUN/pareto.csv       candidates not dominated in (parameters, perplexity)
    RUN/progress.png     objective of every candidate and the best so far, by evaluation
    RUN/pareto.png       parameters vs perplexity, the front highlighted
    RUN/summary.json     best candidate, counts, timings

A record: ``index, key`` (the genome's active part), ``subnet`` (the SubnetConfig as a dict),
``objective``, ``params``, ``flops_per_token``, ``eval_seconds``, ``time`` (seconds since the search
started, over all sessions) and strategy extras (e.g. ``proxy_score``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nemo_subnet.files import read_jsonl, write_csv_atomic, write_jsonl_atomic, write_text_atomic

SEARCH_FILE = "search.json"
CANDIDATES = "candidates.jsonl"


def read_candidates(run_dir: str | Path) -> list[dict]:
    """Every candidate a search run directory recorded (a last line cut by a kill left out); [] when none."""
    return read_jsonl(Path(run_dir) / CANDIDATES)[0]


class RunDir:
    def __init__(self, path: str | Path, *, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._file = None

    def read_candidates(self) -> list[dict]:
        """Records of a previous session; a last line cut by a kill (no newline / bad JSON) is dropped."""
        path = self.path / CANDIDATES
        records, cut = read_jsonl(path)
        if cut and self.writer:  # rewrite without the cut line so appends stay parseable
            write_jsonl_atomic(path, records)
        return records

    def start(self, description: dict, *, overwrite: bool) -> bool:
        """Prepare the directory; True when it continues a previous session of the same search."""
        existing = self.path / SEARCH_FILE
        if existing.is_file() and not overwrite:
            previous = json.loads(existing.read_text())
            if previous != description:
                changed = sorted(k for k in set(previous) | set(description) if previous.get(k) != description.get(k))
                raise FileExistsError(f"{self.path} holds a different search (differs in {changed}): "
                                      "use another --out, or --overwrite to start over")
            return True
        if self.writer:
            if overwrite and self.path.exists():
                for name in (CANDIDATES, SEARCH_FILE):
                    (self.path / name).unlink(missing_ok=True)
            self.path.mkdir(parents=True, exist_ok=True)
            write_text_atomic(existing, json.dumps(description, indent=2, sort_keys=True))
        return False

    def append(self, record: dict) -> None:
        if not self.writer:
            return
        if self._file is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path / CANDIDATES, "a")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self, records: list[dict], best: dict, summary: dict, *, plots: bool = True) -> None:
        if not self.writer or not records:
            return
        from nemo_subnet.subnet.config import SubnetConfig

        self.close()
        SubnetConfig.from_dict(best["subnet"]).save(self.path / "best.yaml")
        _write_csv(self.path / "candidates.csv", records)
        front = pareto_front(records)
        _write_csv(self.path / "pareto.csv", front)
        write_text_atomic(self.path / "summary.json", json.dumps(summary, indent=2))
        if plots:
            plot(records, front, self.path)


def pareto_front(records: list[dict]) -> list[dict]:
    """Records no other record beats in both parameters and objective (ties kept once), by parameters."""
    front, best = [], float("inf")
    for record in sorted(records, key=lambda r: (r["params"], r["objective"])):
        if record["objective"] < best:
            front.append(record)
            best = record["objective"]
    return front


def _write_csv(path: Path, records: list[dict]) -> None:
    columns = ["index", "objective", "params", "flops_per_token", "eval_seconds", "time"]
    extra = sorted({k for r in records for k in r} - set(columns) - {"subnet", "key"})
    write_csv_atomic(path, columns + extra + ["subnet"], ({**r, "subnet": json.dumps(r["subnet"])} for r in records))


def plot(records: list[dict], front: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [r["objective"] for r in records]
    best = [min(values[: i + 1]) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(range(1, len(values) + 1), values, s=10, alpha=0.5, label="candidate")
    ax.plot(range(1, len(values) + 1), best, color="C3", label="best so far")
    ax.set(xlabel="evaluation", ylabel="validation perplexity", title="search progress")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "progress.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r["params"] for r in records], values, s=10, alpha=0.4, label="candidate")
    ax.plot([r["params"] for r in front], [r["objective"] for r in front], "o-", color="C3", label="Pareto front")
    ax.set(xlabel="parameters", ylabel="validation perplexity", title="parameters vs perplexity")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)
