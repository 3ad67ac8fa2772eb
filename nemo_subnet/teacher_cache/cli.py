"""`nemo-subnet teacher-cache`: build (or finish) a teacher cache; torchrun- and srun-aware like `train`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "teacher-cache", help="run the teacher once over a run's samples and store its sampled distribution",
        description="Build a teacher cache (docs/teacher_cache.md): the teacher runs forward only over the first "
        "`samples` samples of a training run's stream and stores K sampled ids per position. Settings from "
        "--config YAML and/or --for-run RUN.yaml (teacher, data, samples, temperature of a training config), "
        "then dotted key=value overrides, e.g. k=12 out=caches/k12.")
    p.add_argument("--config", type=Path, help="TeacherCacheConfig YAML (a cache's own config.yaml resumes it)")
    p.add_argument("--for-run", type=Path, metavar="RUN_YAML", help="cover exactly what this training config reads")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--resume", action="store_true", help="finish a partial build of the same cache")
    p.set_defaults(func=run_teacher_cache)


def run_teacher_cache(args: argparse.Namespace) -> int:
    from nemo_subnet.cli import UserError
    from nemo_subnet.runtime import shutdown_runtime
    from nemo_subnet.teacher_cache.build import build_teacher_cache
    from nemo_subnet.teacher_cache.config import TeacherCacheConfig
    from nemo_subnet.training.config import TrainConfig

    if args.config is None and args.for_run is None:
        raise UserError("give --config CACHE_YAML and/or --for-run RUN_YAML")
    base = TeacherCacheConfig.for_run(TrainConfig.load(args.for_run)) if args.for_run else None
    config = TeacherCacheConfig.load(args.config, args.overrides, base=base)
    try:
        result = build_teacher_cache(config, resume=args.resume)
    finally:
        shutdown_runtime()
    what = "already complete" if result.built_now == 0 else (
        f"built {result.built_now} samples in {result.seconds:.1f} s")
    print(f"teacher-cache: {result.out}: {result.covered} samples, {result.bytes_per_token} bytes per token; {what}",
          flush=True)
    return 0
