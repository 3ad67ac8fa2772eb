"""Section `setup`: what the training, kd_step, search and parallel sections share, made the way users make it.

- data: ``nemo-subnet data prepare`` on the embedded stdlib corpus with a sentencepiece tokenizer trained
  on it (no downloads anywhere);
- teacher: a random checkpoint (weights drawn on the device) written by `save_model`, stored in bf16 on GPU
  (as an imported Llama checkpoint is), so its ``model.yaml`` says bfloat16 and search loads it in bf16. Teacher
  and student have more embedding rows than the tokenizer has tokens, as real checkpoints do (on GPU
  Llama-3's 128256 rows, which make ``distill.fused_output: auto`` take the fused path);
- student: a model YAML (``init: {random: ...}``), so the KD run also builds a model from scratch (drawn on
  the host: the same weights at TP=1 and TP=2).

`run_config` writes the run YAML that the training sections pass to ``nemo-subnet train``: the defaults a user
gets (``alpha_ce: 0``, ``beta_kd: 1``, precision auto = bf16 on GPU) with the profile's ``fused_output``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .common import progress
from .profiles import PROFILES, ModelSize, Profile


def model_dict(size: ModelSize, vocab: int, max_position: int) -> dict:
    return dict(family="llama", vocab_size=vocab, hidden_size=size.hidden, num_layers=size.layers,
                num_attention_heads=size.heads, num_query_groups=size.groups, ffn_hidden_size=size.ffn,
                kv_channels=size.kv_channels, max_position_embeddings=max_position, normalization="RMSNorm",
                norm_eps=1e-5, activation="silu", gated_mlp=True, add_bias_linear=False, add_qkv_bias=False,
                tie_embeddings=size.tie_embeddings)


def run_config(profile: Profile, artifacts: dict, run_dir: Path, *, steps: int | None = None,
               checkpoint_every: int | None = None, tp: int = 1, pp: int = 1, peak_flops: float | None = None) -> dict:
    """The KD run of the training sections (bf16 on GPU: precision auto; alpha_ce and beta_kd at their defaults)."""
    t = profile.train
    every = t["checkpoint_every"] if checkpoint_every is None else checkpoint_every
    return {
        "run_dir": str(run_dir),
        "init": {"random": artifacts["setup.student_yaml"]},
        "data": {"path": artifacts["setup.data"], "seq_length": t["seq_length"],
                 "micro_batch_size": t["micro_batch_size"], "global_batch_size": t["global_batch_size"]},
        "optimizer": {"lr": 3e-4, "min_lr": 3e-5},
        "schedule": {"train_steps": steps or t["steps"], "warmup_steps": 3},
        "distill": {"teacher": artifacts["setup.teacher"], "fused_output": profile.fused_output},
        "checkpoint": {"every_steps": every, "keep_last": 1, "save_final": False},
        "logging": {"eval_every": t["eval_every"], "eval_iters": t["eval_iters"], "progress": False,
                    "tensorboard": False, "peak_flops": peak_flops},
        "parallel": {"tp": tp, "pp": pp, "precision": "auto"},
        "seed": 1234,
    }


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _prepare_data(profile: Profile, out: Path) -> None:
    from nemo_subnet.cli import main as cli

    d = profile.data
    code = cli(["data", "prepare", "--input", "stdlib", "--out", str(out), "--train-tokenizer", "sentencepiece",
                "--vocab-size", str(d["vocab_size"]), "--max-bytes", str(d["max_bytes"]),
                "--tokenizer-train-bytes", str(d["tokenizer_train_bytes"]), "--valid-fraction", "0.1",
                "--no-progress"])
    if code != 0:
        raise RuntimeError(f"nemo-subnet data prepare exited {code}")


def _save_teacher(profile: Profile, cfg_dict: dict, out: Path) -> None:
    import torch

    from nemo_subnet.checkpointing import atomic_directory, save_model
    from nemo_subnet.models import ModelConfig, build_gpt_model
    from nemo_subnet.runtime import init_runtime, seeded_generator, shutdown_runtime

    runtime = init_runtime(tp=1, pp=1, seed=11)
    cuda = torch.cuda.is_available()
    cfg = ModelConfig(**{**cfg_dict, "dtype": "bfloat16" if cuda else "float32"})
    # drawn on the device: megatron's host-side init of 1.28B weights would eat much of the section's budget (a
    # user imports a trained teacher instead); the students of the other sections are drawn the megatron way
    model = build_gpt_model(cfg, params_dtype=cfg.torch_dtype, perform_initialization=False)
    gen = seeded_generator(runtime.device, 11)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:  # norm weights (no biases in this Llama shape)
                param.fill_(1.0)
            else:
                param.normal_(0.0, cfg.init_method_std, generator=gen)
    with atomic_directory(out) as tmp:
        save_model(model, cfg, tmp)
    shutdown_runtime()


def run(ctx, rec) -> None:
    import json

    profile = PROFILES[ctx.profile]
    root = ctx.work / "setup"
    data, teacher = root / "data", root / "teacher"
    max_position = max(profile.train["seq_length"], profile.search["seq_length"])
    progress(rec.section, f"data prepare: stdlib, sentencepiece vocab {profile.data['vocab_size']}")
    _prepare_data(profile, data)
    meta = json.loads((data / "dataset.json").read_text())
    tokens = {split: meta["splits"][split]["tokens"] for split in meta["splits"]}
    rec.number("data_tokens", tokens)
    rec.number("tokenizer_vocab", meta["vocab_size"])
    rec.check("data prepared", tokens["train"] > 0 and tokens["valid"] > 0, f"{tokens}")
    teacher_cfg = model_dict(profile.teacher, profile.model_vocab, max_position)
    student_cfg = model_dict(profile.student, profile.model_vocab, max_position)
    progress(rec.section, f"teacher checkpoint: {profile.teacher}")
    _save_teacher(profile, teacher_cfg, teacher)
    student_yaml = write_yaml(root / "student.yaml", student_cfg)
    rec.check("teacher checkpoint written", (teacher / "model.yaml").is_file() and (teacher / "weights").is_dir())
    stored = yaml.safe_load((teacher / "model.yaml").read_text())["dtype"]
    want = "float32" if ctx.smoke else "bfloat16"
    rec.check("teacher checkpoint records its dtype", stored == want, f"model.yaml dtype {stored} (want {want})")
    rec.number("embedding_rows_vs_tokens", f"{profile.model_vocab} rows, {meta['vocab_size']} tokenizer tokens")
    for key, value in (("setup.data", data), ("setup.teacher", teacher), ("setup.student_yaml", student_yaml)):
        rec.artifact(key, str(value))
