"""`nemo-subnet teacher-cache`: build (or finish) a teacher cache; torchrun- and srun-aware like `train`.

Its flags are generated from ``TeacherCacheConfig`` (``--k``, ``--data.seq-length``, ...), with ``--config FILE``
and ``KEY=VALUE`` overrides; ``--for-run RUN.yaml`` fills teacher, data, samples and temperature from a training
config first (defaults < --for-run < --config < flags < overrides).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from nemo_subnet.config import add_config_arguments
    from nemo_subnet.teacher_cache.config import TeacherCacheConfig

    p = subparsers.add_parser(
        "teacher-cache", help="run the teacher once over a run's samples and store its sampled distribution",
        description="Build a teacher cache (docs/teacher_cache.md): the teacher runs forward only over the first "
        "`samples` samples of a training run's stream and stores K sampled ids per position. A cache's own "
        "config.yaml given as --config resumes it (with --resume).")
    p.add_argument("--for-run", type=Path, metavar="RUN_YAML", help="cover exactly what this training config reads "
                   "(its distill.teacher, data, train_steps * global_batch_size samples, distill.temperature)")
    p.add_argument("--resume", action="store_true", help="finish a partial build of the same cache")
    add_config_arguments(p, TeacherCacheConfig)
    p.set_defaults(func=run_teacher_cache)


def run_teacher_cache(args: argparse.Namespace) -> int:
    from nemo_subnet import config as configs
    from nemo_subnet.runtime import shutdown_runtime
    from nemo_subnet.teacher_cache.build import build_teacher_cache
    from nemo_subnet.teacher_cache.config import REQUIRED, TeacherCacheConfig
    from nemo_subnet.training.config import TrainConfig

    base = TeacherCacheConfig.for_run(TrainConfig.load(args.for_run)) if args.for_run else None
    config = configs.config_from_arguments(TeacherCacheConfig, args, required=REQUIRED, base=base)
    try:
        result = build_teacher_cache(config, resume=args.resume)
    finally:
        shutdown_runtime()
    what = "already complete" if result.built_now == 0 else (
        f"built {result.built_now} samples in {result.seconds:.1f} s")
    print(f"teacher-cache: {result.out}: {result.covered} samples, {result.bytes_per_token} bytes per token; {what}",
          flush=True)
    return 0
