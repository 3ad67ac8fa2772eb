"""Read HF checkpoints: config, weights, tokenizer; from a directory (safetensors, read lazily) or a GGUF file.

A GGUF file is read by transformers into an HF model in memory (gguf_io.py); ``open_hf_weights`` hands
either source to the importer as the same kind of reader (``names()``, ``reader(name)``), so both go
through one conversion path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open

from nemo_subnet.conversion.adapters import adapter_for_model_type
from nemo_subnet.conversion.gguf_io import check_gguf, is_gguf, load_gguf_state, load_gguf_tokenizer, read_gguf_config

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


def read_hf_config(hf_dir: str | Path):
    """(transformers config, raw config.json dict); errors name the missing piece."""
    from transformers import AutoConfig

    if is_gguf(hf_dir):
        return read_gguf_config(hf_dir)
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise FileNotFoundError(f"HF model directory {hf_dir} does not exist")
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{hf_dir} has no config.json (not a Hugging Face model directory)")
    raw = json.loads(config_path.read_text())
    adapter_for_model_type(raw.get("model_type", "<missing>"))  # fail on the type before transformers does
    return AutoConfig.from_pretrained(hf_dir, local_files_only=True), raw


class SafetensorsReader:
    """Tensors of a HF directory by in-memory name, read one at a time (memory stays at one tensor)."""

    def __init__(self, hf_dir: str | Path, aliases: Mapping[str, str] = {}):
        hf_dir = Path(hf_dir)
        index = hf_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (hf_dir / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            found = sorted(p.name for p in hf_dir.glob("*.bin"))
            hint = f" (found {found}: re-save with save_pretrained(safe_serialization=True))" if found else ""
            raise FileNotFoundError(f"{hf_dir} has no model.safetensors or model.safetensors.index.json{hint}")
        # safe_open itself rejects truncated files ("file not fully covered") and garbage headers
        self._handles = {}
        self._where: dict[str, str] = {}
        for name in files:
            path = hf_dir / name
            try:
                handle = safe_open(str(path), framework="pt", device="cpu")
                keys = list(handle.keys())
            except (SafetensorError, OSError, ValueError) as err:
                raise ValueError(f"cannot read {path}: corrupt or truncated safetensors ({err})") from None
            self._handles[name] = handle
            for key in keys:
                self._where[aliases.get(key, key)] = (name, key)

    def names(self) -> set[str]:
        return set(self._where)

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise KeyError(f"tensor {name!r} is missing from the safetensors files")
        file, key = self._where[name]
        try:
            return self._handles[file].get_tensor(key)
        except (SafetensorError, RuntimeError, ValueError) as err:
            raise ValueError(f"cannot read tensor {key!r} from {file}: corrupt safetensors ({err})") from None


class StateDictReader:
    """Tensors of an HF state dict held in memory (a GGUF file's, dequantized by transformers), by name."""

    def __init__(self, state: Mapping[str, torch.Tensor], source: str | Path):
        self._state = state
        self._source = source

    def names(self) -> set[str]:
        return set(self._state)

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self._state:
            raise KeyError(f"tensor {name!r} is missing from {self._source}")
        return self._state[name]


def open_hf_weights(path: str | Path, aliases: Mapping[str, str] = {}) -> SafetensorsReader | StateDictReader:
    """The weights of an HF directory (read lazily) or of a GGUF file (dequantized into memory)."""
    if is_gguf(path):
        return StateDictReader(load_gguf_state(path), path)
    return SafetensorsReader(path, aliases)


def save_hf_tokenizer(path: str | Path, out_dir: Path) -> None:
    """Write the source's tokenizer files into ``out_dir`` (an HF directory's are copied; none: nothing)."""
    if is_gguf(path):
        if check_gguf(path).has_tokenizer:
            load_gguf_tokenizer(path).save_pretrained(str(out_dir))
        return
    for file in tokenizer_files(path):
        shutil.copy2(file, out_dir / file.name)


def tokenizer_files(hf_dir: str | Path) -> list[Path]:
    hf_dir = Path(hf_dir)
    return [hf_dir / name for name in TOKENIZER_FILES if (hf_dir / name).is_file()]
