"""Search strategies behind one ask/tell interface, independent of how a candidate is evaluated.

``ask() -> Genome | None`` proposes the next candidate (None: the strategy has nothing more to propose),
``tell(genome, value)`` reports its objective (lower is better; telling a genome again replaces its value,
as multi-fidelity does when a candidate is measured on more tokens). Every proposed genome lies inside the
parameter budget (``BudgetSampler``) and is new to the strategy. Strategies draw randomness only from
their own ``random.Random(seed)``, so a run is a pure function of (space, budget, seed, told values):
replaying the told values of a killed run reproduces its asks exactly, which is how resume works.

A family of budgets (``bounds`` a list of non-overlapping (lower, upper) bins, as whittle's stratified
search) is one strategy: asks go to the bins in turn, each bin samples and repairs into its own band, the
evolutionary elite and the proxy ranking are per bin, so each budget's candidates compete with their own
size while sharing one run, one importance pass and one set of validation batches. One bin is the plain
search, draw for draw.

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


Bounds = tuple[int, int]


class Strategy(ABC):
    def __init__(self, space: ResolvedSpace, bounds: Bounds | list[Bounds], seed: int,
                 config: StrategyConfig | None = None):
        self.space = space
        self.config = config or StrategyConfig()
        self.rng = random.Random(seed)
        self.bins: list[Bounds] = [tuple(b) for b in bounds] if isinstance(bounds[0], (tuple, list)) else [tuple(bounds)]
        self.samplers = [BudgetSampler(space, lower, upper, self.rng) for lower, upper in self.bins]
        self.seen: set = set()
        self.bin_of: dict = {}
        """Key -> index of the bin that proposed it."""
        self.told: list[tuple[Genome, float]] = []
        self._told_at: dict = {}
        self._asks = 0

    @property
    def sampler(self) -> BudgetSampler:
        return self.samplers[0]

    @abstractmethod
    def propose(self, bin_index: int) -> Genome | None: ...

    def ask(self) -> Genome | None:
        """The next candidate, from the bins in turn (a bin with nothing left passes to the next)."""
        start, self._asks = self._asks, self._asks + 1
        for offset in range(len(self.bins)):
            bin_index = (start + offset) % len(self.bins)
            genome = self.propose(bin_index)
            if genome is not None:
                key = self.space.key(genome)
                self.seen.add(key)
                self.bin_of[key] = bin_index
                return genome
        return None

    def tell(self, genome: Genome, value: float) -> None:
        key = self.space.key(genome)
        if key in self._told_at:  # a better measurement of the same candidate (a higher rung)
            self.told[self._told_at[key]] = (genome, value)
            return
        self._told_at[key] = len(self.told)
        self.told.append((genome, value))

    def told_in(self, bin_index: int) -> list[tuple[Genome, float]]:
        if len(self.bins) == 1:
            return self.told
        return [(g, v) for g, v in self.told if self.bin_of[self.space.key(g)] == bin_index]

    def seen_in(self, bin_index: int) -> int:
        return len(self.seen) if len(self.bins) == 1 else sum(b == bin_index for b in self.bin_of.values())

    def extras(self, genome: Genome) -> dict:
        """Strategy-specific fields recorded with the candidate."""
        return {}


class RandomSearch(Strategy):
    def propose(self, bin_index: int) -> Genome | None:
        return self.samplers[bin_index].sample(self.seen, tries=self.config.max_tries)


class EvolutionarySearch(Strategy):
    def _elite(self, bin_index: int) -> list[tuple[Genome, float]]:
        return sorted(self.told_in(bin_index), key=lambda gv: gv[1])[: self.config.population]

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

    def _child(self, bin_index: int) -> Genome:
        elite = self._elite(bin_index)
        first = self._tournament(elite)
        if self.rng.random() < self.config.crossover_prob and len(elite) > 1:
            second = self._tournament(elite)
            first = tuple(a if self.rng.random() < 0.5 else b for a, b in zip(first, second))
        return self._mutate(first)

    def propose(self, bin_index: int) -> Genome | None:
        sampler = self.samplers[bin_index]
        if self.seen_in(bin_index) < self.config.population or not self.told_in(bin_index):
            return sampler.sample(self.seen, tries=self.config.max_tries)
        return sampler.sample(self.seen, lambda: self._child(bin_index), tries=self.config.max_tries)


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
    """Ranks by importance mass without evaluating; asks the ranking best first (per bin)."""

    def __init__(self, space, bounds, seed, config=None, *, scores=None, layer_metric=None):
        super().__init__(space, bounds, seed, config)
        if scores is None:
            raise SearchSpaceError("strategy proxy needs importance scores (--scores)")
        self.proxy, self._queues, keys = {}, [], set()
        for sampler in self.samplers:
            pool = []
            for _ in range(self.config.proxy_samples):
                try:
                    genome = sampler.sample(keys, tries=self.config.max_tries)
                except SearchSpaceError:
                    if not pool:
                        raise
                    break  # the band holds fewer genomes than proxy_samples and sampling found (nearly) all of them
                if genome is None:
                    break  # small space exhausted
                keys.add(space.key(genome))
                pool.append(genome)
            ranked = sorted(((proxy_score(space, g, scores, layer_metric), i, g) for i, g in enumerate(pool)),
                            key=lambda t: (-t[0], t[1]))
            self.proxy.update({space.key(g): s for s, _, g in ranked})
            self._queues.append([g for _, _, g in ranked])

    def extras(self, genome: Genome) -> dict:
        return {"proxy_score": round(self.proxy[self.space.key(genome)], 6)}

    def propose(self, bin_index: int) -> Genome | None:
        queue = self._queues[bin_index]
        while queue:
            genome = queue.pop(0)
            if self.space.key(genome) not in self.seen:
                return genome
        return None


def make_strategy(name: StrategyName | str, space: ResolvedSpace, bounds: Bounds | list[Bounds], seed: int,
                  config: StrategyConfig | None = None, *, scores=None, layer_metric=None) -> Strategy:
    try:
        name = StrategyName(name)
    except ValueError:
        raise SearchSpaceError(f"unknown strategy {name!r}; choose one of {[s.value for s in StrategyName]}") from None
    if name is StrategyName.PROXY:
        return ProxySearch(space, bounds, seed, config, scores=scores, layer_metric=layer_metric)
    return (RandomSearch if name is StrategyName.RANDOM else EvolutionarySearch)(space, bounds, seed, config)
