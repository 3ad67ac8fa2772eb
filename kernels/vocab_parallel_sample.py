"""What a teacher cache stores per token: K ids drawn from the teacher's P_T = softmax(t / T), or its exact
top-k with their masses, from vocabulary-sharded logits or straight from the final hidden states and this rank's
output-weight shard (chunked, never [N, V/tp] at once). Forward only (the teacher is frozen).

Sampling is inverse-CDF over the global vocabulary with caller-given uniforms u [N, K] (the same on every TP
rank: the draws are the caller's, reproducible per sample whatever the layout). Per chunk, each rank forms
e = exp(x - m) over its valid columns (x = t / T, m the row maximum all-reduced over the group) and their
running sum (the shard's CDF, fp32); one all-gather of the shard masses [C, tp] places each target u * total
in one rank (the owner: shards in rank order, as the vocabulary is), which finds the id by binary search in
its CDF; one SUM all-reduce of [C, K] ids (0 from non-owners) gives every rank the draws. At TP = 1 this is
plain inverse-CDF sampling, and at any TP the same draws up to fp32 rounding of the sums. The fp32 CDF misplaces
draws only at ids of probability below ~1e-7 of the row mass.

Top-k: each rank's top-k of x with its local log-sum-exp; after the chunks, the candidates are all-gathered
(`vocab_parallel_topk`'s helpers), the row statistics merged (MAX, then SUM), and the masses are
P_T(id) = exp(x_id - lse).
Returns (ids [..., K] int64, probs [..., K] fp32: P_T of each id) the same on every rank.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist

from .fused_linear_kd_loss import default_chunk_size
from .vocab_parallel_topk import _gather_candidates, _local_topk


def _row_max(x: torch.Tensor, group) -> torch.Tensor:
    m = x.amax(dim=-1) if x.shape[-1] else x.new_full(x.shape[:1], float("-inf"))  # [c]
    if group is not None:
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    return m


def _sample_chunk(t: torch.Tensor, n_valid: int, temperature: float, u: torch.Tensor, vocab_start: int,
                  group) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws for one chunk of teacher logits t [c, V_local] (valid columns [0, n_valid)), u [c, k] → (ids, probs)."""
    x = t[:, :n_valid].float() / temperature  # [c, nv], becomes the CDF in place
    c, nv = x.shape
    m = _row_max(x, group)  # [c], finite: every row has a valid column somewhere
    cdf = x.sub_(m[:, None]).exp_().cumsum_(dim=1) if nv else x.new_zeros(c, 1)  # [c, nv]: running sum of e
    mass = cdf[:, -1].contiguous()  # [c] this shard's mass (relative to exp(m))
    if group is None:
        rank, masses = 0, mass[:, None]  # [c, 1]
    else:
        rank = dist.get_rank(group)
        parts = [torch.empty_like(mass) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, mass, group=group)
        masses = torch.stack(parts, dim=1)  # [c, tp]
    ends = masses.cumsum(dim=1)  # [c, tp]: where each shard's mass ends on the global axis
    target = u.float() * ends[:, -1:]  # [c, k]
    # owner: the first shard whose end lies beyond the target; never a shard without mass (end not beyond)
    owner = (ends[:, None, :] <= target[:, :, None]).sum(dim=-1)  # [c, k]
    last_with_mass = masses.shape[1] - 1 - (masses > 0).flip(1).int().argmax(dim=1)  # [c]
    owner = torch.minimum(owner, last_with_mass[:, None])
    mine = owner == rank
    if nv:
        local = target - (ends[:, rank] - mass)[:, None]  # [c, k] position inside this shard
        col = torch.searchsorted(cdf, local.contiguous(), right=True).clamp_(max=nv - 1)  # [c, k]
        e = (t.gather(1, col).float() / temperature - m[:, None]).exp()  # [c, k]: exact, not a CDF difference
        ids = torch.where(mine, col + vocab_start, 0)
        probs = torch.where(mine, e / ends[:, -1:], 0.0)
    else:
        ids, probs = torch.zeros_like(owner), torch.zeros_like(target)
    if group is not None:
        dist.all_reduce(ids, group=group)
        dist.all_reduce(probs, group=group)
    return ids, probs


@torch.no_grad()
def vocab_parallel_sample(
    logits_shard: torch.Tensor | None = None,
    *,
    k: int,
    method: Literal["sample", "topk"] = "sample",
    uniforms: torch.Tensor | None = None,
    hidden: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    temperature: float = 1.0,
    group: "torch.distributed.ProcessGroup | None" = None,
    vocab_start_index: int = 0,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's sparse distribution per token: (ids [..., k] int64, P_T(id) [..., k] fp32).

    Give either logits_shard [..., V/tp] or (hidden [..., H], weight [V/tp, H]). method "sample": k draws with
    replacement from softmax(t / T), one per uniform of ``uniforms`` [..., k] in [0, 1) (the same on every rank
    of ``group``); "topk": the k largest, sorted, with their masses (uniforms unused). group, vocab_start_index,
    vocab_size (padding excluded) and chunk_size as in `vocab_parallel_topk`.
    """
    if method not in ("sample", "topk"):
        raise ValueError(f"method {method!r} is not one of sample, topk")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    from_logits = logits_shard is not None and hidden is None and weight is None
    if not from_logits and (logits_shard is not None or hidden is None or weight is None):
        raise ValueError("give either logits_shard or both hidden and weight")
    n_cols = logits_shard.shape[-1] if from_logits else weight.shape[0]
    lead_shape = (logits_shard if from_logits else hidden).shape[:-1]
    rows = logits_shard.reshape(-1, n_cols) if from_logits else hidden.reshape(-1, hidden.shape[-1])  # [n, v] / [n, h]
    n_tokens = rows.shape[0]
    vocab_end = vocab_start_index + n_cols if vocab_size is None else vocab_size
    n_valid = max(0, min(n_cols, vocab_end - vocab_start_index))
    world = 1 if group is None else dist.get_world_size(group)
    if k < 1 or (method == "topk" and k > (vocab_size if vocab_size is not None else n_cols * world)):
        raise ValueError(f"k must be at least 1 (and at most the vocabulary for topk), got k={k}")
    if method == "sample":
        if uniforms is None or tuple(uniforms.shape) != (*lead_shape, k):
            raise ValueError(f"method sample needs uniforms of shape {(*lead_shape, k)}")
        uniforms = uniforms.reshape(n_tokens, k).to(rows.device)
    chunk = default_chunk_size(n_tokens, n_cols) if chunk_size is None else int(chunk_size)
    k_local = min(k, n_cols)
    out_ids = torch.empty(n_tokens, k if method == "sample" else k_local, device=rows.device, dtype=torch.int64)
    out_probs = torch.empty(out_ids.shape, device=rows.device, dtype=torch.float32)  # topk: local x values first
    stats = torch.empty(n_tokens, 2, device=rows.device, dtype=torch.float32)  # topk: local (max, sum exp(x - max))
    for start in range(0, n_tokens, chunk):
        end = min(start + chunk, n_tokens)
        t_c = rows[start:end] if from_logits else rows[start:end] @ weight.t()  # [c, v_local]
        if method == "sample":
            out_ids[start:end], out_probs[start:end] = _sample_chunk(t_c, n_valid, temperature, uniforms[start:end],
                                                                     vocab_start_index, group)
            continue
        x = t_c[:, :n_valid].float() / temperature  # [c, nv]
        out_probs[start:end], out_ids[start:end] = _local_topk(x, k_local, n_valid, vocab_start_index)
        m = x.amax(dim=-1) if n_valid else x.new_full((end - start,), float("-inf"))
        m_ref = torch.where(torch.isfinite(m), m, 0.0)
        stats[start:end, 0], stats[start:end, 1] = m, (x - m_ref[:, None]).exp().sum(dim=-1)
    if method == "topk":
        m = stats[:, 0].clone()
        if group is not None:
            dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
            values, ids = _gather_candidates(out_probs, group), _gather_candidates(out_ids, group)
        else:
            values, ids = out_probs, out_ids
        local_m = torch.where(torch.isfinite(stats[:, 0]), stats[:, 0], m)
        total = stats[:, 1] * (local_m - m).exp()  # [n] this shard's sum exp(x - m)
        if group is not None:
            dist.all_reduce(total, group=group)
        if values.shape[-1] != k:  # candidates from several shards: pick again
            values, where = values.topk(k, dim=-1)  # [n, k]
            ids = ids.gather(1, where)
        out_ids, out_probs = ids, (values - m[:, None] - total.log()[:, None]).exp()
    return out_ids.reshape(*lead_shape, k), out_probs.reshape(*lead_shape, k)
