"""The search loop: a strategy asks, an objective evaluates (rung by rung), the run directory records; resumable.

``search_loop`` knows nothing of models: it takes a resolved space, a strategy and any objective
``SubnetConfig -> float`` (tests use a pure-Python one; with ``rungs`` it is called as
``objective(subnet, batches)``). Every evaluation is one line of candidates.jsonl: a candidate's first
(rung 0) line carries the candidate (sub-network, parameters, budget), promotions to higher rungs
(fidelity.py) add lines with the same ``index`` and ``key``.

Resume: a restarted search replays the strategy from its seed and the ladder from the recorded values;
whenever an evaluation (candidate, rung) is already in the file it is told the recorded value instead of
being run again. Strategies and promotions are deterministic given the told values, so the replay walks
the same path and picks up exactly where the killed run stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from nemo_subnet.importance.scores import LayerMetric
from nemo_subnet.search.fidelity import DEFAULT_REDUCTION, Ladder
from nemo_subnet.search.objective import flops_per_token
from nemo_subnet.search.results import RunDir, best_file, merge_evaluations
from nemo_subnet.search.space import Budget, ResolvedSpace, SearchSpaceError
from nemo_subnet.search.strategies import Strategy
from nemo_subnet.subnet.config import SubnetConfig


@dataclass
class SearchResult:
    best: SubnetConfig
    """The best sub-network (of the first budget, for a family)."""
    best_objective: float
    best_params: int
    run_dir: Path
    records: list[dict]
    """One per candidate; ``objective`` is its value at the highest rung it reached."""
    evaluated: int
    """Evaluations run in this session (the rest were replayed from the run directory)."""
    budgets: list[dict] = field(default_factory=list)
    """Per budget: ``target``, ``bounds``, ``candidates``, ``best`` (SubnetConfig), ``objective``, ``params``, ``file``."""


class _Session:
    """The state one search_loop call walks through: candidates, the ladder, what is replayed or run."""

    def __init__(self, rspace, strategy, objective, run_dir, previous, rungs, reduction):
        self.rspace, self.strategy, self.objective, self.run_dir = rspace, strategy, objective, run_dir
        self.done = {(tuple(r["key"]), r.get("rung", 0)): r for r in previous}
        self.rungs = list(rungs) if rungs else None
        self.ladder = Ladder(len(self.rungs or [None]), reduction, len(strategy.bins))
        self.cost: Callable | None = getattr(objective, "cost", None)
        self.first: list[dict] = []
        """Each candidate's rung-0 record, by index."""
        self.genomes: list = []
        self.events: list[dict] = []
        self.evaluated = 0
        self.elapsed_before = max((r["time"] for r in previous), default=0.0)
        self.start = time.perf_counter()

    def _run(self, subnet: SubnetConfig, rung: int) -> dict:
        batches = None if self.rungs is None else self.rungs[rung]
        t0 = time.perf_counter()
        value = float(self.objective(subnet) if batches is None else self.objective(subnet, batches))
        record = {"rung": rung, "objective": value if math.isfinite(value) else float("inf")}
        if batches is not None:
            record["batches"] = batches
        if self.cost is not None:
            record["tokens"], record["flops"] = self.cost(subnet, batches)
        record.update(eval_seconds=round(time.perf_counter() - t0, 4),
                      time=round(self.elapsed_before + time.perf_counter() - self.start, 3))
        self.evaluated += 1
        return record

    def evaluate(self, index: int, rung: int, fields: dict | None = None) -> None:
        """Candidate ``index`` at ``rung``: replayed when recorded, else run and appended; then told."""
        genome = self.genomes[index]
        key = self.rspace.key(genome)
        record = self.done.get((key, rung))
        if record is None:
            subnet = SubnetConfig.from_dict(fields["subnet"] if rung == 0 else self.first[index]["subnet"])
            record = {"index": index, "key": list(key), **self._run(subnet, rung), **(fields or {})}
            self.run_dir.append(record)
        self.events.append(record)
        if rung == 0:
            self.first.append(record)
        self.ladder.add(self.strategy.bin_of[key], rung, index, record["objective"])
        self.strategy.tell(genome, record["objective"])

    def promote(self, final: bool = False) -> None:
        while (step := self.ladder.promotion(final)) is not None:
            _, rung, index = step
            self.evaluate(index, rung + 1)

    def best(self, records: list[dict], bin_index: int | None = None) -> dict | None:
        """Lowest objective among the merged ``records`` at the highest rung reached (in ``bin_index``)."""
        pool = [r for r in records if bin_index is None or self.strategy.bin_of[tuple(r["key"])] == bin_index]
        top = max((r["rung"] for r in pool), default=0)
        pool = [r for r in pool if r["rung"] == top]
        return min(pool, key=lambda r: (r["objective"], r["index"])) if pool else None


def search_loop(rspace: ResolvedSpace, strategy: Strategy, objective: Callable[..., float],
                run_dir: RunDir, evaluations: int, *, previous: list[dict] = (), scores=None,
                layer_metric: LayerMetric = LayerMetric.COSINE, seq_length: int = 128,
                rungs: Sequence[int] | None = None, reduction: int = DEFAULT_REDUCTION,
                budgets: Sequence[Budget] | None = None, progress: bool = True, plots: bool = True) -> SearchResult:
    """``evaluations`` distinct candidates; ``rungs`` the global micro-batches of each fidelity (fewest first,
    None: the objective's own single fidelity); ``budgets`` label the strategy's bins."""
    session = _Session(rspace, strategy, objective, run_dir, previous, rungs, reduction)
    bar = _progress_bar(evaluations, progress and run_dir.writer)
    targets = [b.target for b in budgets] if budgets else None
    try:
        while len(session.first) < evaluations:
            genome = strategy.ask()
            if genome is None:
                break
            sizes = rspace.sizes(genome)
            fields = {"params": rspace.params(genome), "flops_per_token": flops_per_token(rspace.cfg, sizes, seq_length),
                      **strategy.extras(genome), "subnet": rspace.subnet(genome, scores, layer_metric).to_dict()}
            if targets and len(targets) > 1:
                fields["budget"] = targets[strategy.bin_of[rspace.key(genome)]]
            session.genomes.append(genome)
            session.evaluate(len(session.first), 0, fields)
            session.promote()
            if bar is not None:
                bar.set_postfix_str(_postfix(session), refresh=False)
                bar.update(1)
        session.promote(final=True)  # close the ladder: every bin ends with full-fidelity results
    finally:
        if bar is not None:
            bar.close()
        run_dir.close()
    if not session.first:
        raise SearchSpaceError("the strategy proposed no candidate")
    return _finish(session, run_dir, targets, plots)


def _postfix(session: _Session) -> str:
    best = session.best(merge_evaluations(session.events))
    rung = f" (rung {best['rung']})" if session.rungs and len(session.rungs) > 1 else ""
    return f"best ppl {best['objective']:.3f}{rung} @ {best['params']:,} params"


def _finish(session: _Session, run_dir: RunDir, targets, plots: bool) -> SearchResult:
    strategy, records = session.strategy, merge_evaluations(session.events)
    family = targets is not None and len(targets) > 1
    budgets, files = [], {}
    for b, bounds in enumerate(strategy.bins):
        best = session.best(records, b)
        if best is None:
            continue
        name = best_file(targets, b)
        files[name] = best
        budgets.append({"target": targets[b] if targets else None, "bounds": list(bounds), "file": name,
                        "candidates": sum(strategy.bin_of[tuple(c["key"])] == b for c in records), "best": best})
    rung_stats = []
    for rung in range(session.ladder.rungs):
        events = [e for e in session.events if e.get("rung", 0) == rung]
        rung_stats.append({"rung": rung, "batches": session.rungs[rung] if session.rungs else None,
                           "evaluations": len(events), "tokens": sum(e.get("tokens", 0) for e in events),
                           "flops": sum(e.get("flops", 0.0) for e in events)})
    first = budgets[0]["best"]
    summary = {"candidates": len(records), "evaluations": len(session.events),
               "evaluated_this_session": session.evaluated, "replayed": len(session.events) - session.evaluated,
               "seconds": round(session.elapsed_before + time.perf_counter() - session.start, 3),
               "tokens": sum(r["tokens"] for r in rung_stats), "flops": sum(r["flops"] for r in rung_stats),
               "rungs": rung_stats, "budgets": budgets}
    if not family:
        summary.update(best=first, best_at_evaluation=first["index"] + 1)
    run_dir.finish(records, files, summary, plots=plots)
    return SearchResult(
        best=SubnetConfig.from_dict(first["subnet"]), best_objective=first["objective"], best_params=first["params"],
        run_dir=run_dir.path, records=records, evaluated=session.evaluated,
        budgets=[{**b, "best": SubnetConfig.from_dict(b["best"]["subnet"]), "objective": b["best"]["objective"],
                  "params": b["best"]["params"]} for b in budgets])


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cand", desc="search", dynamic_ncols=True)
