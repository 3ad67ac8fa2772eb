"""`nemo-subnet run`: launch a recipe (NeMo-Run experiment) without NeMo-Run's own CLI.

``nemo-subnet run search-then-pretrain --factory tiny [--dryrun] [key=value ...]`` is the same as
``nemo subnet search-then-pretrain --factory tiny [--dryrun] -y [key=value ...]``. Overrides address the
pipeline config as ``config.<field>`` (or just ``<field>``) and the launch settings as ``launch.<field>``,
values parsed as YAML: ``config.student_train.schedule.train_steps=20 launch.executor=slurm launch.nodes=2``.
Every problem of both, and of the layout they make together, is reported at once before anything is submitted.
"""

from __future__ import annotations

import argparse

RECIPES = ("search-then-pretrain",)


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="run a recipe (all stages as one NeMo-Run experiment)",
                              description=__doc__.splitlines()[0])
    p.add_argument("recipe", nargs="?", default="search-then-pretrain", help=f"one of {list(RECIPES)}")
    p.add_argument("--factory", "-f", default="tiny", help="preset: tiny, pythia_410m, llama_1b, smollm2_135m (default: tiny)")
    p.add_argument("--dryrun", action="store_true", help="print every task's command / sbatch script; run nothing")
    p.add_argument("--detach", action="store_true", help="return after submitting (SLURM)")
    p.add_argument("--stage", action="append", help="run only these stages (repeatable; finished ones are reused)")
    p.add_argument("--name", default=None, help="experiment name (default: the recipe's)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_run)


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(pipeline overrides without the ``config.`` prefix, launch overrides without ``launch.``)."""
    from nemo_subnet.errors import UserError

    config, launch = [], []
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value")
        if item.startswith("launch."):
            launch.append(item[len("launch."):])
        else:
            config.append(item[len("config."):] if item.startswith("config.") else item)
    return config, launch


def resolve(factory: str, overrides: list[str]):
    """(PipelineConfig, LaunchConfig) of a preset with overrides applied; one ConfigError with the problems of
    both (the launch's named ``launch.<field>``) on bad names, keys or values."""
    from nemo_subnet import config as configs
    from nemo_subnet.errors import UserError
    from nemo_subnet.pipeline.config import PipelineConfig, missing_files
    from nemo_subnet.recipes.executors import LaunchConfig
    from nemo_subnet.recipes.presets import PRESETS

    if factory not in PRESETS:
        raise UserError(f"unknown factory {factory!r}; available: {', '.join(PRESETS)}")
    config_overrides, launch_overrides = split_overrides(overrides)
    problems, parsed = [], []
    for cls, base, items, prefix in ((PipelineConfig, PRESETS[factory](), config_overrides, ""),
                                     (LaunchConfig, LaunchConfig(), launch_overrides, "launch.")):
        data = configs.apply_overrides(configs.to_dict(base), items)
        try:
            parsed.append(configs.from_dict(cls, data))
        except configs.ConfigError as err:
            problems += [prefix + p for p in err.problems]
            if cls is PipelineConfig:  # its missing files in the same report (check_inputs does it for a valid one)
                problems += [f"{name}: {message}" for name, message in missing_files(data)]
    if problems:
        raise configs.ConfigError(problems)
    return tuple(parsed)


def _run(args: argparse.Namespace) -> int:
    from nemo_subnet.errors import UserError

    if "=" in args.recipe:  # no recipe named: the first positional is an override
        args.overrides.insert(0, args.recipe)
        args.recipe = RECIPES[0]
    if args.recipe not in RECIPES:
        raise UserError(f"unknown recipe {args.recipe!r}; available: {', '.join(RECIPES)}")
    config, launch = resolve(args.factory, args.overrides)
    from nemo_subnet.pipeline.stages import STAGE_NAMES
    from nemo_subnet.recipes.search_then_pretrain import launch_experiment

    for stage in args.stage or []:
        if stage not in STAGE_NAMES:
            raise UserError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_NAMES)}")
    launch_experiment(config, launch, dryrun=args.dryrun, detach=args.detach, name=args.name or args.recipe,
                      stages=args.stage)  # a stage that did not finish: UserError, its own error first
    if args.dryrun:
        return 0
    from pathlib import Path

    out = Path(config.out_dir).absolute()
    print(f"{args.recipe}: {'submitted' if args.detach else 'done'}; outputs in {out}"
          + ("" if args.detach else f", report {out / 'report' / 'report.md'}"))
    return 0
