"""Run a search as configured: the search's settings (typed dataclasses), their checks, and the wiring.

``run_search(SearchConfig)`` wires the real pieces into ``search_loop`` (loop.py, which knows nothing of
models): checkpoint -> super-network, prepared data -> validation batches (a prefix of them per
fidelity rung), importance scores, the objective at the candidate's own size (or masked), a budget or a
family of budgets. Everything a user can get wrong is checked in ``prepare`` before a model is built.
Resume (loop.py) replays candidates.jsonl; search.json records what was searched so a different search
in the same directory is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from typing import Annotated, Iterator

from nemo_subnet.config import NonNegativeInt, PositiveInt, Range, check
from nemo_subnet.importance.scores import LayerMetric
from nemo_subnet.search.fidelity import DEFAULT_REDUCTION, DEFAULT_RUNGS
from nemo_subnet.search.loop import SearchResult, search_loop
from nemo_subnet.search.objective import EvalForward
from nemo_subnet.search.results import RunDir
from nemo_subnet.search.space import (Budget, BudgetFamily, ResolvedSpace, SearchSpace, SearchSpaceError, check_budget,
                                      resolve_space)
from nemo_subnet.search.strategies import Strategy, StrategyConfig, StrategyName, make_strategy


@dataclass
class EvalConfig:
    batches: PositiveInt = 8
    """Validation micro-batches per candidate at full fidelity (global; split over data-parallel ranks)."""
    seq_length: PositiveInt = 128
    micro_batch_size: PositiveInt = 4
    skip_batches: NonNegativeInt = 0
    """Validation micro-batches skipped first (keep them for a final, unbiased test of the winner)."""
    seed: int = 1234
    """Seed of the dataset's sample shuffle."""
    forward: EvalForward | None = None
    """``compact``: each candidate runs at its own size, built from the resident weights (a 1/3 candidate costs
    about 1/3 of a teacher forward); ``masked``: the super-network with masks (no weight copy; the choice for
    ``compile`` and for evaluations too short to pay for a candidate's build). Same perplexities. Unset:
    compact, or masked with ``compile``."""
    compile: bool = False
    """Evaluate with the super-network's static-graph mode compiled once (``compile_supernet``): no
    recompilation per candidate, skipped layers still computed. Evaluates masked. Pays off on GPU for many
    candidates."""
    rungs: PositiveInt = DEFAULT_RUNGS
    """Successive-halving rungs over evaluation tokens (search/fidelity.py): every candidate is evaluated on
    ``batches / reduction**(rungs-1)`` micro-batches, the best ``1/reduction`` of each rung are promoted to
    ``reduction`` x more, the last rung is the full ``batches``. 1 = off (every candidate on all batches)."""
    reduction: Annotated[int, Range(ge=2)] = DEFAULT_REDUCTION
    """Tokens ratio between consecutive rungs, and the inverse of the share promoted (with ``rungs`` > 1)."""

    def __post_init__(self):
        self.forward = None if self.forward is None else EvalForward(self.forward)

    @property
    def executed_forward(self) -> EvalForward:
        """``forward``, or its default: compact, masked with ``compile``."""
        return self.forward or (EvalForward.MASKED if self.compile else EvalForward.COMPACT)

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.compile and self.forward is EvalForward.COMPACT:
            yield "forward", ("compact runs each candidate outside the compiled super-network: with compile use "
                              "forward masked (or leave forward unset)")


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
    budgets: BudgetFamily | None = None
    """A family of budgets searched at once instead of ``budget`` (``budgets.targets``, ``budgets.tolerance``)."""
    strategy: StrategyName = StrategyName.EVOLUTIONARY
    evaluations: PositiveInt = 100
    """Distinct candidates evaluated (replayed ones from a resumed run count), over all budgets."""
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

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.budget is not None and self.budgets is not None:
            yield "budgets", "give budget (one target) or budgets (a family), not both"


@dataclass
class Prepared:
    """Everything checked before any model is built: bad input fails here, fast."""

    rspace: ResolvedSpace
    bounds: list[tuple[int, int]]
    budgets: list[Budget]
    strategy: Strategy
    scores: object | None
    description: dict


def _budgets(config: SearchConfig, space: SearchSpace, rspace: ResolvedSpace) -> tuple[list[Budget], list]:
    budgets = config.budgets.budgets() if config.budgets else [config.budget or space.budget]
    if budgets[0] is None:
        raise SearchSpaceError("no parameter budget: give --budget (fraction of the model or a count), --budgets "
                               "(a family) or budget: in the space")
    bounds = [check_budget(rspace, budget) for budget in budgets]
    order = sorted(range(len(bounds)), key=lambda i: bounds[i])
    for a, b in zip(order, order[1:]):
        if bounds[b][0] <= bounds[a][1]:
            raise SearchSpaceError(
                f"budgets {budgets[a].target:g} and {budgets[b].target:g} overlap ({bounds[a][0]:,}..{bounds[a][1]:,} "
                f"and {bounds[b][0]:,}..{bounds[b][1]:,} parameters): use budgets further apart or a smaller tolerance")
    return budgets, bounds


def prepare(config: SearchConfig, cfg) -> Prepared:
    missing = [name for name in ("ckpt", "data", "out") if getattr(config, name) is None]
    if missing:
        raise SearchSpaceError(f"a search needs {', '.join(missing)} (--{' --'.join(missing)})")
    check(config)  # a config built in Python gets the checks of a loaded one (ranges, rules between fields)
    ev = config.eval
    space = config.space if isinstance(config.space, SearchSpace) else SearchSpace.load(config.space)
    rspace = resolve_space(space, cfg)
    budgets, bounds = _budgets(config, space, rspace)
    scores = None
    if config.scores is not None:
        from nemo_subnet.importance.scores import ImportanceScores

        scores = ImportanceScores.load(config.scores)
        scores.check_model(cfg)
        if LayerMetric(config.layer_metric) is LayerMetric.PERPLEXITY and not scores.has_layer_drop:
            raise SearchSpaceError(f"layer metric perplexity, but {config.scores} has no layer-drop perplexities: make "
                                   "them with `nemo-subnet importance --layer-metric perplexity`")
    if scores is None and space.ordering.value == "importance":
        raise SearchSpaceError("the space orders units by importance but no scores were given: pass --scores FILE "
                               "(from `nemo-subnet importance`) or set ordering: first_k")
    strategy = make_strategy(config.strategy, rspace, bounds, config.seed, config.strategy_config,
                             scores=scores, layer_metric=config.layer_metric)
    family = len(budgets) > 1
    description = {
        "space": {**space.to_dict(), "budget": None if family else dataclasses.asdict(budgets[0])},
        "choices": rspace.choices, "bounds": [list(b) for b in bounds] if family else list(bounds[0]),
        "strategy": StrategyName(config.strategy).value, "seed": config.seed,
        "strategy_config": dataclasses.asdict(config.strategy_config), "model": str(Path(config.ckpt).resolve()),
        "scores": str(Path(config.scores).resolve()) if config.scores else None,
        "layer_metric": LayerMetric(config.layer_metric).value,
        # compile and forward are how candidates are evaluated (same numbers), not which search this is
        "eval": {k: v for k, v in dataclasses.asdict(ev).items() if k not in ("compile", "forward")},
        "data": str(Path(config.data).resolve()),
    }
    if family:
        description["budgets"] = [dataclasses.asdict(b) for b in budgets]
    return Prepared(rspace, bounds, budgets, strategy, scores, description)


def run_search(config: SearchConfig) -> SearchResult:
    """Search as configured; collective under torchrun (every rank evaluates its share of the batches)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from nemo_subnet.search.fidelity import rung_batches

    from nemo_subnet.checkpointing import read_model_config
    from nemo_subnet.importance.evaluation import load_batches, load_supernet
    from nemo_subnet.runtime import runtime_scope
    from nemo_subnet.search.objective import SupernetPerplexity

    prepared = prepare(config, read_model_config(config.ckpt))  # bad input fails before any process group
    ev = config.eval
    with runtime_scope(tp=config.tp, pp=config.pp, seed=config.seed) as runtime:
        rungs = rung_batches(ev.batches, ev.rungs, ev.reduction, parallel_state.get_data_parallel_world_size())
        description = {**prepared.description, "rungs": rungs}  # the schedule depends on DP: a resume must match
        run_dir = RunDir(config.out, writer=runtime.is_main)
        state = [None, None]
        if runtime.is_main:
            resumed = run_dir.start(description, overwrite=config.overwrite)
            state = [resumed, run_dir.read_candidates() if resumed else []]
        if dist.is_initialized():
            dist.broadcast_object_list(state, src=0)
        cfg, model = load_supernet(config.ckpt)
        if ev.compile:
            from nemo_subnet.subnet.supernet import compile_supernet

            compile_supernet(model)
        data = load_batches(config.data, cfg, split="valid", num_batches=ev.batches, seq_length=ev.seq_length,
                            micro_batch_size=ev.micro_batch_size, seed=ev.seed, skip_batches=ev.skip_batches)
        objective = SupernetPerplexity(model, cfg, data, forward=ev.executed_forward)
        return search_loop(prepared.rspace, prepared.strategy, objective, run_dir, config.evaluations,
                           previous=state[1], scores=prepared.scores, layer_metric=config.layer_metric,
                           seq_length=ev.seq_length, rungs=rungs, reduction=ev.reduction, budgets=prepared.budgets,
                           progress=config.progress, plots=config.plots)
