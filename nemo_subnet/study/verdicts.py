"""The study's claims as paired comparisons: per claim, the per-seed difference of two rows, its mean ± SE,
a verdict and the sentence of what would change it.

Two kinds of effect, both paired by seed (the same data order, evaluation samples and, where both rows use
one, the same searched architecture):
- ``test_ppl``: A's test perplexity minus B's (equal tokens, or equal compute for KD vs CE-at-KD's-compute);
  the claim "A is better" holds when the mean + 2 SE < 0;
- ``compute``: ln(B's compute to target / A's), shown as a factor; the claim "A needs >= ``factor``x less"
  holds when the mean - 2 SE > ln(factor). A run that did not reach the target counts at all the compute it
  spent (a bound: it needs more), and a verdict the bounds could flip is "unresolved" (a seed where neither
  reached it is left out). B = random_ref counts all its compute (it reaches the target, its own final value,
  at its end).
Verdicts: "holds" / "does not hold" at 2 SE either side of the claim's threshold, "unresolved" between, "one seed"
without an SE.
"""

from __future__ import annotations

import math
import statistics

from nemo_subnet.study.report import REFERENCE

GOAL = 5.0
"""The project's goal: sub-network init + KD reaches the target with >= 5x less compute than random init."""


def claims(config) -> list[dict]:
    """(claim, A, B, metric, factor, note) for the rows this config has."""
    k_small, k_big = min(config.cache_k), max(config.cache_k)
    layerwise, top = f"evosearch_{config.layerwise}_kd", f"evosearch_top{config.top_k_tail}_tail"
    out = [dict(claim=f"{a} reaches the target with >= {GOAL:g}x less compute than random init (the goal)", a=a,
                b=REFERENCE, metric="compute", factor=GOAL,
                note="a lower target (a longer reference run) or a cheaper importance / search moves it most")
           for a in ("evosearch_kd", "minitron_kd", "firstk_kd", "randsearch_kd", f"evosearch_cache_k{k_big}",
                     "evosearch_kd_gentle_lr")]
    out += [
        dict(claim="sub-network init beats random init with KD at equal tokens", a="evosearch_kd", b="random_kd"),
        dict(claim="evolutionary search beats Minitron-style importance at equal tokens", a="evosearch_kd",
             b="minitron_kd"),
        dict(claim="evolutionary search reaches the target with less compute than Minitron-style importance",
             a="evosearch_kd", b="minitron_kd", metric="compute"),
        dict(claim="evolutionary search beats random search with the same evaluations", a="evosearch_kd",
             b="randsearch_kd"),
        dict(claim="importance-ordered units beat the first k units of the same sizes", a="minitron_kd", b="firstk_kd"),
    ]
    out += [dict(claim=f"KD beats CE at equal compute ({init} init)", a=f"{init}_kd", b=f"{init}_ce",
                 note="CE trained as many tokens as KD's compute buys, annealed at its own length")
            for init in ("random", "firstk", "minitron", "randsearch", "evosearch")]
    out += [
        dict(claim=f"online KD beats the K = {k_big} teacher cache at equal tokens", a="evosearch_kd",
             b=f"evosearch_cache_k{k_big}"),
        dict(claim=f"the K = {k_big} teacher cache reaches the target with less compute than online KD",
             a=f"evosearch_cache_k{k_big}", b="evosearch_kd", metric="compute",
             note="the cache's build is charged to the runs that read it; more runs per cache lower its share"),
        dict(claim=f"K = {k_big} sampled ids beat K = {k_small}", a=f"evosearch_cache_k{k_big}",
             b=f"evosearch_cache_k{k_small}"),
        dict(claim=f"K = {2 * config.top_k_tail} sampled ids beat top-{config.top_k_tail} with the tail bin (the "
                   "same bytes per token)", a=f"evosearch_cache_k{2 * config.top_k_tail}", b=top),
        dict(claim="the full-fidelity (masked) search finds a better student than the cheaper default",
             a="evosearch_full_kd", b="evosearch_kd"),
        dict(claim="the cheaper default search reaches the target with less compute than the full-fidelity one",
             a="evosearch_kd", b="evosearch_full_kd", metric="compute"),
        dict(claim="a layer-wise space beats the uniform one at the same budget", a=layerwise, b="evosearch_kd",
             note="the layer-wise student exports zero-padded: compare the HF parameter counts in the table"),
        dict(claim=f"a gentler LR (peak {config.gentle_lr:g}, {config.gentle_warmup_steps} warmup steps) trains the "
                   "searched init better with KD", a="evosearch_kd_gentle_lr", b="evosearch_kd",
             note="the other rows keep the random init's LR; if this holds, every pretrained init is under-served"),
    ]
    names = {row.name for row in config.rows()}
    return [{"metric": "test_ppl", "factor": 1.0, "note": "", **c} for c in out if {c["a"], c["b"]} <= names]


def _paired(summary: dict, a: str, b: str, metric: str) -> tuple[list[float], list[int], set[str], bool]:
    """Per-seed effects of A against B; the seeds where a run did not reach the target; the kinds of bound used;
    whether a seed was left out.

    A run that did not reach the target within its budget needs more compute than all it spent: its seed counts
    at that bound ("upper": A's ratio is at most this; "lower": at least, when B did not reach it), and only a
    verdict the bounds cannot flip is given (comparisons()). A seed where neither reached it is left out."""
    by = {(m["row"], m["seed"]): m for m in summary["per_seed"]}
    effects, missing, bounds, left_out = [], [], set(), False
    for seed in summary["seeds"]:
        ma, mb = by.get((a, seed)), by.get((b, seed))
        if ma is None or mb is None:
            continue
        if metric == "test_ppl":
            effects.append(ma["test_ppl"] - mb["test_ppl"])
            continue
        ca = ma["compute_to_target"]
        cb = mb["total_flops"] if b == REFERENCE else mb["compute_to_target"]
        if not (ca and cb):
            missing.append(seed)
            if not (ca or cb):
                left_out = True
                continue
            bounds.add("upper" if cb else "lower")
        effects.append(math.log((cb or mb["total_flops"]) / (ca or ma["total_flops"])))
    return effects, missing, bounds, left_out


def comparisons(config, summary: dict) -> list[dict]:
    out = []
    caps = {e["row"]: e for e in summary["rows"]}
    for c in claims(config):
        effects, missing, bounds, left_out = _paired(summary, c["a"], c["b"], c["metric"])
        if c["metric"] == "compute" and c["b"] == REFERENCE and caps.get(c["a"], {}).get("compute_ratio_cap"):
            c = {**c, "note": _cap_note(caps[c["a"]], caps[REFERENCE]["total_flops"], c["factor"]) + "; " + c["note"]}
        n = len(effects)
        mean = statistics.fmean(effects) if effects else None
        se = statistics.stdev(effects) / math.sqrt(n) if n > 1 else None
        # signed distance from the claim's threshold, positive = in the claim's favour
        null = math.log(c["factor"]) if c["metric"] == "compute" else 0.0
        gap = None if mean is None else (mean - null if c["metric"] == "compute" else -mean)
        bounded = False
        if mean is None:
            verdict = "not run yet"
        elif se is None:
            verdict = "one seed"
        else:
            verdict = "holds" if gap >= 2 * se else "does not hold" if gap <= -2 * se else "unresolved"
            # a bound only certifies the verdict it leans against: A's upper bounds a failure, lower bounds a success
            if (verdict == "holds" and "upper" in bounds) or (verdict == "does not hold" and "lower" in bounds):
                verdict, bounded = "unresolved", True
        change = _change(verdict, gap, se, n, c)
        if bounded:
            change = (f"the {len(missing)} seed(s) short of the target decide it: trained until they reach it (a "
                      f"longer student budget), they show how much more they need; {c['note'] or 'more seeds'}")
        out.append({**c, "n": n, "seeds_not_reached": missing, "neither_reached": left_out, "mean": mean, "se": se,
                    "verdict": verdict,
                    "bounds": sorted(bounds), "effect": _effect(c["metric"], mean, se, bounds), "change": change})
    return out


def _cap_note(row: dict, reference: float, factor: float) -> str:
    """Whether the row's overhead alone already rules the goal out, and the least reference that would not."""
    cap, overhead = row["compute_ratio_cap"], row["overhead_flops"]
    text = (f"its importance + search + cache share alone ({overhead:.2e} FLOPs) caps the ratio at {cap:.2f}x "
            f"against this reference ({reference:.2e} FLOPs)")
    if cap <= factor:
        return (text + f", so {factor:g}x cannot hold at this scale whatever training does: it needs random init "
                f"to cost at least {factor * overhead:.2e} FLOPs to the target ({factor * overhead / reference:.1f}x "
                "this reference: a lower target or a longer budget), and more as training is not free")
    return text


def _effect(metric: str, mean, se, bounds=frozenset()) -> str:
    if mean is None:
        return "—"
    if metric == "test_ppl":
        return f"A − B = {mean:+.1f}" + (f" ± {se:.1f} test ppl" if se is not None else " test ppl")
    bound = {frozenset(): "", frozenset({"upper"}): "at most ", frozenset({"lower"}): "at least "}.get(
        frozenset(bounds), "about ")  # seeds short of the target count at what they spent
    return f"A needs {bound}{math.exp(mean):.2f}x less compute than B" + (f" (×/÷ {math.exp(se):.2f} SE)" if se else "")


def _change(verdict: str, gap, se, n: int, claim: dict) -> str:
    unit = "in ln(compute ratio)" if claim["metric"] == "compute" else "test ppl"
    if verdict in ("not run yet", "one seed"):
        text = "needs a second seed for an SE"
    elif verdict == "unresolved":
        needed = math.ceil(n * (2 * se / abs(gap)) ** 2) if gap else None
        text = f"resolved at this spread with about {needed} seeds" if needed else "no effect at this spread"
    else:
        text = f"it flips only if further seeds moved the mean difference by {abs(gap) - 2 * se:.2f} {unit}"
    return text + (f"; {claim['note']}" if claim["note"] else "")


def verdict_lines(pairs: list[dict]) -> list[str]:
    lines = ["## Verdicts (paired by seed: A minus B per seed, mean ± SE)", "",
             "| claim | A | B | seeds | effect | verdict | what would change it |", "|" + "---|" * 7]
    for p in pairs:
        neither = ", a seed where neither did is left out" if p.get("neither_reached") else ""
        left_out = (f" ({len(p['seeds_not_reached'])} not reached: a run short of the target counts at all it spent"
                    f"{neither})" if p["seeds_not_reached"] else "")
        lines.append(f"| {p['claim']} | {p['a']} | {p['b']} | {p['n']}{left_out} | {p['effect']} | "
                     f"**{p['verdict']}** | {p['change']} |")
    return lines
