"""The package installs whole: a wheel built from this tree holds every module (kernels/ and recipes/ under their
installed names), and its console script, installed from that wheel alone, lists every sub-command. A command
module that fails to import is an error, never a sub-command silently missing from --help."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
INSTALLED_AS = {"nemo_subnet": "nemo_subnet", "kernels": "nemo_subnet/kernels", "recipes": "nemo_subnet/recipes"}


def _source_modules() -> set[str]:
    """Every .py of the three source folders, at the path it must have in the wheel."""
    found = set()
    for folder, installed in INSTALLED_AS.items():
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                found.add(f"{installed}/{path.relative_to(REPO / folder).as_posix()}")
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")  # setuptools' build/ outside the work tree
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, capture_output=True, timeout=600, cwd=build,
                   env={**os.environ, "PIP_NO_INDEX": "1"})
    return next(out.glob("nemo_subnet-*.whl"))


def test_wheel_holds_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _source_modules() - names
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert {"nemo_subnet/plan/__init__.py", "nemo_subnet/study/__init__.py", "nemo_subnet/config/__init__.py",
            "nemo_subnet/recipes/cli.py"} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "nemo-subnet = nemo_subnet.cli:main" in text and "subnet = nemo_subnet.recipes.search_then_pretrain" in text


def test_installed_console_script_lists_every_sub_command(wheel, tmp_path):
    from nemo_subnet.cli import build_parser

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of this tree's editable install
    where = subprocess.run([sys.executable, "-c", "import nemo_subnet.cli as c; print(c.__file__)"], env=env,
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    proc = subprocess.run([sys.executable, str(site / "bin" / "nemo-subnet"), "--help"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    commands = build_parser()._subparsers._group_actions[0].choices
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("    ") and line.split()}
    assert set(commands) <= listed, f"missing from --help: {sorted(set(commands) - listed)}"
    assert {"plan", "study", "run", "search", "train"} <= set(commands)
    assert "Transformer Engine" not in proc.stderr and "Apex is not installed" not in proc.stderr


def test_a_command_module_that_fails_to_import_is_an_error(monkeypatch, capsys):
    import nemo_subnet.cli as cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "nemo_subnet.no_such_command"))
    assert cli.main(["--help"]) == 1
    err = capsys.readouterr().err
    assert "command module nemo_subnet.no_such_command failed to import" in err and "reinstall" in err


def test_no_library_module_imports_the_recipes():
    """recipes/ composes the library; only the command list names its CLI module (by string, loaded on demand)."""
    import ast

    offenders = []
    for path in (REPO / "nemo_subnet").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.startswith("nemo_subnet.recipes")]
    assert not offenders, offenders
