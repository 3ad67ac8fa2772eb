"""torchrun worker: vocab-parallel KD loss on each rank's shard == full-vocabulary kd_loss (gloo, CPU).

Every rank builds the same full logits (same seed), keeps its shard of the (padded) vocabulary, and checks
loss and shard gradient against kd_loss on the full tensors. Prints "VP OK <case>" per case.
"""

from __future__ import annotations

import argparse
import os
import warnings

import torch
import torch.distributed as dist

from nemo_subnet.kernels import Backend, Divergence, Reduction, kd_loss, vocab_parallel_kd_loss

warnings.filterwarnings("ignore", message="invalid value encountered", category=RuntimeWarning)

CASES = [  # name, divergence, beta, temperature, ce_weight, padded, reduction
    ("fkl", Divergence.FORWARD_KL, 0.5, 1.0, 0.0, False, Reduction.MEAN),
    ("fkl_T2_ce_pad", Divergence.FORWARD_KL, 0.5, 2.0, 0.5, True, Reduction.MEAN),
    ("rkl_pad", Divergence.REVERSE_KL, 0.5, 1.0, 0.0, True, Reduction.SUM),
    ("jsd0.1_ce", Divergence.JSD, 0.1, 1.0, 0.3, False, Reduction.NONE),
    ("jsd0.5_T2_ce_pad", Divergence.JSD, 0.5, 2.0, 0.3, True, Reduction.MEAN),
    ("jsd0.9_pad", Divergence.JSD, 0.9, 2.0, 0.0, True, Reduction.SUM),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=[b.value for b in Backend], default="torch")
    parser.add_argument("--cases", default=",".join(c[0] for c in CASES))
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    n, v_local = 19, 64  # global padded vocab 128 at TP=2
    wanted = set(args.cases.split(","))
    for seed, (name, divergence, beta, temperature, ce_weight, padded, reduction) in enumerate(CASES):
        if name not in wanted:
            continue
        vocab = world * v_local - (37 if padded else 0)  # padding at the end of the last shard
        g = torch.Generator().manual_seed(seed)  # same full logits on every rank
        teacher = torch.randn(n, world * v_local, generator=g) * 2
        student = (0.6 * teacher + torch.randn(n, world * v_local, generator=g) * 2).requires_grad_()
        labels = torch.randint(0, vocab, (n,), generator=g)
        labels[::5] = -100
        loss_mask = (torch.rand(n, generator=g) > 0.2).float()
        kwargs = dict(divergence=divergence, beta=beta, temperature=temperature, labels=labels,
                      loss_mask=loss_mask, reduction=reduction, vocab_size=vocab, ce_weight=ce_weight)
        full = kd_loss(student, teacher, backend=Backend.TORCH, **kwargs)
        go = torch.rand_like(full) + 0.5
        (full_grad,) = torch.autograd.grad(full, student, go)
        start = rank * v_local
        shard = student.detach()[:, start:start + v_local].clone().requires_grad_()
        loss = vocab_parallel_kd_loss(shard, teacher[:, start:start + v_local], group=dist.group.WORLD,
                                      vocab_start_index=start, backend=Backend(args.backend), **kwargs)
        (grad,) = torch.autograd.grad(loss, shard, go)
        torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-6)
        expected_grad = full_grad[:, start:start + v_local]
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5 * float(full_grad.abs().max()))
        print(f"VP OK {name} rank={rank} backend={args.backend}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
