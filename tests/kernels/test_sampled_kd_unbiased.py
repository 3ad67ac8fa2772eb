"""Statistical test: KD from a sampled teacher cache is unbiased, top-k is not.

A tiny language model (embedding -> tanh MLP -> untied output layer through the fused loss) and a fixed teacher.
The full-KD gradient g* (forward KL at temperature T, `fused_linear_kd_loss`) of every parameter is compared with
the mean over M = 32,000 independently sampled caches of the cache-KD gradient (`fused_linear_sampled_kd_loss`, K draws
per token). The test, applied to every estimator alike:

    relative bias  b = ||mean_m g_m - g*|| / ||g*||  <=  TOLERANCE (2%)

with M large enough that the sampled estimator's own noise (the standard error of the mean, from 40 batch means)
is under a quarter of the tolerance (asserted: the test could see a bias of that size), and, per coordinate,
|mean - g*| within Z_MAX standard errors. Top-k (renormalised, and with the tail bin) at the same bytes per token is
deterministic, so its mean is itself: it fails the same 2% bound by an order of magnitude.
"""

from __future__ import annotations

import pytest
import torch

from nemo_subnet.kernels import (Backend, Divergence, fused_linear_kd_loss, fused_linear_sampled_kd_loss,
                                 fused_linear_topk_kd_loss, vocab_parallel_sample)

VOCAB, HIDDEN, TOKENS, K, T = 64, 16, 32, 12, 1.5
GROUPS, PER_GROUP = 40, 800  # 32,000 sampled caches, in 40 groups (one fused call each: the tokens repeated)
TOLERANCE = 0.02
Z_MAX = 6.0  # ~2,100 coordinates, t with 39 dof: P(max |z| > 6) ~ 1e-3 for an unbiased estimator (Bonferroni)
# bytes per token: K = 12 sampled uint16 ids = 24 B = top-6 (uint16 id + fp16 mass); renormalised top-k: values too
TOPK_SAME_BYTES = 6


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(60)
        self.embedding = torch.nn.Parameter(torch.randn(VOCAB, HIDDEN, generator=g) * 0.5)
        self.mlp = torch.nn.Parameter(torch.randn(HIDDEN, HIDDEN, generator=g) / HIDDEN**0.5)
        self.output = torch.nn.Parameter(torch.randn(VOCAB, HIDDEN, generator=g) * 0.3)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding[tokens]  # [n, h]
        return x + torch.tanh(x @ self.mlp)  # [n, h]


def _setup():
    model = TinyLM()
    g = torch.Generator().manual_seed(61)
    tokens = torch.randint(0, VOCAB, (TOKENS,), generator=g)
    teacher = torch.randn(TOKENS, VOCAB, generator=g) * 3.0  # peaked, like a trained LM's
    return model, tokens, teacher


def _grad(model, loss_fn) -> torch.Tensor:
    model.zero_grad()
    loss_fn().backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _full_kd(model, tokens, teacher):
    return _grad(model, lambda: fused_linear_kd_loss(model.hidden(tokens), model.output, teacher_logits=teacher,
                                                     divergence=Divergence.FORWARD_KL, temperature=T,
                                                     backend=Backend.TORCH))


def _relative_bias(mean: torch.Tensor, full: torch.Tensor) -> float:
    return float((mean - full).norm() / full.norm())


def test_sampled_cache_gradient_is_unbiased_and_topk_is_not():
    torch.manual_seed(0)
    model, tokens, teacher = _setup()
    full = _full_kd(model, tokens, teacher)
    g = torch.Generator().manual_seed(62)
    repeated = tokens.repeat(PER_GROUP)  # [PER_GROUP * n]: one independent cache per copy

    def group_mean():  # the MEAN loss over the copies: its gradient is the mean of PER_GROUP caches' gradients
        ids, _ = vocab_parallel_sample(teacher.repeat(PER_GROUP, 1), k=K, temperature=T,
                                       uniforms=torch.rand(len(repeated), K, generator=g))
        return fused_linear_sampled_kd_loss(model.hidden(repeated), model.output, ids, temperature=T,
                                            backend=Backend.TORCH)

    means = torch.stack([_grad(model, group_mean) for _ in range(GROUPS)])  # [groups, params]
    mean, stderr = means.mean(0), means.std(0) / GROUPS**0.5  # batch means: the SE of the overall mean
    noise = float(stderr.norm() / full.norm())
    assert noise < TOLERANCE / 4, f"the test has no power: sampled noise {noise:.4f} of ||g*||"
    bias = _relative_bias(mean, full)
    assert bias <= TOLERANCE, f"sampled cache: relative bias {bias:.4f} > {TOLERANCE} (noise {noise:.4f})"
    print(f"sampled K={K}: relative bias {bias:.4f}, noise {noise:.4f} over {GROUPS * PER_GROUP} caches")
    z = (mean - full).abs() / stderr.clamp(min=1e-12)
    assert float(z.max()) <= Z_MAX, f"max |z| {float(z.max()):.2f} over {z.numel()} coordinates"

    ids, probs = vocab_parallel_sample(teacher, k=TOPK_SAME_BYTES, method="topk", temperature=T)
    with_tail = _grad(model, lambda: fused_linear_sampled_kd_loss(model.hidden(tokens), model.output, ids, probs,
                                                                  tail=True, temperature=T, backend=Backend.TORCH))
    renormalised = _grad(model, lambda: fused_linear_topk_kd_loss(model.hidden(tokens), model.output,
                                                                  teacher.gather(1, ids), ids, temperature=T,
                                                                  backend=Backend.TORCH))
    for name, estimate in (("top-k with tail", with_tail), ("renormalised top-k", renormalised)):
        bias_topk = _relative_bias(estimate, full)
        print(f"{name}: relative bias {bias_topk:.4f}")
        assert bias_topk > 5 * TOLERANCE, f"{name} passed the unbiasedness test (bias {bias_topk:.4f})"


@pytest.mark.parametrize("k", [1, 4])
def test_expected_loss_is_the_cross_entropy_to_the_teacher(k):
    """E[cache loss] = CE(P_T, Q_T) = KL + H(P_T): the mean over caches of the loss, within 5 standard errors."""
    model, tokens, teacher = _setup()
    g = torch.Generator().manual_seed(63)
    with torch.no_grad():
        hidden = model.hidden(tokens)
        losses = torch.stack([fused_linear_sampled_kd_loss(
            hidden, model.output, vocab_parallel_sample(teacher, k=k, uniforms=torch.rand(TOKENS, k, generator=g),
                                                        temperature=T)[0], temperature=T, scale_t2=False)
            for _ in range(400)])
        log_p = torch.log_softmax(teacher / T, -1)
        log_q = torch.log_softmax(hidden @ model.output.T / T, -1)
        expected = -(log_p.exp() * log_q).sum(-1).mean()
    stderr = losses.std() / len(losses) ** 0.5
    assert abs(float(losses.mean() - expected)) <= 5 * float(stderr), (float(losses.mean()), float(expected))
