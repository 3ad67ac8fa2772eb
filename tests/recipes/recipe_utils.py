"""Run the recipe CLIs (`nemo-subnet`, NeMo-Run's `nemo`) from tests as users do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).parents[2]


def cli_env(home: Path, **extra: str) -> dict:
    """This interpreter first on PATH (NeMo-Run launches `python`), a private NeMo-Run home."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "NEMORUN_HOME": str(home),
            "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **extra}


def run_cli(args: list, home: Path, timeout: float = 900, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=cli_env(home, **extra),
                          timeout=timeout, cwd=home)


def nemo_subnet(*args) -> list:
    return [BIN / "nemo-subnet", *args]


def fake_hf_dir(path: Path) -> Path:
    """A directory that passes the HF-path check (config.json): enough for a dry run."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"model_type": "gpt_neox"}')
    return path


def assert_complete(out: Path, stages) -> None:
    missing = [s for s in stages if not (out / ".stages" / f"{s}.done.json").is_file()]
    assert not missing, f"stages without a completion marker in {out}: {missing}"
