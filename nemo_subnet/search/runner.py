"""Run a search: a strategy asks, an objective evaluates, the run directory records; resumable.

``search_loop`` knows nothing of models: it takes a resolved space, a strategy and any objective
``SubnetConfig -> float`` (tests use a pure-Python one). ``run_search(SearchConfig)`` wires the real
pieces: checkpoint -> masked super-network, prepared data -> validation batches, importance scores.

Resume: candidates.jsonl holds every finished evaluation. A restarted search replays the strategy from
its seed, and whenever it asks a candidate already in the file it is told the recorded value instead of
evaluating it again; strategies are deterministic given the told values, so the replay walks the same
path and picks up exactly where the killed run stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nemo_subnet.config import NonNegativeInt, PositiveInt
from nemo_subnet.importance.scores import LayerMetric
from nemo_subnet.search.objective import flops_per_token
from nemo_subnet.search.results import RunDir
from nemo_subnet.search.space import Budget, ResolvedSpace, SearchSpace, SearchSpaceError, check_budget, resolve_space
from nemo_subnet.search.strategies import Strategy, StrategyConfig, StrategyName, make_strategy
from nemo_subnet.subnet.config import SubnetConfig


@dataclass
class EvalConfig:
    batches: PositiveInt = 8
    """Validation micro-batches per candidate (global; split over data-parallel ranks)."""
    seq_length: PositiveInt = 128
    micro_batch_size: PositiveInt = 4
    skip_batches: NonNegativeInt = 0
    """Validation micro-batches skipped first (keep them for a final, unbiased test of the winner)."""
    seed: int = 1234
    """Seed of the dataset's sample shuffle."""
    compile: bool = False
    """Evaluate with the super-network's static-graph mode compiled once (``compile_supernet``): no
    recompilation per candidate, skipped layers still computed. Pays off on GPU for many candidates."""


@dataclass
class SearchConfig:
    """Everything one search run reads: ``nemo-subnet search``'s flags, its ``--config`` file and the pipeline's
    ``search`` section are this dataclass (the pipeline fills in ckpt, data, out and scores)."""

    ckpt: Path | None = None
    """Super-network checkpoint (required)."""
    data: Path | None = None
    """Directory made by ``nemo-subnet data prepare`` (its valid split is the held-out set; required)."""
    out: Path | None = None
    """Run directory (required)."""
    space: SearchSpace | Path = field(default_factory=SearchSpace)
    budget: Budget | None = None
    """Overrides the space's budget."""
    strategy: StrategyName = StrategyName.EVOLUTIONARY
    evaluations: PositiveInt = 100
    """Distinct candidates evaluated (replayed ones from a resumed run count)."""
    seed: int = 0
    scores: Path | None = None
    """Importance scores (``nemo-subnet importance``) for importance ordering and the proxy strategy."""
    layer_metric: LayerMetric = LayerMetric.COSINE
    strategy_config: StrategyConfig = field(default_factory=StrategyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tp: PositiveInt = 1
    pp: PositiveInt = 1
    overwrite: bool = False
    progress: bool = True
    plots: bool = True


@dataclass
class SearchResult:
    best: SubnetConfig
    best_objective: float
    best_params: int
    run_dir: Path
    records: list[dict]
    evaluated: int
    """Candidates evaluated in this session (the rest were replayed from the run directory)."""


@dataclass
class Prepared:
    """Everything checked before any model is built: bad input fails here, fast."""

    rspace: ResolvedSpace
    bounds: tuple[int, int]
    strategy: Strategy
    scores: object | None
    description: dict


def prepare(config: SearchConfig, cfg) -> Prepared:
    missing = [name for name in ("ckpt", "data", "out") if getattr(config, name) is None]
    if missing:
        raise SearchSpaceError(f"a search needs {', '.join(missing)} (--{' --'.join(missing)})")
    space = config.space if isinstance(config.space, SearchSpace) else SearchSpace.load(config.space)
    budget = config.budget or space.budget
    if budget is None:
        raise SearchSpaceError("no parameter budget: give --budget (fraction of the model or a count) or budget: in the space")
    if config.evaluations < 1:
        raise SearchSpaceError(f"evaluations must be at least 1, got {config.evaluations}")
    rspace = resolve_space(space, cfg)
    bounds = check_budget(rspace, budget)
    scores = None
    if config.scores is not None:
        from nemo_subnet.importance.scores import ImportanceScores

        scores = ImportanceScores.load(config.scores)
        scores.check_model(cfg)
    if scores is None and space.ordering.value == "importance":
        raise SearchSpaceError("the space orders units by importance but no scores were given: pass --scores FILE "
                               "(from `nemo-subnet importance`) or set ordering: first_k")
    strategy = make_strategy(config.strategy, rspace, bounds, config.seed, config.strategy_config,
                             scores=scores, layer_metric=config.layer_metric)
    description = {
        "space": {**space.to_dict(), "budget": dataclasses.asdict(budget)}, "choices": rspace.choices,
        "bounds": list(bounds), "strategy": StrategyName(config.strategy).value, "seed": config.seed,
        "strategy_config": dataclasses.asdict(config.strategy_config), "model": str(Path(config.ckpt).resolve()),
        "scores": str(Path(config.scores).resolve()) if config.scores else None,
        "layer_metric": LayerMetric(config.layer_metric).value,
        # compile is how candidates are evaluated, not which search this is: a run resumes with it on or off
        "eval": {k: v for k, v in dataclasses.asdict(config.eval).items() if k != "compile"},
        "data": str(Path(config.data).resolve()),
    }
    return Prepared(rspace, bounds, strategy, scores, description)


def search_loop(rspace: ResolvedSpace, strategy: Strategy, objective: Callable[[SubnetConfig], float],
                run_dir: RunDir, evaluations: int, *, previous: list[dict] = (), scores=None,
                layer_metric: LayerMetric = LayerMetric.COSINE, seq_length: int = 128,
                progress: bool = True, plots: bool = True) -> SearchResult:
    done = {tuple(r["key"]): r for r in previous}
    records: list[dict] = []
    elapsed_before = max((r["time"] for r in previous), default=0.0)
    start = time.perf_counter()
    evaluated = 0
    bar = _progress_bar(evaluations, progress and run_dir.writer)
    try:
        while len(records) < evaluations:
            genome = strategy.ask()
            if genome is None:
                break
            key = rspace.key(genome)
            record = done.get(key)
            if record is None:
                subnet = rspace.subnet(genome, scores, layer_metric)
                sizes = rspace.sizes(genome)
                t0 = time.perf_counter()
                value = float(objective(subnet))
                record = {"index": len(records), "key": list(key), "objective": value if math.isfinite(value) else float("inf"),
                          "params": rspace.params(genome), "flops_per_token": flops_per_token(rspace.cfg, sizes, seq_length),
                          "eval_seconds": round(time.perf_counter() - t0, 4),
                          "time": round(elapsed_before + time.perf_counter() - start, 3),
                          **strategy.extras(genome), "subnet": subnet.to_dict()}
                run_dir.append(record)
                evaluated += 1
            strategy.tell(genome, record["objective"])
            records.append(record)
            if bar is not None:
                best = min(records, key=lambda r: r["objective"])
                bar.set_postfix_str(f"best ppl {best['objective']:.3f} @ {best['params']:,} params", refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        run_dir.close()
    if not records:
        raise SearchSpaceError("the strategy proposed no candidate")
    best = min(records, key=lambda r: (r["objective"], r["index"]))
    summary = {"best": {k: v for k, v in best.items()}, "candidates": len(records), "evaluated_this_session": evaluated,
               "replayed": len(records) - evaluated, "seconds": round(elapsed_before + time.perf_counter() - start, 3),
               "best_at_evaluation": best["index"] + 1}
    run_dir.finish(records, best, summary, plots=plots)
    return SearchResult(best=SubnetConfig.from_dict(best["subnet"]), best_objective=best["objective"],
                        best_params=best["params"], run_dir=run_dir.path, records=records, evaluated=evaluated)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cand", desc="search", dynamic_ncols=True)


def run_search(config: SearchConfig) -> SearchResult:
    """Search as configured; collective under torchrun (every rank evaluates its share of the batches)."""
    import torch.distributed as dist

    from nemo_subnet.checkpointing import read_model_config
    from nemo_subnet.importance.evaluation import load_batches, load_supernet
    from nemo_subnet.runtime import runtime_scope
    from nemo_subnet.search.objective import SupernetPerplexity

    prepared = prepare(config, read_model_config(config.ckpt))  # bad input fails before any process group
    with runtime_scope(tp=config.tp, pp=config.pp, seed=config.seed) as runtime:
        run_dir = RunDir(config.out, writer=runtime.is_main)
        state = [None, None]
        if runtime.is_main:
            resumed = run_dir.start(prepared.description, overwrite=config.overwrite)
            state = [resumed, run_dir.read_candidates() if resumed else []]
        if dist.is_initialized():
            dist.broadcast_object_list(state, src=0)
        cfg, model = load_supernet(config.ckpt)
        ev = config.eval
        if ev.compile:
            from nemo_subnet.subnet.supernet import compile_supernet

            compile_supernet(model)
        data = load_batches(config.data, cfg, split="valid", num_batches=ev.batches, seq_length=ev.seq_length,
                            micro_batch_size=ev.micro_batch_size, seed=ev.seed, skip_batches=ev.skip_batches)
        return search_loop(prepared.rspace, prepared.strategy, SupernetPerplexity(model, cfg, data), run_dir,
                           config.evaluations, previous=state[1], scores=prepared.scores,
                           layer_metric=config.layer_metric, seq_length=ev.seq_length, progress=config.progress,
                           plots=config.plots)
