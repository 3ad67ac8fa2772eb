"""Search strategies behind one ask/tell interface, independent of how a candidate is evaluated.

``ask() -> Genome | None`` proposes the next candidate (None: the strategy has nothing more to propose),
``tell(genome, value)`` reports its objective (lower is better). Every proposed genome lies inside the
parameter budget (``BudgetSampler``) and is new to the strategy. Strategies draw randomness only from
their own ``random.Random(seed)``, so a run is a pure function of (space, budget, seed, told values):
replaying the told values of a killed run reproduces its asks exactly, which is how resume works.

- ``RandomSearch``: uniform random genomes, repaired into the budget.
- ``EvolutionarySearch``: steady-state genetic algorithm. The first ``population`` asks are random;
  then each ask picks two parents by tournament among the best ``population`` candidates told so far
  (elitist), mixes them gene by gene (uniform crossover, probability ``crossover_prob``), mutates each
  active gene with probability ``mutation_prob`` (at least one gene): mostly a step to the neighbouring
  choice (local search), sometimes a random choice; then repairs the child into the budget.
- ``ProxySearch``: no evaluation needed to rank: samples ``proxy_samples`` in-budget genomes and ranks
  them by the importance mass they keep (``proxy_score``); asks them best first.
"""

from __future__ import annotations

import enum
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

from nemo_subnet.config import PositiveInt, Probability
from nemo_subnet.search.space import Genome, ResolvedSpace, SearchSpaceError


class StrategyName(str, enum.Enum):
    RANDOM = "random"
    EVOLUTIONARY = "evolutionary"
    PROXY = "proxy"


@dataclass
class StrategyConfig:
    population: PositiveInt = 16
    """Evolutionary: random initial candidates, and the size of the elite parents are drawn from."""
    tournament: PositiveInt = 3
    mutation_prob: Probability = 0.05
    """Per active gene; at least one gene mutates."""
    local_step_prob: Probability = 0.8
    """A mutation moves to a neighbouring choice with this probability, else to a random one."""
    crossover_prob: Probability = 0.5
    proxy_samples: PositiveInt = 2000
    """Proxy: in-budget candidates ranked by importance mass."""
    max_tries: PositiveInt = 200
    """Attempts at a new in-budget candidate before giving up."""


ENUMERATE_LIMIT = 20_000
"""Spaces with at most this many candidates are enumerated: exact uniform sampling and exhaustion."""


class BudgetSampler:
    """Random genomes and repairs into [lower, upper] parameters."""

    def __init__(self, space: ResolvedSpace, lower: int, upper: int, rng: random.Random):
        self.space, self.lower, self.upper, self.rng = space, lower, upper, rng
        self.feasible = None
        if space.size() <= ENUMERATE_LIMIT:
            candidates = list(space.enumerate())
            self.feasible = [g for g in candidates if self.inside(g)]
            if not self.feasible:
                below = max((p for p in map(space.params, candidates) if p < lower), default=None)
                above = min((p for p in map(space.params, candidates) if p > upper), default=None)
                nearest = " and ".join(f"{name} {p:,}" for name, p in (("below", below), ("above", above)) if p)
                raise SearchSpaceError(
                    f"budget unreachable: none of the space's {len(candidates):,} sub-networks has "
                    f"{lower:,}..{upper:,} parameters (nearest: {nearest}); raise the tolerance, change the budget "
                    "or use a finer granularity")

    def inside(self, genome: Genome) -> bool:
        return self.lower <= self.space.params(genome) <= self.upper

    def random(self) -> Genome:
        return tuple(self.rng.randrange(len(self.space.gene_choices(i))) for i in range(self.space.genome_length))

    def repair(self, genome: Genome, steps: int = 64) -> Genome | None:
        """Step random active genes down (too large) or up (too small) until inside; None if it cycles out."""
        genome = list(genome)
        for _ in range(steps):
            params = self.space.params(tuple(genome))
            if self.lower <= params <= self.upper:
                return tuple(genome)
            active = self.space.active_genes(tuple(genome))
            if params > self.upper:
                movable = [i for i in active if genome[i] > 0]
                delta = -1
            else:
                movable = [i for i in active if genome[i] < len(self.space.gene_choices(i)) - 1]
                delta = 1
            if not movable:
                return None
            genome[self.rng.choice(movable)] += delta
        return None

    def sample(self, seen: set, propose: Callable[[], Genome] | None = None, tries: int = 200) -> Genome | None:
        """A new (not in ``seen``) in-budget genome from ``propose``, else uniform; None when none is left."""
        for _ in range(tries if propose else 0):
            candidate = self.repair(propose())
            if candidate is not None and self.space.key(candidate) not in seen:
                return candidate
        if self.feasible is not None:
            unseen = [g for g in self.feasible if self.space.key(g) not in seen]
            return self.rng.choice(unseen) if unseen else None
        for _ in range(tries):
            candidate = self.repair(self.random())
            if candidate is not None and self.space.key(candidate) not in seen:
                return candidate
        raise SearchSpaceError(
            f"budget unreachable: no new sub-network of {self.lower:,}..{self.upper:,} parameters found in {tries} "
            "tries; the band may be too narrow for the space's choices (raise the tolerance or change the budget)")


class Strategy(ABC):
    def __init__(self, space: ResolvedSpace, bounds: tuple[int, int], seed: int, config: StrategyConfig | None = None):
        self.space = space
        self.config = config or StrategyConfig()
        self.rng = random.Random(seed)
        self.sampler = BudgetSampler(space, *bounds, self.rng)
        self.seen: set = set()
        self.told: list[tuple[Genome, float]] = []

    @abstractmethod
    def propose(self) -> Genome | None: ...

    def ask(self) -> Genome | None:
        genome = self.propose()
        if genome is not None:
            self.seen.add(self.space.key(genome))
        return genome

    def tell(self, genome: Genome, value: float) -> None:
        self.told.append((genome, value))

    def extras(self, genome: Genome) -> dict:
        """Strategy-specific fields recorded with the candidate."""
        return {}


class RandomSearch(Strategy):
    def propose(self) -> Genome | None:
        return self.sampler.sample(self.seen, tries=self.config.max_tries)


class EvolutionarySearch(Strategy):
    def _elite(self) -> list[tuple[Genome, float]]:
        return sorted(self.told, key=lambda gv: gv[1])[: self.config.population]

    def _tournament(self, elite) -> Genome:
        contenders = self.rng.sample(elite, min(self.config.tournament, len(elite)))
        return min(contenders, key=lambda gv: gv[1])[0]

    def _mutate(self, genome: Genome) -> Genome:
        genome = list(genome)
        active = self.space.active_genes(tuple(genome))
        chosen = [i for i in active if self.rng.random() < self.config.mutation_prob] or [self.rng.choice(active)]
        for i in chosen:
            n = len(self.space.gene_choices(i))
            if n == 1:
                continue
            if self.rng.random() < self.config.local_step_prob:
                step = self.rng.choice((-1, 1))
                genome[i] += step if 0 <= genome[i] + step < n else -step  # neighbouring choice
            else:
                genome[i] = self.rng.randrange(n)
        return tuple(genome)

    def _child(self) -> Genome:
        elite = self._elite()
        first = self._tournament(elite)
        if self.rng.random() < self.config.crossover_prob and len(elite) > 1:
            second = self._tournament(elite)
            first = tuple(a if self.rng.random() < 0.5 else b for a, b in zip(first, second))
        return self._mutate(first)

    def propose(self) -> Genome | None:
        if len(self.seen) < self.config.population or not self.told:
            return self.sampler.sample(self.seen, tries=self.config.max_tries)
        return self.sampler.sample(self.seen, self._child, tries=self.config.max_tries)


def proxy_score(space: ResolvedSpace, genome: Genome, scores, layer_metric=None) -> float:
    """Share of importance mass kept, averaged over hidden channels, layers, heads and FFN neurons.

    Heads and neurons count over all layers of the super-network, so dropping a layer loses its units'
    mass too. Layer scores are shifted to be non-negative (drop-perplexity increases can be < 0)."""
    from nemo_subnet.importance.scores import LayerMetric

    subnet = space.subnet(genome, scores, layer_metric)
    from nemo_subnet.subnet.config import resolve

    res = resolve(space.cfg, subnet)
    hidden = scores.hidden()
    layer = scores.layers(layer_metric or LayerMetric.COSINE)
    layer = layer - min(float(layer.min()), 0.0)
    heads, ffn = scores.heads(), scores.ffn()
    hpg = space.cfg.num_attention_heads // space.cfg.num_query_groups
    kept_heads = sum(float(heads[l, list(li.query_heads(hpg))].sum()) for l, li in zip(res.layers, res.per_layer))
    kept_ffn = sum(float(ffn[l, list(li.ffn)].sum()) for l, li in zip(res.layers, res.per_layer))
    parts = [float(hidden[list(res.hidden)].sum() / hidden.sum()),
             float(layer[list(res.layers)].sum() / layer.sum().clamp(min=1e-12)),
             kept_heads / float(heads.sum()), kept_ffn / float(ffn.sum())]
    return sum(parts) / len(parts)


class ProxySearch(Strategy):
    """Ranks by importance mass without evaluating; asks the ranking best first."""

    def __init__(self, space, bounds, seed, config=None, *, scores=None, layer_metric=None):
        super().__init__(space, bounds, seed, config)
        if scores is None:
            raise SearchSpaceError("strategy proxy needs importance scores (--scores)")
        pool, keys = [], set()
        for _ in range(self.config.proxy_samples):
            genome = self.sampler.sample(keys, tries=self.config.max_tries)
            if genome is None:
                break  # small space exhausted
            keys.add(space.key(genome))
            pool.append(genome)
        ranked = sorted(((proxy_score(space, g, scores, layer_metric), i, g) for i, g in enumerate(pool)),
                        key=lambda t: (-t[0], t[1]))
        self.proxy = {space.key(g): s for s, _, g in ranked}
        self._queue = [g for _, _, g in ranked]

    def extras(self, genome: Genome) -> dict:
        return {"proxy_score": round(self.proxy[self.space.key(genome)], 6)}

    def propose(self) -> Genome | None:
        while self._queue:
            genome = self._queue.pop(0)
            if self.space.key(genome) not in self.seen:
                return genome
        return None


def make_strategy(name: StrategyName | str, space: ResolvedSpace, bounds: tuple[int, int], seed: int,
                  config: StrategyConfig | None = None, *, scores=None, layer_metric=None) -> Strategy:
    try:
        name = StrategyName(name)
    except ValueError:
        raise SearchSpaceError(f"unknown strategy {name!r}; choose one of {[s.value for s in StrategyName]}") from None
    if name is StrategyName.PROXY:
        return ProxySearch(space, bounds, seed, config, scores=scores, layer_metric=layer_metric)
    return (RandomSearch if name is StrategyName.RANDOM else EvolutionarySearch)(space, bounds, seed, config)
