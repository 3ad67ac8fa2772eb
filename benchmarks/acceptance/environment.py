"""Section `environment` (runs in the parent process, before anything heavy): GPU, driver, CUDA, package
versions, commit. Package versions come from installed metadata, so nothing here imports megatron."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "triton", "transformers", "megatron-core", "liger-kernel", "datasets", "safetensors",
            "sentencepiece", "tokenizers", "numpy", "nemo-subnet")
REQUIRED = ("torch", "triton", "transformers", "megatron-core", "datasets", "nemo-subnet")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit() -> dict:
    """The commit from NEMO_SUBNET_COMMIT (set it where the tree has no .git, e.g. a copied working tree),
    else git; plus a fingerprint of the sources, which identifies the code even without git."""
    sha = os.environ.get("NEMO_SUBNET_COMMIT") or _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    digest = hashlib.sha256()
    for folder in ("nemo_subnet", "kernels", "recipes", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return {"commit": sha or "unknown (no git metadata; set NEMO_SUBNET_COMMIT)",
            "source": "NEMO_SUBNET_COMMIT" if os.environ.get("NEMO_SUBNET_COMMIT") else "git",
            "uncommitted_changes": None if dirty is None else bool(dirty),
            "source_sha256": digest.hexdigest()[:16]}


def _nvidia_smi() -> list[str] | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else None


def run(ctx, rec) -> None:
    import torch

    versions = {name: _version(name) for name in PACKAGES}
    rec.number("packages", versions)
    rec.number("python", f"{platform.python_version()} ({sys.executable})")
    rec.number("torch_cuda", torch.version.cuda)
    rec.number("cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    rec.number("git", commit())
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"name": props.name, "capability": f"sm_{props.major}{props.minor}",
                         "memory_gib": round(props.total_memory / 2**30, 1)})
    rec.number("gpus", gpus)
    rec.number("nvidia_smi", _nvidia_smi())
    missing = [name for name in REQUIRED if versions[name] is None]
    rec.check("required packages installed", not missing,
              f"missing: {missing} (bash benchmarks/gpu_acceptance.sh installs them from .whl/)" if missing else
              ", ".join(f"{n} {versions[n]}" for n in REQUIRED))
    if ctx.smoke:
        rec.check("smoke run on CPU", not gpus, "--smoke-cpu: tiny shapes on CPU, GPU hidden from the sections")
        return
    rec.check("CUDA device visible", bool(gpus), gpus[0]["name"] if gpus else "none")
    names = " ".join(g["name"] for g in gpus)
    rec.check("H100 / H200 (the sizes and targets assume one)", "H100" in names or "H200" in names, names,
              required=False)
