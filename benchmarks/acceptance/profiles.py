"""Sizes of every section: the GPU acceptance run, and the same logic at tiny sizes on CPU (``--smoke-cpu``).

The GPU profile is sized for one H100 / H200 (80 / 141 GB): the whole run stays under 8 minutes and the
largest single case (N x V > 2^31 logits in bf16, with gradients) under 40 GB. Time budgets are caps: a
section that runs past its budget is killed and fails; typical runtimes are well below.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LogitCase:
    """One kernel correctness case (see kernel_checks.py)."""

    op: str
    """kd_loss | topk_kd_loss | fused_linear_kd_loss | vocab_parallel_kd_loss"""
    n: int
    v: int
    dtype: str
    divergence: str = "forward_kl"
    beta: float = 0.5
    temperature: float = 1.0
    ce_weight: float = 0.0
    vocab_size: int | None = None
    """True vocabulary (< v: padding columns excluded); None: no padding."""
    labels: bool = False
    """Labels with some ignore_index tokens (mask tokens; CE targets)."""
    loss_mask: bool = False
    k: int = 0
    """topk: teacher entries per token."""
    h: int = 0
    """fused: student hidden size (teacher: 3/4 of it, or given logits when teacher_logits)."""
    teacher_logits: bool = False
    huge: bool = False
    """The N x V > 2^31 case (reference and mirror run in row chunks)."""

    @property
    def label(self) -> str:
        extra = f" h={self.h}" if self.h else (f" k={self.k}" if self.k else "")
        pad = f" vocab={self.vocab_size}" if self.vocab_size else ""
        ce = f" ce={self.ce_weight}" if self.ce_weight else ""
        return f"{self.op} {self.dtype} n={self.n} v={self.v}{extra}{pad} {self.divergence}{ce} T={self.temperature}"


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    groups: int
    ffn: int
    kv_channels: int


@dataclass(frozen=True)
class Profile:
    name: str
    kernel_cases: tuple[LogitCase, ...]
    huge_elements: int
    """N x V of the huge case (reported; > 2^31 on GPU)."""
    chunk_elements: int
    """Logits per row chunk of the reference (and of the mirror in the huge case)."""
    speed: dict
    """N, H, V, dtype, warmup, reps of the fused linear + KD benchmark."""
    data: dict
    """`nemo-subnet data prepare` sizes: tokenizer vocab, corpus bytes, tokenizer training bytes."""
    model_vocab: int
    """Embedding rows of teacher and student: more than the tokenizer's tokens, as in real checkpoints."""
    teacher: ModelSize
    student: ModelSize
    train: dict
    """seq_length, micro/global batch, steps, checkpoint every, kill after, eval_every, eval_iters. The TP=2
    run repeats the reference run's config at tp=2, so the two loss curves are comparable step by step."""
    search: dict
    """evaluations, val_batches, seq_length, micro_batch_size, round_to (hidden / ffn choices)."""
    hf_families: tuple[str, ...]
    """Families of the HF import / export section."""
    tp2_on_cpu: bool
    """Run the TP=2 section on 2 CPU ranks (gloo) when there is no GPU (smoke only)."""
    budgets: dict = field(default_factory=dict)
    """Seconds per section."""
    time_limit: int = 480
    """Seconds for the whole run."""
    resume_rtol: float = 0.0
    """Relative tolerance of the resumed loss curve vs the uninterrupted one."""
    tp2_rtol: float = 0.0


_GPU_CASES = (
    # odd shapes (not multiples of any block size), every divergence, CE, padding, masks
    LogitCase("kd_loss", 37, 1001, "float32", "forward_kl", ce_weight=0.5, vocab_size=997, labels=True),
    LogitCase("kd_loss", 37, 1001, "bfloat16", "jsd", beta=0.3, temperature=2.0, loss_mask=True),
    LogitCase("kd_loss", 41, 1271, "float32", "reverse_kl", temperature=1.5, labels=True),
    LogitCase("topk_kd_loss", 37, 1001, "float32", "forward_kl", k=13, labels=True),
    LogitCase("fused_linear_kd_loss", 37, 1001, "float32", "jsd", ce_weight=0.4, labels=True, h=96, vocab_size=990),
    LogitCase("vocab_parallel_kd_loss", 37, 1001, "float32", "forward_kl", ce_weight=1.0, labels=True),
    # production shapes (Llama-3 128256, Qwen2.5 151936 / 151665, Pythia 50304 / 50277)
    LogitCase("kd_loss", 4096, 128256, "bfloat16", "forward_kl", ce_weight=0.5, labels=True),
    LogitCase("kd_loss", 2048, 151936, "float32", "jsd", beta=0.5, temperature=2.0, vocab_size=151665),
    LogitCase("kd_loss", 4096, 50304, "bfloat16", "reverse_kl", vocab_size=50277, loss_mask=True),
    LogitCase("topk_kd_loss", 4096, 128256, "bfloat16", "jsd", beta=0.5, temperature=2.0, k=64),
    LogitCase("fused_linear_kd_loss", 8192, 128256, "bfloat16", "forward_kl", ce_weight=0.5, labels=True, h=4096),
    LogitCase("fused_linear_kd_loss", 2048, 151936, "float32", "reverse_kl", h=2048, vocab_size=151665,
              teacher_logits=True),
    LogitCase("vocab_parallel_kd_loss", 4096, 128256, "bfloat16", "jsd", beta=0.5, labels=True, ce_weight=0.5),
    # N x V = 16384 x 151936 = 2.49e9 > 2^31: 5 GB per bf16 tensor; int32 offsets would overflow here
    LogitCase("kd_loss", 16384, 151936, "bfloat16", "forward_kl", ce_weight=0.5, vocab_size=151665, labels=True,
              huge=True),
    LogitCase("kd_loss", 16384, 151936, "bfloat16", "jsd", beta=0.5, temperature=2.0, loss_mask=True, huge=True),
)

GPU = Profile(
    name="gpu",
    kernel_cases=_GPU_CASES,
    huge_elements=16384 * 151936,
    chunk_elements=1 << 28,  # 1 GiB per fp32 chunk copy
    speed=dict(n=8192, h=4096, v=128256, dtype="bfloat16", warmup=2, reps=5),
    data=dict(vocab_size=8000, max_bytes=8_000_000, tokenizer_train_bytes=2_000_000),  # ~2M train tokens: one epoch
    model_vocab=8050,  # padded to 8064: the padding-exclusion path runs; 50 rows no token maps to
    teacher=ModelSize(hidden=2048, layers=16, heads=16, groups=8, ffn=5632, kv_channels=128),
    student=ModelSize(hidden=1024, layers=12, heads=8, groups=4, ffn=2816, kv_channels=128),
    train=dict(seq_length=1024, micro_batch_size=4, global_batch_size=32, steps=30, checkpoint_every=10,
               kill_after=15, eval_every=10, eval_iters=4),
    search=dict(evaluations=6, val_batches=4, seq_length=1024, micro_batch_size=4, round_to=64),
    hf_families=("llama", "qwen2", "gpt_neox", "qwen3"),
    tp2_on_cpu=False,
    budgets=dict(kernels=90, speed=100, setup=50, train_resume=130, mfu=10, hf_parity=45, search=45, tp2=90),
    time_limit=480,  # the one-GPU sections' budgets sum to 470 s; TP=2 (2+ GPUs) adds its own 90 s
    resume_rtol=2e-2,  # bf16 on GPU: reductions (attention backward, atomics) are not bit-reproducible
    tp2_rtol=3e-2,
)

_SMOKE_CASES = (
    LogitCase("kd_loss", 13, 257, "float32", "forward_kl", ce_weight=0.5, vocab_size=250, labels=True),
    LogitCase("kd_loss", 13, 257, "bfloat16", "jsd", beta=0.3, temperature=2.0, loss_mask=True),
    LogitCase("kd_loss", 11, 301, "float32", "reverse_kl", temperature=1.5, labels=True),
    LogitCase("topk_kd_loss", 13, 257, "float32", "jsd", k=7, labels=True),
    LogitCase("fused_linear_kd_loss", 21, 257, "bfloat16", "forward_kl", ce_weight=0.5, labels=True, h=32),
    LogitCase("vocab_parallel_kd_loss", 13, 257, "float32", "forward_kl", ce_weight=1.0, labels=True),
    # the huge case's machinery (row-chunked reference and mirror) at a tiny size
    LogitCase("kd_loss", 40, 300, "bfloat16", "forward_kl", ce_weight=0.5, vocab_size=290, labels=True, huge=True),
)

SMOKE = Profile(
    name="smoke",
    kernel_cases=_SMOKE_CASES,
    huge_elements=40 * 300,
    chunk_elements=16 * 300,  # several chunks per case: the chunked path is what runs on the GPU
    speed=dict(n=256, h=64, v=1000, dtype="float32", warmup=1, reps=2),
    data=dict(vocab_size=480, max_bytes=200_000, tokenizer_train_bytes=200_000),
    model_vocab=500,  # 480 tokenizer tokens, 500 rows, padded to 512
    teacher=ModelSize(hidden=96, layers=4, heads=4, groups=2, ffn=192, kv_channels=24),
    student=ModelSize(hidden=64, layers=2, heads=4, groups=2, ffn=128, kv_channels=16),
    train=dict(seq_length=64, micro_batch_size=2, global_batch_size=4, steps=8, checkpoint_every=3,
               kill_after=5, eval_every=4, eval_iters=2),
    search=dict(evaluations=3, val_batches=2, seq_length=32, micro_batch_size=2, round_to=8),
    hf_families=("llama", "gpt_neox"),  # sequential and parallel residual; the GPU run covers all four
    tp2_on_cpu=False,  # 2 gloo ranks would double the smoke run's cost; tests/training covers TP=2 on CPU
    # generous: CI machines are shared; these bound a hang, they do not size the work
    budgets=dict(kernels=300, speed=300, setup=300, train_resume=900, mfu=60, hf_parity=300, search=300, tp2=600),
    time_limit=2400,
    resume_rtol=0.0,  # CPU fp32: resume is bit-exact
    tp2_rtol=1e-4,
)

PROFILES = {"gpu": GPU, "smoke": SMOKE}
