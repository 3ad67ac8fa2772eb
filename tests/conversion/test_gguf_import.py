"""GGUF -> nemo-subnet: the same checkpoint as the dequantized HF model, transformers' logits, the tokenizer carried.

Tiny GGUF files are written here (gguf_files.py) from tiny random models whose embedding has as many rows
as the tokenizer has tokens (as in a GGUF): float types and real block quantizations (Q8_0, Q4_1, made by
gguf's own quantizers), Llama (tied, GQA), SmolLM2's shape (9 heads in 3 groups) and Qwen2.
"""

import json
from pathlib import Path

import gguf
import pytest
import torch
from gguf_files import write_gguf

from nemo_subnet.cli import main as cli_main
from nemo_subnet.models.tiny_hf import TOKENIZER_TOKENS, make_hf_model, make_tokenizer

Q = gguf.GGMLQuantizationType
CASES = {  # name: (variant, overrides, tensor type of the 2-D weights)
    "llama_f32": ("llama", dict(vocab_size=TOKENIZER_TOKENS, tie_word_embeddings=True), Q.F32),
    "llama_f16": ("llama", dict(vocab_size=TOKENIZER_TOKENS, tie_word_embeddings=True), Q.F16),
    "llama_q8_0": ("llama", dict(vocab_size=TOKENIZER_TOKENS, tie_word_embeddings=True), Q.Q8_0),
    "llama_q4_1": ("llama", dict(vocab_size=TOKENIZER_TOKENS, tie_word_embeddings=True), Q.Q4_1),  # SmolLM2's type
    "smollm2_f16": ("smollm2", {}, Q.F16),  # hidden 144: rows of 144 are no whole number of 32-blocks
    "qwen2_q8_0": ("qwen2", dict(vocab_size=TOKENIZER_TOKENS), Q.Q8_0),
}
TEXT = "def main():\n    return 0\nimport os, sys\n"


def _gguf_file(tmp: Path, case: str) -> tuple[Path, torch.nn.Module]:
    variant, overrides, qtype = CASES[case]
    model = make_hf_model(variant, seed=4, **overrides)
    make_tokenizer(tmp / "tokenizer")
    return write_gguf(model, tmp / f"{case}.gguf", qtype, tmp / "tokenizer"), model


def _transformers_load(path: Path):
    """transformers' own reading of the file: dense fp32 weights."""
    from transformers import AutoModelForCausalLM, GgufConfig

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                quantization_config=GgufConfig(dequantize=True)).eval()


def _dequantized_hf_dir(path: Path, out: Path) -> Path:
    """The GGUF model as a plain HF directory: transformers' load, re-built as its plain class and saved."""
    from nemo_subnet.conversion.gguf_io import load_gguf_tokenizer

    loaded = _transformers_load(path)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)  # a GGUF-loaded model may call itself quantized and refuse to save
    plain = type(loaded)(type(loaded.config).from_dict(config))
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out)
    load_gguf_tokenizer(path).save_pretrained(str(out))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_gguf_import_is_the_dequantized_hf_import_and_matches_transformers(case, tmp_path, megatron_runtime):
    from nemo_subnet.checkpointing import load_model, read_model_config
    from nemo_subnet.conversion.hf_export import export_hf
    from nemo_subnet.conversion.hf_import import import_hf
    from nemo_subnet.conversion.sharding import global_state_from_model
    from nemo_subnet.models.inference import forward_logits

    path, source = _gguf_file(tmp_path, case)
    import_hf(path, tmp_path / "from_gguf")
    import_hf(_dequantized_hf_dir(path, tmp_path / "dequantized"), tmp_path / "from_hf")

    # the same checkpoint: config, every tensor bitwise, tokenizer files, HF config template
    gguf_dir, hf_dir = tmp_path / "from_gguf", tmp_path / "from_hf"
    assert read_model_config(gguf_dir) == read_model_config(hf_dir)
    (cfg, ours), (_, theirs) = load_model(gguf_dir), load_model(hf_dir)
    a, b = global_state_from_model(ours), global_state_from_model(theirs)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert {p.name: p.read_bytes() for p in (gguf_dir / "tokenizer").iterdir()} == \
        {p.name: p.read_bytes() for p in (hf_dir / "tokenizer").iterdir()}
    template = {k: v for k, v in json.loads((hf_dir / "hf_config.json").read_text()).items() if k not in ("architectures", "dtype")}
    assert json.loads((gguf_dir / "hf_config.json").read_text()) == template
    assert cfg.dtype == "float32" and cfg.vocab_size == TOKENIZER_TOKENS

    # invariant 1 against transformers' own load of the same file
    reference = _transformers_load(path)
    tokens = torch.randint(0, cfg.vocab_size, (3, 23), generator=torch.Generator().manual_seed(0))
    logits = forward_logits(ours, cfg, tokens).cpu()
    with torch.no_grad():
        expected = reference(tokens).logits
    diff = (logits - expected).abs().max().item()
    print(f"{case}: max abs logit diff vs transformers' load of the GGUF file {diff:.2e}")
    assert diff <= 1e-4
    if CASES[case][2] is Q.F32:  # the writer is exact: what transformers reads back is the source model
        assert all(torch.equal(v, reference.state_dict()[k]) for k, v in source.state_dict().items())
    else:  # quantized: close to the source, not equal
        q = reference.state_dict()["model.layers.0.mlp.up_proj.weight"]
        assert not torch.equal(q, source.state_dict()["model.layers.0.mlp.up_proj.weight"])

    # the two checkpoints export to the same HF directory
    export_hf(gguf_dir, tmp_path / "export_gguf")
    export_hf(hf_dir, tmp_path / "export_hf")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / "export_gguf" / name).read_bytes() == (tmp_path / "export_hf" / name).read_bytes(), name


def test_tokenizer_is_carried_through_export_and_generate(tmp_path, megatron_runtime):
    """The embedded tokenizer reaches the checkpoint and the export; the exported model completes a prompt
    exactly as transformers' load of the GGUF file does (greedy)."""
    from transformers import AutoTokenizer

    from nemo_subnet.conversion.gguf_io import load_gguf_tokenizer
    from nemo_subnet.pipeline.generate import generate

    path, _ = _gguf_file(tmp_path, "llama_q4_1")
    assert cli_main(["import-hf", "--hf", str(path), "--out", str(tmp_path / "ckpt")]) == 0
    assert cli_main(["export-hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    original = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    for tokenizer in (load_gguf_tokenizer(path), AutoTokenizer.from_pretrained(tmp_path / "ckpt" / "tokenizer"),
                      AutoTokenizer.from_pretrained(tmp_path / "hf")):
        assert tokenizer(TEXT)["input_ids"] == original(TEXT)["input_ids"] and len(tokenizer) == TOKENIZER_TOKENS

    completion = generate(tmp_path / "hf", "def main(", max_new_tokens=12)
    tokenizer, reference = load_gguf_tokenizer(path), _transformers_load(path)
    ids = tokenizer("def main(", return_tensors="pt").input_ids
    with torch.no_grad():
        out = reference.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert completion == tokenizer.decode(out[0], skip_special_tokens=True)


def test_data_prepare_takes_the_gguf_tokenizer(tmp_path):
    """`data prepare --tokenizer X.gguf` (what a pipeline with ``hf_model: X.gguf`` runs) tokenizes with the file's
    tokenizer, the one import-hf puts into the checkpoint."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from nemo_subnet.conversion.gguf_io import load_gguf_tokenizer
    from nemo_subnet.data.prepare import read_metadata, split_prefix

    path, _ = _gguf_file(tmp_path, "llama_f16")
    docs = [f"def f{i}():\n    return {i}\n" * (1 + i % 3) for i in range(20)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    assert cli_main(["data", "prepare", "--input", str(tmp_path / "corpus.jsonl"), "--out", str(tmp_path / "data"),
                     "--tokenizer", str(path), "--no-progress"]) == 0
    meta = read_metadata(tmp_path / "data")
    tokenizer = load_gguf_tokenizer(path)
    assert meta["vocab_size"] == TOKENIZER_TOKENS and meta["eod"] == tokenizer.eos_token_id
    expected = {tuple(ids + [meta["eod"]]) for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]}
    rows = set()
    for split in ("train", "valid"):
        dataset = IndexedDataset(str(tmp_path / "data" / split_prefix(split)))
        rows |= {tuple(dataset[i].tolist()) for i in range(len(dataset))}
    assert rows == expected


# --- bad input: one line naming the cause and what is supported; nothing left behind ----------------------

def _expect_error(capsys, tmp_path: Path, path: Path, *fragments: str) -> None:
    out = tmp_path / "ckpt"
    assert cli_main(["import-hf", "--hf", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists() and not list(tmp_path.glob(".ckpt*"))


def test_unsupported_architecture(tmp_path, capsys):
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "gemma2")  # transformers reads it, no adapter converts it
    writer.add_tensor("token_embd.weight", torch.zeros(8, 32).numpy())
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    _expect_error(capsys, tmp_path, tmp_path / "m.gguf", "GGUF architecture 'gemma2' is not supported",
                  "supported: llama, qwen2, qwen3")


def test_quantization_type_gguf_cannot_dequantize(tmp_path, capsys):
    """Q8_K (llama.cpp's intermediate type for K-quant dot products) has no dequantizer in gguf."""
    writer = gguf.GGUFWriter(str(tmp_path / "q8k.gguf"), "llama")
    block_elements, block_bytes = gguf.GGML_QUANT_SIZES[Q.Q8_K]
    writer.add_tensor("blk.0.ffn_up.weight", torch.zeros(96, block_bytes, dtype=torch.uint8).numpy(),
                      raw_dtype=Q.Q8_K)  # 96 rows of one 256-element block
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    _expect_error(capsys, tmp_path, tmp_path / "q8k.gguf", "tensor blk.0.ffn_up.weight is of type Q8_K",
                  "cannot dequantize; supported:", "Q4_1", "Q8_0", "F16")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_unreadable_file(tmp_path, capsys, damage):
    path, _ = _gguf_file(tmp_path, "llama_q8_0")
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b"not a gguf file at all" * 10 if damage == "garbage" else data[: len(data) // 3])
    _expect_error(capsys, tmp_path, path, "does not exist" if damage == "missing" else "not a GGUF file, or truncated")
