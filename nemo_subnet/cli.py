"""`nemo-subnet` command line: one sub-command per stage, each registered by its own module.

A command module exposes ``register(subparsers)`` which adds its parser and sets ``func`` to a callable taking
the parsed namespace and returning an exit code. Every module below is part of the package: one that fails to
import is a broken install, reported as an error naming the module, never a sub-command silently missing from
``--help``. ``nemo_subnet.recipes.cli`` (``run``) is named here by string only: this list is where the
application is assembled, and no library module imports the recipes.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from nemo_subnet.errors import UserError

__all__ = ["COMMAND_MODULES", "UserError", "build_parser", "main"]

# sub-command module paths, in the order they appear in --help
COMMAND_MODULES = (
    "nemo_subnet.conversion.cli",
    "nemo_subnet.data.cli",
    "nemo_subnet.training.cli",
    "nemo_subnet.teacher_cache.cli",
    "nemo_subnet.subnet.cli",
    "nemo_subnet.importance.cli",
    "nemo_subnet.search.cli",
    "nemo_subnet.recipes.cli",
    "nemo_subnet.plan.cli",
    "nemo_subnet.study.cli",
)


class BrokenInstall(RuntimeError):
    """A command module of this package failed to import (a missing dependency or a partial install)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemo-subnet", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_path in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_path)
        except ImportError as err:
            raise BrokenInstall(f"nemo-subnet: command module {module_path} failed to import ({err}); the "
                                "installation is incomplete: reinstall the package") from err
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except BrokenInstall as err:
        print(err, file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"nemo-subnet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
