"""``python -m nemo_subnet.pipeline --config pipeline.yaml [--stage NAME ...] [key=value ...]``.

Runs the named stages (default: all) of a pipeline YAML in order, reusing finished ones. Used by the
plain sbatch templates and launch/torchrun.sh; NeMo-Run tasks call ``run_pipeline_stage`` directly.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from nemo_subnet.cli import UserError
    from nemo_subnet.pipeline import run_pipeline
    from nemo_subnet.pipeline.config import PipelineConfig
    from nemo_subnet.pipeline.runner import StageError

    parser = argparse.ArgumentParser(prog="python -m nemo_subnet.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="pipeline YAML (see nemo_subnet/pipeline/config.py)")
    parser.add_argument("--stage", action="append", help="stage to run (repeatable; default: all)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        run_pipeline(PipelineConfig.load(args.config, args.overrides), args.stage)
    except (UserError, StageError) as err:
        print(f"pipeline: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
