"""HF -> Megatron -> HF in one process: logits parity, bitwise round trip, generate(), bad inputs."""

import json
from pathlib import Path

import pytest
import torch
from nemo_subnet.models.tiny_hf import VARIANTS, save_hf_model
from safetensors.torch import load_file

from nemo_subnet.cli import main as cli_main

ALL_VARIANTS = tuple(VARIANTS)


@pytest.fixture
def converted(tmp_path, megatron_runtime, request):
    from nemo_subnet.conversion.hf_import import import_hf

    variant = request.param
    hf_model = save_hf_model(variant, tmp_path / "hf", seed=1)
    import_hf(tmp_path / "hf", tmp_path / "ckpt")
    return variant, hf_model, tmp_path


@pytest.mark.parametrize("converted", ALL_VARIANTS, indirect=True)
def test_imported_logits_match_transformers(converted):
    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.models.inference import forward_logits

    variant, hf_model, tmp = converted
    cfg, model = load_model(tmp / "ckpt")
    tokens = torch.randint(0, cfg.vocab_size, (3, 23), generator=torch.Generator().manual_seed(0))
    ours = forward_logits(model, cfg, tokens).cpu()
    with torch.no_grad():
        ref = hf_model(tokens).logits
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    print(f"{variant}: max abs diff {diff:.3e}")
    assert diff <= 1e-4


@pytest.mark.parametrize("converted", ALL_VARIANTS, indirect=True)
def test_round_trip_is_bitwise_and_generates_identically(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_subnet.conversion.hf_export import export_hf

    variant, hf_model, tmp = converted
    export_hf(tmp / "ckpt", tmp / "exported")
    original, exported = load_file(tmp / "hf" / "model.safetensors"), load_file(tmp / "exported" / "model.safetensors")
    assert sorted(original) == sorted(exported)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name

    reloaded = AutoModelForCausalLM.from_pretrained(tmp / "exported").eval()
    assert type(reloaded) is type(hf_model)
    prompt = torch.randint(0, hf_model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(reloaded.generate(prompt, **kwargs), hf_model.generate(prompt, **kwargs))

    text = "def main():\n    return 0\n"
    assert AutoTokenizer.from_pretrained(tmp / "exported")(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(tmp / "hf")(text)["input_ids"]


def test_bfloat16_checkpoint_keeps_its_dtype(tmp_path, megatron_runtime):
    from nemo_subnet.conversion.hf_export import export_hf
    from nemo_subnet.conversion.hf_import import import_hf

    model = save_hf_model("qwen2", tmp_path / "hf", seed=2, with_tokenizer=False)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    cfg = import_hf(tmp_path / "hf", tmp_path / "ckpt")
    assert cfg.dtype == "bfloat16"
    export_hf(tmp_path / "ckpt", tmp_path / "out")
    original, exported = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert all(torch.equal(exported[k], v) and exported[k].dtype == torch.bfloat16 for k, v in original.items())


# --- bad input: one clear error, exit code 2, nothing left behind -------------------------------------

def _run_cli_expect_error(capsys, args, out: Path, *fragments):
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "temporary output left behind"
    return err


def test_missing_hf_dir(tmp_path, capsys):
    _run_cli_expect_error(capsys, ["import-hf", "--hf", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                          tmp_path / "o", "does not exist")


def test_unsupported_model_type_lists_supported(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    err = _run_cli_expect_error(capsys, ["import-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "o")],
                                tmp_path / "o", "'bert'")
    for supported in ("gpt_neox", "llama", "qwen2", "qwen3"):
        assert supported in err


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(tmp_path, capsys, damage):
    save_hf_model("llama", tmp_path / "hf", with_tokenizer=False)
    path = tmp_path / "hf" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + data[20:])
    _run_cli_expect_error(capsys, ["import-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "o")],
                          tmp_path / "o", "safetensors")


@pytest.mark.parametrize("flag,value,fragment", [
    ("--tp", "3", "num_attention_heads=4 is not divisible by tp=3"),
    ("--pp", "3", "num_layers=4 is not divisible by pp=3"),
])
def test_layout_that_cannot_shard(tmp_path, capsys, flag, value, fragment):
    save_hf_model("llama", tmp_path / "hf", with_tokenizer=False)
    _run_cli_expect_error(capsys, ["import-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "o"), flag, value],
                          tmp_path / "o", fragment)


def test_query_groups_not_divisible_by_tp(tmp_path, capsys):
    save_hf_model("llama3_tied", tmp_path / "hf", with_tokenizer=False)  # one key/value head
    _run_cli_expect_error(capsys, ["import-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "o"), "--tp", "2"],
                          tmp_path / "o", "num_query_groups=1 is not divisible by tp=2")


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    save_hf_model("llama", tmp_path / "hf", with_tokenizer=False)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep").write_text("x")
    assert cli_main(["import-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "o")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "o" / "keep").read_text() == "x"
