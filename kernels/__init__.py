"""Distillation-loss kernels (installed as ``nemo_subnet.kernels``).

Ops (each: Triton kernels on CUDA, a pure-torch mirror on CPU, an autograd Function, a functional API):
    kd_loss                 forward KL / reverse KL / JSD(beta) (+ CE) from full logits
    topk_kd_loss            the same against a top-k teacher given as (values, indices)
    fused_linear_kd_loss    from hidden states and output-layer weights, chunked, never N x V
                            (also vocab-parallel, and CE only without a teacher)
    vocab_parallel_kd_loss  logits sharded over tensor-parallel ranks (Megatron's vocab partition)
    vocab_parallel_topk     the teacher's global top-k (values, ids) from sharded logits or hidden + weight
    vocab_parallel_topk_kd_loss  top-k KD (+ CE) on sharded student logits, no dense teacher
    fused_linear_topk_kd_loss    the same from hidden states and the output-weight shard, chunked
    vocab_parallel_sample   what a teacher cache stores: K draws from the teacher's softmax(t / T) (or its
                            top-k with their masses), from sharded logits or hidden + weight
    fused_linear_sampled_kd_loss  CE against that sparse target (sampled: unbiased KD gradient), fused, chunked
`reference` holds naive definitions used by tests and benchmarks. See docs/kernels.md.
"""

from ._common import Backend, Divergence, Reduction, interpreter_active
from .fused_linear_kd_loss import FusedLinearKDLossFunction, default_chunk_size, fused_linear_kd_loss
from .fused_linear_sampled_kd_loss import FusedLinearSampledKDLossFunction, fused_linear_sampled_kd_loss
from .fused_linear_topk_kd_loss import FusedLinearTopKKDLossFunction, fused_linear_topk_kd_loss
from .kd_loss import LogitKDLossFunction, kd_loss
from .topk_kd_loss import TopKKDLossFunction, topk_kd_loss
from .vocab_parallel_kd_loss import vocab_parallel_kd_loss
from .vocab_parallel_sample import vocab_parallel_sample
from .vocab_parallel_topk import vocab_parallel_topk
from .vocab_parallel_topk_kd_loss import VocabParallelTopKKDLossFunction, vocab_parallel_topk_kd_loss

__all__ = [
    "Backend",
    "Divergence",
    "Reduction",
    "interpreter_active",
    "kd_loss",
    "topk_kd_loss",
    "fused_linear_kd_loss",
    "vocab_parallel_kd_loss",
    "default_chunk_size",
    "LogitKDLossFunction",
    "TopKKDLossFunction",
    "FusedLinearKDLossFunction",
    "vocab_parallel_topk",
    "vocab_parallel_topk_kd_loss",
    "fused_linear_topk_kd_loss",
    "VocabParallelTopKKDLossFunction",
    "FusedLinearTopKKDLossFunction",
    "vocab_parallel_sample",
    "fused_linear_sampled_kd_loss",
    "FusedLinearSampledKDLossFunction",
]
