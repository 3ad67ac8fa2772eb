"""Multi-fidelity evaluation: successive halving over evaluation tokens, asynchronous and deterministic.

Rung k evaluates a candidate on the first ``batches[k]`` validation micro-batches (``rung_batches``: the
full count divided by ``reduction`` once per rung above, so each rung holds ``reduction`` x more tokens and
the last is the full evaluation). Every candidate the strategy proposes is evaluated at rung 0. After each
evaluation the ladder promotes (ASHA, Li et al. 2020): a candidate in the best ``n_k // reduction`` of the
``n_k`` results of its rung that has not reached the next rung is evaluated there. When the strategy is
done, ``final`` promotions close the ladder synchronously (the best ``max(1, n_k // reduction)`` of every
rung move up), so every budget bin ends with at least one full-fidelity result, and the best sub-network is
chosen among full-fidelity results only.

Everything is a pure function of the told values (ties broken by candidate index), so a replayed run
promotes exactly as the killed one did: resume needs nothing beyond candidates.jsonl. Each bin of a
budget family (strategies.py) has its own ladder: candidates compete with their own budget.

A candidate's lower-fidelity perplexity is the same quantity measured on fewer tokens (the rung's batches
are a prefix of the full ones), so the strategy is told the value of the highest rung a candidate reached.
"""

from __future__ import annotations

# 8 batches -> rungs of 2 and 8: the lowest rung ranks candidates like the full evaluation (Spearman 0.98 over 24
# SmolLM2 candidates at 1/3, 0.90 over the better half); 1 batch ranked the better half at 0.73 only
# (benchmarks/results/search_cost.md)
DEFAULT_RUNGS, DEFAULT_REDUCTION = 2, 4


def rung_batches(batches: int, rungs: int, reduction: int, dp_size: int = 1) -> list[int]:
    """Global micro-batches per rung, fewest first, the last ``batches``; each a multiple of ``dp_size``.
    Rungs that would repeat a smaller rung's count are dropped (few batches: fewer rungs)."""
    if rungs < 1 or (rungs > 1 and reduction < 2):
        raise ValueError(f"multi-fidelity needs rungs >= 1 and reduction >= 2, got rungs={rungs} reduction={reduction}")
    out: list[int] = []
    for k in range(rungs):
        count = max(1, batches // reduction ** (rungs - 1 - k))
        count = -(-count // dp_size) * dp_size  # round up: every data-parallel rank gets whole micro-batches
        if not out or count > out[-1]:
            out.append(count)
    return out


class Ladder:
    """Results per (bin, rung) and the promotion rule; candidates are named by their index."""

    def __init__(self, rungs: int, reduction: int, bins: int):
        self.rungs, self.reduction = rungs, reduction
        self.results: list[list[dict[int, float]]] = [[{} for _ in range(rungs)] for _ in range(bins)]

    def add(self, bin_index: int, rung: int, index: int, value: float) -> None:
        self.results[bin_index][rung][index] = value

    def promotion(self, final: bool = False) -> tuple[int, int, int] | None:
        """(bin, rung, candidate index) to evaluate at ``rung + 1`` next, or None. Higher rungs first, so a
        promising candidate climbs before new ones are looked at."""
        for rung in range(self.rungs - 2, -1, -1):
            for bin_index, ladder in enumerate(self.results):
                here, above = ladder[rung], ladder[rung + 1]
                quota = len(here) // self.reduction
                if final and here:
                    quota = max(1, quota)
                ranked = sorted(here.items(), key=lambda item: (item[1], item[0]))[:quota]
                for index, _ in ranked:
                    if index not in above:
                        return bin_index, rung, index
        return None

    def top(self, bin_index: int) -> int:
        """The highest rung holding a result in ``bin_index`` (-1: none)."""
        return max((r for r, results in enumerate(self.results[bin_index]) if results), default=-1)
