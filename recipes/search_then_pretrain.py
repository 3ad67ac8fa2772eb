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
Before any task is submitted, every stage's config, the files it names, the launch settings and the layouts
they make together are checked in one pass (``check_inputs``), and all problems are reported at once.
When stages do not finish, the first failed stage's own one-line error is reported first, its log below.
"""


import dataclasses
import sys
import time
from pathlib import Path
from typing import Iterator

import nemo_run as run

from nemo_subnet import config as configs
from nemo_subnet.pipeline import run_pipeline_stage
from nemo_subnet.pipeline.config import PipelineConfig
from nemo_subnet.recipes.executors import LaunchConfig, eval_ranks, make_executor, slurm_reachable
from nemo_subnet.recipes.presets import PRESETS

NAMESPACE = "subnet"
ENTRYPOINT = "search-then-pretrain"


def _values_as_text() -> None:
    """NeMo-Run's CLI parses ``config.a.b=VALUE`` by the field's annotation and, strictly, refuses types it does not
    know: our config dataclasses' annotations are strings (``from __future__ import annotations``), enums and
    ranges. Let it pass such values on as text; ``configs.typed`` then reads them as declared and reports every
    problem at once, as for ``nemo-subnet run``."""
    from nemo_run.cli import cli_parser

    cli_parser.type_parser.strict_mode = False


_values_as_text()


def to_config(value):
    """A dataclass instance as a (nested) ``run.Config`` so NeMo-Run can show, serialize and override it; leaves
    as plain data (fiddle cannot serialize paths or enums; ``configs.typed`` reads them back as declared)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return run.Config(type(value), **{f.name: to_config(getattr(value, f.name))
                                          for f in dataclasses.fields(value) if f.init})
    return configs.to_dict(value)


def as_dataclass(value):
    """Inverse of to_config (identity on dataclass instances)."""
    import fiddle as fdl

    return fdl.build(value) if isinstance(value, fdl.Buildable) else value


def check_inputs(config: PipelineConfig, launch: LaunchConfig, *, dryrun: bool) -> None:
    """Every problem of the run, one line each and all at once, before any task is submitted: each stage's
    section (values, allowed choices, ranges, rules between fields), the files they name, the launch settings,
    the layouts the two make together, and SLURM's reachability."""
    problems: list[str] = []
    for obj, prefix, also in ((config, "", config.missing_files()), (launch, "launch.", ())):
        try:
            configs.check(obj, also=also)
        except configs.ConfigError as err:
            problems += [prefix + p for p in err.problems]
    if not problems:  # the layouts need valid values
        problems += [f"{name}: {message}" for name, message in layout_problems(config, launch)]
    if launch.executor == "slurm" and not dryrun:
        reason = slurm_reachable()
        if reason:
            problems.append(f"launch.executor: SLURM is not reachable: {reason}. Use launch.executor=local, or run "
                            "on a login node (or pass launch.ssh_host=...)")
    if problems:
        raise configs.ConfigError(problems)


def layout_problems(config: PipelineConfig, launch: LaunchConfig) -> Iterator[tuple[str, str]]:
    """Ranks of each stage (launch) against the parallel layout of its section (config)."""
    ranks = eval_ranks(launch)  # importance / search: ranks = tp x pp x dp, dp splitting their batches evenly
    for name, section, batches in (("importance", config.importance, ("batches",)),
                                   ("search", config.search, ("eval.batches",))):
        if ranks % (section.tp * section.pp):
            yield f"{name}.tp", (f"{name}.tp x {name}.pp = {section.tp} x {section.pp} must divide the {ranks} ranks "
                                 "of importance and search (launch.eval_ranks, default: gpus_per_node)")
            continue
        dp = ranks // (section.tp * section.pp)
        for field in batches:
            value = section.eval.batches if field == "eval.batches" else getattr(section, field)
            if value % dp:
                yield f"{name}.{field}", (f"{value} cannot be split over {dp} data-parallel ranks ({ranks} ranks / "
                                          f"tp {section.tp} / pp {section.pp}); use a multiple of {dp}")
    world = launch.nodes * (launch.gpus_per_node or launch.nproc_per_node)
    for name in ("student_train",) + (() if config.hf_model else ("teacher_train",)):
        layout = getattr(config, name).parallel
        if world % (layout.tp * layout.pp):
            yield f"{name}.parallel.tp", (f"tp x pp = {layout.tp} x {layout.pp} does not divide the {world} training "
                                          "ranks (launch.nodes x GPUs or nproc_per_node)")


def build_experiment(config: PipelineConfig, launch: LaunchConfig, *, name: str = "search-then-pretrain",
                     stages: list[str] | None = None) -> run.Experiment:
    """The experiment (not yet run): the caller enters it (``with exp:``) and calls run / dryrun."""
    from nemo_subnet.pipeline.stages import build_stages

    config = dataclasses.replace(config, out_dir=str(Path(config.out_dir).absolute()))
    all_stages = build_stages()
    chosen = [name for name in stages or list(all_stages) if all_stages[name].applies_to(config)]  # no idle tasks
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
    from nemo_subnet.pipeline.stages import build_stages
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
        needed = [name for name, stage in build_stages().items() if stage.applies_to(config)]
        report = unfinished_report(Path(config.out_dir).absolute(), [s for s in stages or needed if s in needed],
                                   {job.id: job.executor.job_dir for job in exp.jobs}, since=started)
        if report:
            raise UserError(f"{report}\n  (experiment {exp._id}; every task's logs under {exp._exp_dir})")
    return exp


@run.cli.entrypoint(namespace=NAMESPACE, name=ENTRYPOINT, type="experiment",
                    help="importance + search a sub-network of a teacher, extract it, distill it, baseline, export, report")
def search_then_pretrain(ctx: run.cli.RunContext, config: PipelineConfig = None, launch: LaunchConfig = None):
    """Run (or with --dryrun print) the stages as one NeMo-Run experiment."""
    from nemo_subnet.errors import UserError

    try:  # fiddle builds them from command-line strings: read them again as their declared types
        config = configs.typed(as_dataclass(config) or PRESETS["tiny"]())
        launch = configs.typed(as_dataclass(launch) or LaunchConfig())
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
