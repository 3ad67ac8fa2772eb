"""search-then-pretrain as one NeMo-Run experiment: one task per stage, dependencies between them.

::

    nemo subnet search-then-pretrain --factory tiny --dryrun           # NeMo-Run's CLI
    nemo subnet search-then-pretrain --factory tiny launch.nproc_per_node=2 -y
    nemo subnet search-then-pretrain --factory pythia_410m config.hf_model=/ckpt/pythia-410m \\
        config.data.inputs=[/data/pile.jsonl] launch.executor=slurm launch.partition=batch -y
    nemo-subnet run --factory tiny --dryrun                             # the same without NeMo-Run's CLI

Each task runs ``nemo_subnet.pipeline.run_pipeline_stage(config, stage)``, which skips a stage whose output
is already complete, so re-launching an experiment continues where the last one stopped. The task graph is
the stage graph of ``nemo_subnet.pipeline.stages``; SLURM receives it as ``--dependency=afterok`` chains,
the local executor runs it level by level.
"""


import dataclasses
from pathlib import Path

import nemo_run as run

from nemo_subnet.pipeline import run_pipeline_stage
from nemo_subnet.pipeline.config import PipelineConfig
from nemo_subnet.recipes.executors import LaunchConfig, make_executor, slurm_reachable
from nemo_subnet.recipes.presets import PRESETS

NAMESPACE = "subnet"
ENTRYPOINT = "search-then-pretrain"


def to_config(value):
    """A dataclass instance as a (nested) ``run.Config`` so NeMo-Run can show, serialize and override it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return run.Config(type(value), **{f.name: to_config(getattr(value, f.name)) for f in dataclasses.fields(value)})
    return value


def as_dataclass(value):
    """Inverse of to_config (identity on dataclass instances)."""
    import fiddle as fdl

    return fdl.build(value) if isinstance(value, fdl.Buildable) else value


def check_inputs(config: PipelineConfig, launch: LaunchConfig, *, dryrun: bool) -> None:
    """Bad input fails here with one clear line, before any task is submitted."""
    from nemo_subnet.cli import UserError

    config.validate()
    if launch.executor == "slurm" and not dryrun:
        reason = slurm_reachable()
        if reason:
            raise UserError(f"SLURM is not reachable: {reason}. Use launch.executor=local, or run on a login node "
                            "(or pass launch.ssh_host=...)")
    if launch.nproc_per_node < 1 or launch.nodes < 1:
        raise UserError("launch.nodes and launch.nproc_per_node must be at least 1")


def build_experiment(config: PipelineConfig, launch: LaunchConfig, *, name: str = "search-then-pretrain",
                     stages: list[str] | None = None) -> run.Experiment:
    """The experiment (not yet run): the caller enters it (``with exp:``) and calls run / dryrun."""
    from nemo_subnet.pipeline.stages import build_stages

    config = dataclasses.replace(config, out_dir=str(Path(config.out_dir).absolute()))
    all_stages = build_stages()
    chosen = stages or list(all_stages)
    exp = run.Experiment(name, executor=make_executor(launch, distributed=False))
    with exp:
        ids: dict[str, str] = {}
        for stage_name in chosen:
            stage = all_stages[stage_name]
            task = run.Partial(run_pipeline_stage, config=to_config(config), stage=stage_name)
            ids[stage_name] = exp.add(task, executor=make_executor(launch, distributed=stage.distributed),
                                      name=stage_name, dependencies=[ids[d] for d in stage.deps if d in ids])
    return exp


def launch_experiment(config: PipelineConfig, launch: LaunchConfig, *, dryrun: bool = False, detach: bool = False,
                      name: str = "search-then-pretrain", stages: list[str] | None = None) -> run.Experiment:
    check_inputs(config, launch, dryrun=dryrun)
    exp = build_experiment(config, launch, name=name, stages=stages)
    with exp:
        if dryrun:
            exp.dryrun()
        else:
            exp.run(detach=detach, tail_logs=False)
    return exp


@run.cli.entrypoint(namespace=NAMESPACE, name=ENTRYPOINT, type="experiment",
                    help="importance + search a sub-network of a teacher, extract it, distill it, baseline, export, report")
def search_then_pretrain(ctx: run.cli.RunContext, config: PipelineConfig = None, launch: LaunchConfig = None):
    """Run (or with --dryrun print) the stages as one NeMo-Run experiment."""
    config = as_dataclass(config) or PRESETS["tiny"]()
    launch = as_dataclass(launch) or LaunchConfig()
    launch_experiment(config, launch, dryrun=ctx.dryrun, detach=ctx.detach)


def _register_factories() -> None:
    for preset, make in PRESETS.items():
        def factory(make=make) -> run.Partial[search_then_pretrain]:
            return run.Partial(search_then_pretrain, config=to_config(make()), launch=to_config(LaunchConfig()))

        factory.__name__ = preset
        factory.__doc__ = make.__doc__
        run.cli.factory(factory, target=search_then_pretrain, name=preset)


_register_factories()
