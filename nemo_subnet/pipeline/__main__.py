"""``python -m nemo_subnet.pipeline --config pipeline.yaml [--stage NAME ...] [key=value ...]``.

Runs the named stages (default: all) of a pipeline YAML in order, reusing finished ones. Used by the
plain sbatch templates and launch/torchrun.sh; NeMo-Run tasks call ``run_pipeline_stage`` directly.
Exit codes: 0 done, 2 a stage failed (its one-line error on stderr), 75 a stage was stopped by SIGTERM
(not finished; launching again resumes it). ``--print-kind`` prints each named stage's kind (host, single,
evaluate, train: where it runs, see runner.StageKind) for this config instead of running it; the sbatch
templates launch each stage accordingly.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from nemo_subnet.errors import UserError
    from nemo_subnet.pipeline import run_pipeline
    from nemo_subnet.pipeline.config import PipelineConfig
    from nemo_subnet.pipeline.runner import StageError, StageInterrupted
    from nemo_subnet.exit_codes import PREEMPTED as EXIT_PREEMPTED

    parser = argparse.ArgumentParser(prog="python -m nemo_subnet.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="pipeline YAML (see nemo_subnet/pipeline/config.py)")
    parser.add_argument("--stage", action="append", help="stage to run (repeatable; default: all)")
    parser.add_argument("--print-kind", action="store_true", help="print the stages' kinds; run nothing")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = PipelineConfig.load(args.config, args.overrides)
        if args.print_kind:
            from nemo_subnet.pipeline.stages import build_stages

            stages = build_stages()
            for name in args.stage or list(stages):
                if name not in stages:
                    raise UserError(f"unknown stage {name!r}; stages: {', '.join(stages)}")
                print(stages[name].kind_of(config))
            return 0
        run_pipeline(config, args.stage)
    except StageInterrupted as err:  # not finished; relaunching resumes it (launch/sbatch requeue on this)
        print(f"pipeline: {err}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (UserError, StageError) as err:
        print(f"pipeline: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
