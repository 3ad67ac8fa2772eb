"""`nemo-subnet` command line: one sub-command per stage, each registered by its own module.

A stage module exposes ``register(subparsers)`` which adds its parser and sets ``func`` to a callable
taking the parsed namespace and returning an exit code. Modules are imported lazily so that
``nemo-subnet --help`` stays fast and a broken optional stage cannot take the others down.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command module paths, in the order they appear in --help
STAGE_MODULES = (
    "nemo_subnet.conversion.cli",
    "nemo_subnet.data.cli",
    "nemo_subnet.training.cli",
    "nemo_subnet.teacher_cache.cli",
    "nemo_subnet.subnet.cli",
    "nemo_subnet.importance.cli",
    "nemo_subnet.search.cli",
    "nemo_subnet.recipe_cli",
    "nemo_subnet.plan.cli",
    "nemo_subnet.study.cli",
)


class UserError(Exception):
    """A bad input the user can fix; printed as one line without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemo-subnet", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_path in STAGE_MODULES:
        try:
            module = importlib.import_module(module_path)
        except ModuleNotFoundError as err:
            if err.name and module_path.startswith(err.name):
                continue  # stage not present in this build
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Run as a script (``python nemo_subnet/cli.py``, torchrun), this file is ``__main__`` and its
    # UserError is a different class from the ``nemo_subnet.cli.UserError`` that stages raise.
    from nemo_subnet.cli import UserError as StageUserError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StageUserError as err:
        print(f"nemo-subnet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
