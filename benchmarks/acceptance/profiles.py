"""Sizes of every section: the GPU acceptance run, and the same logic at tiny sizes on CPU (``--smoke-cpu``).

The GPU profile is sized for one H100 / H200 (80 / 141 GB) and for what a user's first GPU run exercises: a
Llama-3 vocabulary (128256 embedding rows), so ``distill.fused_output: auto`` takes the fused output path
(4096 tokens per micro-batch > one 1024-token chunk), the default ``alpha_ce: 0``, bf16 everywhere (the teacher
checkpoint records bfloat16, so the search runs in it). The largest single case (N x V > 2^31 logits in bf16,
with gradients) stays under 40 GB.

Time budgets are caps (a section past its budget is killed and fails), chosen so that their sum stays well
inside the whole run's limit; typical runtimes are below them. One GPU (480 s limit, 400 s of budgets):

    section        budget s   what takes the time
    environment        -      runs in the parent (~1 s)
    setup             45      data prepare + sentencepiece (~15 s), a 1.28B-parameter teacher drawn and saved
    kernels           60      14 cases, one of 2.5e9 logits (~15 s of it)
    speed             55      ours + eager in-process; Liger and torch.compile in children capped at 15 / 25 s
    train_resume     110      three CLI runs (reference, SIGKILLed, resumed), ~20 s start-up each
    kd_step           45      one KD, student and teacher-forward step each, 3 x 5 timed reps
    mfu                -      runs in the parent, from the numbers above
    hf_parity         40      four tiny families, fp32 and bf16
    search            40      8 candidates in bf16 + two reloads for the invariants
    (sum)            395      margin 85 s (18 %) to the 480 s limit
    parallel         150      2+ GPUs only (added to the limit): TP=2 from scratch, PP=2 resumed
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
    tie_embeddings: bool = False


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
    """seq_length, micro/global batch, steps, checkpoint every (the killed / resumed runs), kill after, eval_every,
    eval_iters. The TP=2 run repeats the reference config at tp=2, so the two loss curves are comparable step by
    step; the PP=2 run resumes the killed run's checkpoint at pp=2 and continues the reference's curve."""
    fused_output: str
    """``distill.fused_output`` of the training sections: auto on GPU (the Llama-3 vocabulary makes it fused),
    on in the smoke run (its tiny vocabulary would not)."""
    kd_step: dict
    """warmup, reps: CUDA-event timings of the KD step, the student step and the teacher forward; ratio_max: the
    KD step against student step + teacher forward (required), ratio_target (reported)."""
    timing_rtol: float
    """How far the training run's logged step time (host clock, its own process) may be from kd_step's CUDA-event
    time of the same step: a shared CPU is much noisier than a GPU."""
    search: dict
    """evaluations, val_batches, seq_length, micro_batch_size, round_to (hidden / ffn choices), eval_mfu_target."""
    hf_families: tuple[str, ...]
    """Families of the HF import / export section."""
    parallel_on_cpu: bool
    """Run the parallel section (TP=2, PP=2) on 2 CPU ranks (gloo) when there is no GPU (smoke only)."""
    budgets: dict = field(default_factory=dict)
    """Seconds per section."""
    time_limit: int = 480
    """Seconds for the whole run (one GPU; the parallel section's budget is added with 2+ GPUs)."""
    resume_rtol: float = 0.0
    """Relative tolerance of the resumed loss curve vs the uninterrupted one."""
    parallel_rtol: float = 0.0


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
    LogitCase("kd_loss", 16384, 151936, "bfloat16", "jsd", beta=0.5, temperature=2.0, ce_weight=0.5,
              vocab_size=151665, labels=True, loss_mask=True, huge=True),
)

GPU = Profile(
    name="gpu",
    kernel_cases=_GPU_CASES,
    huge_elements=16384 * 151936,
    chunk_elements=1 << 28,  # 1 GiB per fp32 chunk copy
    speed=dict(n=8192, h=4096, v=128256, dtype="bfloat16", warmup=2, reps=5,
               optional_timeout_s={"liger": 15, "torch_compile": 25}),
    data=dict(vocab_size=8000, max_bytes=8_000_000, tokenizer_train_bytes=2_000_000),  # ~2M train tokens: one epoch
    model_vocab=128256,  # Llama-3's rows (8000 of them tokens): fused output on under auto, as a first run gets
    teacher=ModelSize(hidden=2048, layers=16, heads=16, groups=8, ffn=5632, kv_channels=128),
    student=ModelSize(hidden=1024, layers=12, heads=8, groups=4, ffn=2816, kv_channels=128, tie_embeddings=True),
    train=dict(seq_length=1024, micro_batch_size=4, global_batch_size=32, steps=14, checkpoint_every=5,
               kill_after=7, eval_every=7, eval_iters=4),
    fused_output="auto",
    # expected ~1.10: one more student output GEMM for the logged CE and the KD kernels' second buffer; the CE
    # pass building its gradient (two more GEMMs, a grad kernel) would put it near 1.3
    kd_step=dict(warmup=2, reps=5, ratio_max=1.25, ratio_target=1.10),
    timing_rtol=0.3,
    search=dict(evaluations=8, val_batches=4, seq_length=1024, micro_batch_size=4, round_to=64, eval_mfu_target=0.10),
    hf_families=("llama", "qwen2", "gpt_neox", "qwen3"),
    parallel_on_cpu=False,
    budgets=dict(setup=45, kernels=60, speed=55, train_resume=110, kd_step=45, mfu=10, hf_parity=40, search=40,
                 parallel=150),
    time_limit=480,  # the one-GPU sections' budgets sum to 395 s; the parallel section (2+ GPUs) adds its own
    resume_rtol=2e-2,  # bf16 on GPU: reductions (attention backward, atomics) are not bit-reproducible
    parallel_rtol=3e-2,
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
    speed=dict(n=256, h=64, v=1000, dtype="float32", warmup=1, reps=2,
               optional_timeout_s={"liger": 60, "torch_compile": 120}),
    data=dict(vocab_size=480, max_bytes=200_000, tokenizer_train_bytes=200_000),
    model_vocab=500,  # 480 tokenizer tokens, 500 rows, padded to 512
    teacher=ModelSize(hidden=96, layers=4, heads=4, groups=2, ffn=192, kv_channels=24),
    student=ModelSize(hidden=64, layers=2, heads=4, groups=2, ffn=128, kv_channels=16, tie_embeddings=True),
    train=dict(seq_length=64, micro_batch_size=2, global_batch_size=4, steps=8, checkpoint_every=3,
               kill_after=5, eval_every=4, eval_iters=2),
    fused_output="on",
    kd_step=dict(warmup=1, reps=3, ratio_max=3.0, ratio_target=1.5),  # tiny models on a shared CPU: overheads
    timing_rtol=3.0,
    search=dict(evaluations=3, val_batches=2, seq_length=32, micro_batch_size=2, round_to=8, eval_mfu_target=None),
    hf_families=("llama", "gpt_neox"),  # sequential and parallel residual; the GPU run covers all four
    parallel_on_cpu=True,  # the TP=2 / PP=2 logic runs on 2 gloo ranks (tests/training covers the numerics)
    # generous: CI machines are shared; these bound a hang, they do not size the work
    budgets=dict(kernels=300, speed=400, setup=300, train_resume=900, kd_step=300, mfu=60, hf_parity=300, search=300,
                 parallel=900),
    time_limit=3600,
    resume_rtol=0.0,  # CPU fp32: resume is bit-exact
    parallel_rtol=1e-4,
)

PROFILES = {"gpu": GPU, "smoke": SMOKE}
