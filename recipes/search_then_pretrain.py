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
the local executor runs it level by level. Each task's resources follow its stage's kind (executors.py).
When stages do not finish, the first failed stage's own one-line error is reported first, its log below.
"""


import dataclasses
import sys
import time
from pathlib import Path

import nemo_run as run

from nemo_subnet.pipeline import run_pipeline_stage
from nemo_subnet.pipeline.config import PipelineConfig
from nemo_subnet.recipes.executors import LaunchConfig, eval_ranks, make_executor, slurm_reachable
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
    from nemo_subnet.errors import UserError

    config.validate()
    if launch.executor == "slurm" and not dryrun:
        reason = slurm_reachable()
        if reason:
            raise UserError(f"SLURM is not reachable: {reason}. Use launch.executor=local, or run on a login node "
                            "(or pass launch.ssh_host=...)")
    if launch.nproc_per_node < 1 or launch.nodes < 1 or launch.gpus_per_node < 0:
        raise UserError("launch.nodes and launch.nproc_per_node must be at least 1, launch.gpus_per_node at least 0")
    if launch.gpus_per_node and launch.nproc_per_node not in (1, launch.gpus_per_node):
        raise UserError(f"launch.nproc_per_node={launch.nproc_per_node} with launch.gpus_per_node="
                        f"{launch.gpus_per_node}: GPU stages run one rank per GPU; leave nproc_per_node at 1")
    if launch.signal_grace_s < 1:
        raise UserError(f"launch.signal_grace_s must be at least 1 second, got {launch.signal_grace_s}")
    check_eval_layout(config, launch)
    world = launch.nodes * (launch.gpus_per_node or launch.nproc_per_node)
    for name in ("student_train",) + (() if config.hf_model else ("teacher_train",)):
        spec = getattr(config, name)
        if world % (spec.tp * spec.pp):
            raise UserError(f"{name}.tp x {name}.pp = {spec.tp} x {spec.pp} does not divide the {world} training "
                            "ranks (launch.nodes x GPUs or nproc_per_node)")


def check_eval_layout(config: PipelineConfig, launch: LaunchConfig) -> None:
    """importance / search: ranks = tp x pp x dp, and dp must split their batches evenly."""
    from nemo_subnet.errors import UserError

    ranks, s = eval_ranks(launch), config.search
    if ranks < 1 or (launch.gpus_per_node and ranks > launch.gpus_per_node):
        raise UserError(f"launch.eval_ranks={ranks}: must be between 1 and launch.gpus_per_node"
                        f"={launch.gpus_per_node} (importance and search run on one node)")
    if s.tp < 1 or s.pp < 1 or ranks % (s.tp * s.pp):
        raise UserError(f"search.tp x search.pp = {s.tp} x {s.pp} must divide the {ranks} ranks of importance and "
                        "search (launch.eval_ranks, default: gpus_per_node)")
    dp = ranks // (s.tp * s.pp)
    for field in ("calibration_batches", "eval_batches"):
        if getattr(s, field) % dp:
            raise UserError(f"search.{field}={getattr(s, field)} cannot be split over {dp} data-parallel ranks "
                            f"({ranks} ranks / tp {s.tp} / pp {s.pp}); use a multiple of {dp}")


def build_experiment(config: PipelineConfig, launch: LaunchConfig, *, name: str = "search-then-pretrain",
                     stages: list[str] | None = None) -> run.Experiment:
    """The experiment (not yet run): the caller enters it (``with exp:``) and calls run / dryrun."""
    from nemo_subnet.pipeline.stages import build_stages

    config = dataclasses.replace(config, out_dir=str(Path(config.out_dir).absolute()))
    all_stages = build_stages()
    chosen = stages or list(all_stages)
    exp = run.Experiment(name, executor=make_executor(launch))
    with exp:
        ids: dict[str, str] = {}
        for stage_name in chosen:
            stage = all_stages[stage_name]
            task = run.Partial(run_pipeline_stage, config=to_config(config), stage=stage_name)
            executor = make_executor(launch, stage.kind_of(config), resumable=stage.resumable)
            ids[stage_name] = exp.add(task, executor=executor, name=stage_name,
                                      dependencies=[ids[d] for d in stage.deps if d in ids])
    return exp


def launch_experiment(config: PipelineConfig, launch: LaunchConfig, *, dryrun: bool = False, detach: bool = False,
                      name: str = "search-then-pretrain", stages: list[str] | None = None) -> run.Experiment:
    """Check, build and run (or dry-run) the experiment. Not detached: raises UserError when a stage did not
    finish, its first line the failed stage's own error, then the path of its full log."""
    from nemo_subnet.errors import UserError
    from nemo_subnet.pipeline.stages import STAGE_NAMES
    from nemo_subnet.recipes.failures import unfinished_report

    check_inputs(config, launch, dryrun=dryrun)
    exp = build_experiment(config, launch, name=name, stages=stages)
    started = time.time()
    with exp:
        if dryrun:
            exp.dryrun()
        else:
            exp.run(detach=detach, tail_logs=False)
    if not dryrun and not detach:
        report = unfinished_report(Path(config.out_dir).absolute(), list(stages or STAGE_NAMES),
                                   {job.id: job.executor.job_dir for job in exp.jobs}, since=started)
        if report:
            raise UserError(f"{report}\n  (experiment {exp._id}; every task's logs under {exp._exp_dir})")
    return exp


@run.cli.entrypoint(namespace=NAMESPACE, name=ENTRYPOINT, type="experiment",
                    help="importance + search a sub-network of a teacher, extract it, distill it, baseline, export, report")
def search_then_pretrain(ctx: run.cli.RunContext, config: PipelineConfig = None, launch: LaunchConfig = None):
    """Run (or with --dryrun print) the stages as one NeMo-Run experiment."""
    from nemo_subnet.errors import UserError

    config = as_dataclass(config) or PRESETS["tiny"]()
    launch = as_dataclass(launch) or LaunchConfig()
    try:
        launch_experiment(config, launch, dryrun=ctx.dryrun, detach=ctx.detach)
    except UserError as err:  # one clear message, not NeMo-Run's traceback around it
        print(f"nemo {NAMESPACE} {ENTRYPOINT}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _register_factories() -> None:
    for preset, make in PRESETS.items():
        def factory(make=make) -> run.Partial[search_then_pretrain]:
            return run.Partial(search_then_pretrain, config=to_config(make()), launch=to_config(LaunchConfig()))

        factory.__name__ = preset
        factory.__doc__ = make.__doc__
        run.cli.factory(factory, target=search_then_pretrain, name=preset)


_register_factories()
