"""SubnetConfig validation and YAML round trip; extract CLI; HF export of extracted sub-networks."""

from pathlib import Path

import pytest
import torch
import yaml

from nemo_subnet.cli import main as cli_main
from nemo_subnet.conversion.adapters import adapter_for_model_type
from nemo_subnet.models.tiny_hf import make_hf_config, save_hf_model
from nemo_subnet.subnet.config import LayerSubnet, SubnetConfig, SubnetConfigError, resolve

CFG = adapter_for_model_type("llama").config_from_hf(make_hf_config("llama"))  # 4 layers, 2 groups x 2 heads, ffn 96


def test_yaml_round_trip(tmp_path):
    for subnet in (SubnetConfig(), SubnetConfig(hidden=48, layers=[0, 3], layer=LayerSubnet(query_groups=1, ffn=[1, 5])),
                   SubnetConfig(layers=2, layer=[LayerSubnet(ffn=10), LayerSubnet(heads_per_group=[1])])):
        subnet.save(tmp_path / "s.yaml")
        assert SubnetConfig.load(tmp_path / "s.yaml") == subnet


def test_resolution_orders_and_expands():
    r = resolve(CFG, SubnetConfig(hidden=[5, 1, 3], layers=[3, 1], layer=LayerSubnet(query_groups=[1], heads_per_group=1)))
    assert r.hidden == (1, 3, 5) and r.layers == (1, 3)
    assert r.layer(3).query_heads(2) == (2,)  # group 1, its first head
    assert r.layer(0) is None
    assert resolve(CFG, SubnetConfig()).is_full(CFG)


@pytest.mark.parametrize("subnet,fragment", [
    (SubnetConfig(hidden=0), "hidden: must keep at least 1"),
    (SubnetConfig(hidden=65), "hidden: 65 channels requested but the model has 64"),
    (SubnetConfig(layers=5), "layers: 5 layers requested but the model has 4"),
    (SubnetConfig(layers=[]), "layers: the index list is empty"),
    (SubnetConfig(layers=[0, 4]), "layers: indices [4] out of range [0, 4)"),
    (SubnetConfig(layers=[1, 1]), "layers: duplicated indices [1]"),
    (SubnetConfig(layer=LayerSubnet(query_groups=3)), "layer.query_groups: 3 query groups requested but the model has 2"),
    (SubnetConfig(layer=LayerSubnet(heads_per_group=3)), "layer.heads_per_group: 3 head per groups requested"),
    (SubnetConfig(layer=LayerSubnet(ffn=97)), "layer.ffn: 97 neurons requested but the model has 96"),
    (SubnetConfig(layer=LayerSubnet(ffn=[-1])), "layer.ffn: indices [-1] out of range"),
    (SubnetConfig(layers=2, layer=[LayerSubnet(), LayerSubnet(ffn=0)]), "layer[1].ffn: must keep at least 1"),
    (SubnetConfig(layers=2, layer=[LayerSubnet()]), "1 per-layer entries given for 2 kept layers"),
    (SubnetConfig(hidden="wide"), "hidden: expected a count or a list of indices"),
])
def test_bad_subnet_names_the_field(subnet, fragment):
    with pytest.raises(SubnetConfigError) as err:
        resolve(CFG, subnet)
    assert fragment in str(err.value)


def test_unknown_yaml_fields(tmp_path):
    (tmp_path / "s.yaml").write_text("hidden: 3\nwidth: 4\n")
    with pytest.raises(SubnetConfigError, match="unknown sub-network fields"):
        SubnetConfig.load(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text("layer: {neurons: 4}\n")
    with pytest.raises(SubnetConfigError, match="layer\\[0\\]: unknown fields"):
        SubnetConfig.load(tmp_path / "s.yaml")


@pytest.fixture
def llama_ckpt(tmp_path, megatron_runtime):
    from nemo_subnet.conversion.hf_import import import_hf

    hf_model = save_hf_model("llama", tmp_path / "hf", seed=4)
    import_hf(tmp_path / "hf", tmp_path / "ckpt")
    return hf_model, tmp_path


@pytest.mark.parametrize("subnet_yaml,layerwise", [
    ({"hidden": 40, "layers": [0, 2, 3], "layer": {"query_groups": [1], "ffn": 64}}, False),
    ({"layers": [1, 3], "layer": [{"query_groups": [1], "ffn": 50}, {"heads_per_group": 1, "ffn": [0, 2, 4]}]}, True),
])
def test_extract_then_export_loads_in_transformers(llama_ckpt, capsys, subnet_yaml, layerwise):
    from transformers import AutoModelForCausalLM

    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.conversion.hf_export import export_hf
    from nemo_subnet.models.inference import forward_logits
    from nemo_subnet.subnet.params import count_parameters

    _, tmp = llama_ckpt
    (tmp / "sub.yaml").write_text(yaml.safe_dump(subnet_yaml))
    assert cli_main(["extract", "--ckpt", str(tmp / "ckpt"), "--subnet", str(tmp / "sub.yaml"), "--out", str(tmp / "sub")]) == 0
    assert ("layer-wise" if layerwise else "uniform") in capsys.readouterr().out
    cfg, model = load_model(tmp / "sub")
    assert cfg.is_layerwise == layerwise
    assert count_parameters(cfg) == sum(p.numel() for p in model.parameters())
    export_hf(tmp / "sub", tmp / "sub_hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp / "sub_hf").eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 9))
    assert (forward_logits(model, cfg, tokens).cpu() - hf(tokens).logits).abs().max().item() <= 1e-4


def test_extract_rejects_tp_that_cannot_shard(llama_ckpt, capsys):
    _, tmp = llama_ckpt
    (tmp / "sub.yaml").write_text("layer: {query_groups: 1}\n")
    assert cli_main(["extract", "--ckpt", str(tmp / "ckpt"), "--subnet", str(tmp / "sub.yaml"), "--out", str(tmp / "o"), "--tp", "2"]) == 2
    assert "cannot run at tp=2 pp=1: num_query_groups=1 is not divisible by tp=2" in capsys.readouterr().err
    assert not (tmp / "o").exists() and not list(tmp.glob(".o*"))


def test_extract_bad_subnet_leaves_nothing(llama_ckpt, capsys):
    _, tmp = llama_ckpt
    (tmp / "sub.yaml").write_text("layer: {ffn: 500}\n")
    assert cli_main(["extract", "--ckpt", str(tmp / "ckpt"), "--subnet", str(tmp / "sub.yaml"), "--out", str(tmp / "o")]) == 2
    assert "layer.ffn: 500 neurons requested but the model has 96" in capsys.readouterr().err
    assert not (tmp / "o").exists()


def test_neox_export_needs_hidden_multiple_of_head_size(tmp_path, megatron_runtime):
    from nemo_subnet.conversion.hf_export import export_hf
    from nemo_subnet.conversion.hf_import import import_hf
    from nemo_subnet.subnet.extract import extract_checkpoint

    save_hf_model("gpt_neox", tmp_path / "hf", with_tokenizer=False)
    import_hf(tmp_path / "hf", tmp_path / "ckpt")
    with pytest.raises(SubnetConfigError, match="hidden_size 40 is not a multiple of the head size 16"):
        extract_checkpoint(tmp_path / "ckpt", SubnetConfig(hidden=40), tmp_path / "sub")  # refused before training
    assert not (tmp_path / "sub").exists()
    extract_checkpoint(tmp_path / "ckpt", SubnetConfig(hidden=48, layer=LayerSubnet(query_groups=[0, 3])), tmp_path / "ok")
    export_hf(tmp_path / "ok", tmp_path / "ok_hf")  # 2 heads padded to 48 / 16 = 3
