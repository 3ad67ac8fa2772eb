"""Recipe presets: plain functions returning a ``PipelineConfig``, each derived from a base by mutation.

- ``tiny``: a seconds-scale smoke run on a laptop CPU (stdlib corpus, teacher pretrained here). CI runs it.
- ``pythia_410m``: Pythia-410M -> ~160M student (the paper's setting); point ``hf_model`` at a local HF dir.
- ``llama_1b``: a Llama-style 1B (e.g. Llama-3.2-1B) -> ~400M student.

The realistic presets are sized for a GPU cluster (bf16 automatically on GPU; ``launch`` picks nodes and
GPUs) and are built and dry-run in tests here, not executed. Their ``hf_model`` / ``data.inputs`` are
placeholders that must be overridden (``config.hf_model=/path``); a missing HF path is a clear error.
"""

from __future__ import annotations

import dataclasses

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


PRESETS = {"tiny": tiny, "pythia_410m": pythia_410m, "llama_1b": llama_1b}
