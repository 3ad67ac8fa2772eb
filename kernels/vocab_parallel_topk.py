"""The teacher's global top-k per token from vocabulary-sharded logits, or straight from its final hidden
states and output-weight shard (chunked, never [N, V/tp]). Forward only (the teacher is frozen).

Each rank takes the top-k' (k' = min(k, V/tp)) of its own valid columns (padding, global id >= vocab_size,
excluded) with global ids; one all-gather per call over the TP group then brings every rank the k' * tp
candidates [N, k' * tp], of which the top-k are the global top-k: any global top-k entry is in its owner's
local top-k'. Communication: one all-gather of values [N, k'] and one of ids [N, k'] (int64) per call,
whatever the number of chunks. Ties between equal logits may pick a different (equally valued) id than a
single-device top-k would.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .fused_linear_kd_loss import default_chunk_size


def _local_topk(s: torch.Tensor, k_local: int, n_valid: int, vocab_start: int):
    """Top-k_local of the valid columns of s [c, V_local] → (values [c, k_local], global ids [c, k_local]).

    A shard with fewer than k_local valid columns pads with -inf (never chosen while vocab_size >= k)."""
    kk = min(k_local, n_valid)
    values, ids = s[:, :n_valid].topk(kk, dim=-1)  # [c, kk], sorted
    if kk < k_local:
        pad = k_local - kk
        values = torch.cat([values, values.new_full((s.shape[0], pad), float("-inf"))], dim=1)
        ids = torch.cat([ids, ids.new_zeros((s.shape[0], pad))], dim=1)
    return values, ids + vocab_start


@torch.no_grad()
def vocab_parallel_topk(
    logits_shard: torch.Tensor | None = None,
    *,
    k: int,
    hidden: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    group: "torch.distributed.ProcessGroup | None" = None,
    vocab_start_index: int = 0,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global top-k (values [..., k] in the logits' dtype, global ids [..., k] int64), sorted descending.

    Give either logits_shard [..., V/tp] or (hidden [..., H], weight [V/tp, H]): then logits are formed
    chunk by chunk (chunk_size tokens, default `fused_linear_kd_loss.default_chunk_size`), never all at
    once. group: the tensor-parallel group (None: one device holds the full vocabulary);
    vocab_start_index: global id of this shard's first column; vocab_size: global true vocabulary
    (padding excluded), k <= vocab_size. The result is the same on every rank.
    """
    from_logits = logits_shard is not None and hidden is None and weight is None
    if not from_logits and (logits_shard is not None or hidden is None or weight is None):
        raise ValueError("give either logits_shard or both hidden and weight")
    source = logits_shard if logits_shard is not None else weight
    n_cols = source.shape[-1] if logits_shard is not None else weight.shape[0]
    vocab_end = vocab_start_index + n_cols if vocab_size is None else vocab_size
    n_valid = max(0, min(n_cols, vocab_end - vocab_start_index))
    world = 1 if group is None else dist.get_world_size(group)
    if not 0 < k <= (vocab_size if vocab_size is not None else n_cols * world):
        raise ValueError(f"k must be in [1, vocab size], got k={k}")
    k_local = min(k, n_cols)  # the same on every rank (equal shards)
    if logits_shard is not None:
        lead_shape = logits_shard.shape[:-1]
        values, ids = _local_topk(logits_shard.reshape(-1, n_cols), k_local, n_valid, vocab_start_index)
    else:
        if weight.shape[1] != hidden.shape[-1]:
            raise ValueError(f"weight {tuple(weight.shape)} does not match hidden size {hidden.shape[-1]}")
        lead_shape = hidden.shape[:-1]
        rows = hidden.reshape(-1, hidden.shape[-1])  # [n, h]
        n_tokens = rows.shape[0]
        chunk = default_chunk_size(n_tokens, n_cols) if chunk_size is None else int(chunk_size)
        values = torch.empty(n_tokens, k_local, device=rows.device, dtype=torch.promote_types(rows.dtype, weight.dtype))
        ids = torch.empty(n_tokens, k_local, device=rows.device, dtype=torch.int64)
        for start in range(0, n_tokens, chunk):
            end = min(start + chunk, n_tokens)
            s_c = rows[start:end] @ weight.t()  # [c, v_local]
            values[start:end], ids[start:end] = _local_topk(s_c, k_local, n_valid, vocab_start_index)
    if world > 1:
        values, ids = _gather_candidates(values, group), _gather_candidates(ids, group)  # [n, k_local * tp]
    if values.shape[-1] != k:  # candidates from several shards (or a shard narrower than k): pick again
        values, where = values.topk(k, dim=-1)  # [n, k]
        ids = ids.gather(1, where)
    return values.reshape(*lead_shape, k), ids.reshape(*lead_shape, k)


def _gather_candidates(local: torch.Tensor, group) -> torch.Tensor:
    """[n, k'] on every rank → [n, k' * tp] (rank r's candidates in columns r k' .. (r + 1) k')."""
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local.contiguous(), group=group)
    return torch.cat(parts, dim=-1)
