"""Read a GGUF file (llama.cpp's one-file format) as a Hugging Face model in memory, through transformers.

transformers reads GGUF itself: ``from_pretrained(dir, gguf_file=name)`` maps the file's metadata to a
config and its tensors to HF names (undoing llama.cpp's q/k row permutation), dequantizing every tensor
to fp32 with the ``gguf`` package; ``AutoTokenizer`` rebuilds the embedded tokenizer. We take that model's
config and state dict through the same family adapters as an HF directory (hf_import.py), so there is one
conversion path and a GGUF import equals the import of the dequantized model saved as safetensors.
``GgufConfig(dequantize=True)`` asks for plain dense weights even where transformers could keep blocks
packed (its kernel path), since our adapters convert tensors, not GGUF blocks.

Before any tensor is read, the header alone (gguf's memory-mapped reader) is checked: the architecture
must be one transformers reads *and* one of our adapters converts, and every tensor's type one that the
installed ``gguf`` dequantizes; each failure is one line naming what is supported.

Memory: the whole model is held dequantized in fp32 (transformers does not read GGUF lazily), once per
rank in a sharded import.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from nemo_subnet.conversion.adapters import ADAPTERS

GGUF_SUFFIX = ".gguf"


def is_gguf(path: str | Path) -> bool:
    """A GGUF file is named ``*.gguf`` (the name llama.cpp and transformers go by)."""
    return Path(path).suffix.lower() == GGUF_SUFFIX


def supported_architectures() -> tuple[str, ...]:
    """GGUF ``general.architecture`` values we import: transformers maps them to a model type we convert."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return tuple(sorted(arch for arch in GGUF_SUPPORTED_ARCHITECTURES if arch in ADAPTERS))


@functools.cache
def _dequantizable(qtype) -> bool:
    """Whether the installed gguf dequantizes ``qtype``, asked of gguf itself on one all-zero block."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, dequantize

    _, block_bytes = GGML_QUANT_SIZES[qtype]
    try:
        dequantize(np.zeros(block_bytes, dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


def dequantizable_types() -> list[str]:
    from gguf import GGMLQuantizationType

    return [qtype.name for qtype in GGMLQuantizationType if _dequantizable(qtype)]


@dataclass(frozen=True)
class GGUFHeader:
    architecture: str
    has_tokenizer: bool


def check_gguf(path: str | Path) -> GGUFHeader:
    """The header of a GGUF file we can import; FileNotFoundError / ValueError (one line) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    stat = path.stat()
    return _check_gguf(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _check_gguf(path: Path, size: int, mtime_ns: int) -> GGUFHeader:
    """check_gguf, parsed once per file version (a 49k-token vocabulary takes seconds to parse)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)  # memory-mapped: parses the header and tensor table, reads no tensor data
        architecture = reader.fields["general.architecture"].contents()
    except KeyError:
        raise ValueError(f"{path}: no general.architecture in the GGUF metadata") from None
    except (ValueError, IndexError, OSError, TypeError) as err:
        raise ValueError(f"cannot read {path}: not a GGUF file, or truncated ({' '.join(str(err).split())[:200]})") from None
    supported = supported_architectures()
    if architecture not in supported:
        raise ValueError(f"{path}: GGUF architecture {architecture!r} is not supported; supported: {', '.join(supported)}")
    for tensor in reader.tensors:
        if not _dequantizable(tensor.tensor_type):
            from importlib.metadata import version

            raise ValueError(f"{path}: tensor {tensor.name} is of type {tensor.tensor_type.name}, which gguf "
                             f"{version('gguf')} cannot dequantize; supported: {', '.join(dequantizable_types())}")
    return GGUFHeader(architecture=architecture, has_tokenizer="tokenizer.ggml.model" in reader.fields)


def read_gguf_config(path: str | Path):
    """(transformers config, its config.json dict) from the GGUF metadata, after ``check_gguf``."""
    from transformers import AutoConfig

    path = Path(path)
    check_gguf(path)
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    raw = config.to_diff_dict()  # what save_pretrained would write as config.json
    raw.pop("quantization_config", None)
    return config, raw


def load_gguf_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The HF state dict of the file's model, every tensor dequantized to fp32 by transformers."""
    from transformers import AutoModelForCausalLM, GgufConfig

    path = Path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, local_files_only=True,
            quantization_config=GgufConfig(dequantize=True))
    except (NotImplementedError, ValueError, RuntimeError) as err:  # a type or layout transformers cannot read
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"transformers could not load {path} as a dense model: {first_line[:300]}") from None
    return model.state_dict()


def load_gguf_tokenizer(path: str | Path):
    """The tokenizer embedded in the file, rebuilt by transformers as a fast tokenizer."""
    from transformers import AutoTokenizer

    path = Path(path)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
