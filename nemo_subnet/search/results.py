"""A search's run directory: every candidate as it is evaluated, then the best, the Pareto front and plots.

    RUN/search.json      what was searched (space, budget(s), strategy, seed, model, rungs); resume checks it
    RUN/candidates.jsonl one line per evaluation, appended and flushed (fsync) as soon as known
    RUN/candidates.csv   one row per candidate, at the highest rung it reached (written at the end)
    RUN/best.yaml        the best sub-network (a SubnetConfig: `nemo-subnet extract --subnet RUN/best.yaml`);
                         a family of budgets writes best_<budget>.yaml per budget instead
    RUN/pareto.csv       full-fidelity candidates not dominated in (parameters, perplexity)
    RUN/progress.png     objective of every candidate and the best so far, by evaluation
    RUN/pareto.png       parameters vs perplexity, the front highlighted
    RUN/summary.json     best candidate(s) per budget, counts, timings, tokens and FLOPs in all and per rung

A candidate's first line: ``index, key`` (the genome's active part), ``rung`` (0), ``objective``,
``batches``/``tokens``/``flops`` (of this evaluation: validation micro-batches, tokens, executed forward
FLOPs), ``eval_seconds``, ``time`` (seconds since the search started, over all sessions), ``params``,
``flops_per_token`` (training FLOPs of the sub-network), ``budget`` (a family's bin), strategy extras
(e.g. ``proxy_score``) and ``subnet`` (the SubnetConfig as a dict). A promotion to a higher rung is a
line with the same ``index`` and ``key`` and its own ``rung, objective, batches, tokens, flops, ...``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nemo_subnet.files import read_jsonl, write_csv_atomic, write_jsonl_atomic, write_text_atomic

SEARCH_FILE = "search.json"
CANDIDATES = "candidates.jsonl"


def best_file(targets, index: int = 0) -> str:
    """The file holding the best sub-network of budget ``index`` of ``targets`` (None or one target: best.yaml)."""
    return f"best_{targets[index]:g}.yaml" if targets is not None and len(targets) > 1 else "best.yaml"


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

    def finish(self, records: list[dict], best: dict[str, dict], summary: dict, *, plots: bool = True) -> None:
        """``best``: file name -> the record of the sub-network it holds."""
        if not self.writer or not records:
            return
        from nemo_subnet.subnet.config import SubnetConfig

        self.close()
        for name, record in best.items():
            SubnetConfig.from_dict(record["subnet"]).save(self.path / name)
        _write_csv(self.path / "candidates.csv", records)
        top = max(r.get("rung", 0) for r in records)  # the front compares full-fidelity values only
        front = pareto_front([r for r in records if r.get("rung", 0) == top])
        _write_csv(self.path / "pareto.csv", front)
        write_text_atomic(self.path / "summary.json", json.dumps(summary, indent=2))
        if plots:
            plot(records, front, self.path)


def merge_evaluations(evaluations: list[dict]) -> list[dict]:
    """One record per candidate from candidates.jsonl's lines: its first line, with ``objective``, ``rung``,
    ``batches`` and ``tokens`` of the highest rung it reached, ``objectives`` (one per rung) and
    ``flops`` / ``eval_seconds`` summed over its evaluations. In the order candidates were first asked."""
    merged: dict[int, dict] = {}
    for record in sorted(evaluations, key=lambda r: r.get("rung", 0)):
        if record.get("rung", 0) == 0:
            merged[record["index"]] = dict(record, rung=0, objectives=[record["objective"]])
            continue
        candidate = merged[record["index"]]
        candidate["objectives"].append(record["objective"])
        candidate.update(rung=record["rung"], objective=record["objective"],
                         **{k: record[k] for k in ("batches", "tokens") if k in record})
        for k in ("flops", "eval_seconds"):
            if k in record:
                candidate[k] = candidate.get(k, 0) + record[k]
    return [merged[i] for i in sorted(merged)]


def pareto_front(records: list[dict]) -> list[dict]:
    """Records no other record beats in both parameters and objective (ties kept once), by parameters."""
    front, best = [], float("inf")
    for record in sorted(records, key=lambda r: (r["params"], r["objective"])):
        if record["objective"] < best:
            front.append(record)
            best = record["objective"]
    return front


def _write_csv(path: Path, records: list[dict]) -> None:
    columns = ["index", "objective", "rung", "params", "flops_per_token", "eval_seconds", "time"]
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
