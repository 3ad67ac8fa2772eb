"""``python -m nemo_subnet.pipeline --config pipeline.yaml [--stage NAME ...] [key=value ...]``.

Runs the named stages (default: all) of a pipeline YAML in order, reusing finished ones. Used by the
plain sbatch templates and launch/torchrun.sh; NeMo-Run tasks call ``run_pipeline_stage`` directly.
Exit codes: 0 done, 2 bad config or a stage failed (its one-line error on stderr), 75 a stage was stopped by
SIGTERM (not finished; launching again resumes it).

``--print-launch --nodes N --gpus-per-node G [--nproc-per-node P]`` runs nothing: for each named stage it prints
``KIND NODES RANKS_PER_NODE GPUS_PER_NODE``, how that stage runs on such an allocation (pipeline/kinds.py, the
mapping the NeMo-Run executors use too); the sbatch templates launch each stage by it.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from nemo_subnet.errors import UserError
    from nemo_subnet.exit_codes import PREEMPTED as EXIT_PREEMPTED
    from nemo_subnet.pipeline import run_pipeline
    from nemo_subnet.pipeline.config import PipelineConfig
    from nemo_subnet.pipeline.runner import StageError, StageInterrupted

    parser = argparse.ArgumentParser(prog="python -m nemo_subnet.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="pipeline YAML (see nemo_subnet/pipeline/config.py)")
    parser.add_argument("--stage", action="append", help="stage to run (repeatable; default: all)")
    parser.add_argument("--print-launch", action="store_true", help="print how each stage runs; run nothing")
    parser.add_argument("--nodes", type=int, default=1, help="with --print-launch: nodes of the allocation")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="with --print-launch: GPUs per node (0: CPU)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="with --print-launch: CPU ranks of training")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = PipelineConfig.load(args.config, args.overrides)
        if args.print_launch:
            print_launch(config, args.stage, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                         nproc_per_node=args.nproc_per_node)
            return 0
        run_pipeline(config, args.stage)
    except StageInterrupted as err:  # not finished; relaunching resumes it (launch/sbatch requeue on this)
        print(f"pipeline: {err}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (UserError, StageError) as err:
        print(f"pipeline: error: {err}", file=sys.stderr)
        return 2
    return 0


def print_launch(config, names: list[str] | None, *, nodes: int, gpus_per_node: int, nproc_per_node: int) -> None:
    from nemo_subnet.errors import UserError
    from nemo_subnet.pipeline.kinds import stage_resources
    from nemo_subnet.pipeline.stages import build_stages

    stages = build_stages()
    for name in names or list(stages):
        if name not in stages:
            raise UserError(f"unknown stage {name!r}; stages: {', '.join(stages)}")
        # a stage the config does not need (the teacher cache under online KD) skips in one process, no GPU
        kind = stages[name].kind_of(config) if stages[name].applies_to(config) else "host"
        res = stage_resources(kind, nodes=nodes, gpus_per_node=gpus_per_node, nproc_per_node=nproc_per_node)
        print(kind, res.nodes, res.ranks_per_node, res.gpus_per_node)


if __name__ == "__main__":
    sys.exit(main())
