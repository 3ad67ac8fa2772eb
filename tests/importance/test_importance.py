"""Importance scores: layout independence (TP/PP/DP), meaning of the statistics, file round trip, selection."""

import pytest
import torch
from torchrun_utils import run_torchrun

from nemo_subnet.importance import Aggregation, ImportanceScores, LayerMetric, importance_ordered
from nemo_subnet.subnet.config import LayerSubnet, SubnetConfig, resolve
from nemo_subnet.subnet.params import subnet_parameters

import importance_worker as worker  # noqa: E402


@pytest.fixture(scope="module")
def tp1_scores(megatron_runtime):
    return worker.scores_at("llama", 1, 1)


def _assert_same(a: ImportanceScores, b: ImportanceScores):
    assert a.model == b.model and a.tokens == b.tokens
    assert sorted(a.tensors) == sorted(b.tensors)
    for name in a.tensors:
        torch.testing.assert_close(a.tensors[name], b.tensors[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.distributed
def test_importance_same_at_tp2_pp2_dp2(tp1_scores, tmp_path):
    run_torchrun(str(worker.__file__), 2, "--variant", "llama", "--out", str(tmp_path), timeout=300)
    for layout in worker.LAYOUTS:
        _assert_same(ImportanceScores.load(tmp_path / f"{layout}.safetensors"), tp1_scores)


def test_scores_shapes_and_aggregations(tp1_scores):
    s = tp1_scores
    L, h = s.model["num_layers"], s.model["hidden_size"]
    assert s.tokens == worker.SEQ * worker.MBS * worker.BATCHES
    assert s.ffn().shape == (L, s.model["ffn_hidden_size"])
    assert s.heads().shape == (L, s.model["num_attention_heads"])
    assert s.groups().shape == (L, s.model["num_query_groups"])
    assert s.hidden().shape == (h,)
    for agg in Aggregation:
        assert torch.isfinite(s.ffn(agg)).all() and (s.ffn(agg) >= 0).all()
    # group score = sum of its heads; mean <= rms <= max
    torch.testing.assert_close(s.groups().sum(), s.heads().sum())
    assert (s.ffn(Aggregation.MEAN) <= s.ffn(Aggregation.RMS) + 1e-12).all()
    assert (s.ffn(Aggregation.RMS) <= s.ffn(Aggregation.MAX) + 1e-12).all()
    assert s.has_layer_drop and s.layers(LayerMetric.PERPLEXITY).shape == (L,)
    assert ((s.layers(LayerMetric.COSINE) >= 0) & (s.layers(LayerMetric.COSINE) <= 2)).all()


def test_dead_units_rank_last(megatron_runtime):
    """A neuron whose fc1 rows are zero and a head whose value rows are zero get score 0 and are dropped first."""
    from nemo_subnet.importance.collect import compute_importance
    from nemo_subnet.importance.evaluation import random_batches

    cfg, supernet = _tiny_supernet()
    layer = supernet.decoder.layers[1]
    with torch.no_grad():
        w = layer.mlp.linear_fc1.weight  # [2*ffn, h] gate|up
        ffn = cfg.ffn_hidden_size
        w[5].zero_(), w[ffn + 5].zero_()
    data = random_batches(cfg.vocab_size, num_batches=1, seq_length=8, micro_batch_size=2)
    scores = compute_importance(supernet, cfg, data)
    assert scores.ffn()[1, 5] == 0 and (scores.ffn()[1, torch.arange(ffn) != 5] > 0).all()
    kept = importance_ordered(cfg, SubnetConfig(layer=LayerSubnet(ffn=ffn - 1)), scores)
    assert 5 not in kept.layer[1].ffn and 5 in kept.layer[0].ffn


def _tiny_supernet():
    from nemo_subnet.conversion.adapters import adapter_for_model_type
    from nemo_subnet.conversion.sharding import load_global_state
    from nemo_subnet.models.tiny_hf import make_hf_model
    from nemo_subnet.subnet.supernet import build_supernet

    hf = make_hf_model("llama", seed=3)
    adapter = adapter_for_model_type(hf.config.model_type)
    cfg = adapter.config_from_hf(hf.config)
    supernet = build_supernet(cfg, perform_initialization=False)
    load_global_state(supernet, cfg, adapter.hf_to_megatron(cfg, hf.state_dict().__getitem__))
    return cfg, supernet


def test_save_load_and_selection(tp1_scores, tmp_path):
    from nemo_subnet.models.tiny_hf import make_hf_config
    from nemo_subnet.conversion.adapters import adapter_for_model_type

    hf_cfg = make_hf_config("llama")
    cfg = adapter_for_model_type(hf_cfg.model_type).config_from_hf(hf_cfg)
    path = tp1_scores.save(tmp_path / "s.safetensors")
    loaded = ImportanceScores.load(path)
    _assert_same(loaded, tp1_scores)
    assert loaded.meta == tp1_scores.meta and loaded.aggregation == tp1_scores.aggregation

    sizes = SubnetConfig(hidden=40, layers=3, layer=[LayerSubnet(1, 1, 50), LayerSubnet(2, 2, 20), LayerSubnet(1, 2, 96)])
    picked = importance_ordered(cfg, sizes, loaded, layer_metric=LayerMetric.PERPLEXITY)
    res = resolve(cfg, picked)
    assert len(res.hidden) == 40 and [len(li.ffn) for li in res.per_layer] == [50, 20, 96]
    assert subnet_parameters(cfg, picked) == subnet_parameters(cfg, sizes)
    dropped = set(range(cfg.num_layers)) - set(res.layers)
    assert dropped == {int(loaded.layers(LayerMetric.PERPLEXITY).argmin())}
    top = set(torch.topk(loaded.hidden(), 40).indices.tolist())
    assert set(res.hidden) == top

    with pytest.raises(ValueError, match="another model"):
        importance_ordered(cfg.__class__(**{**cfg.to_dict(), "hidden_size": 32}), sizes, loaded)
    with pytest.raises(FileNotFoundError, match="nemo-subnet importance"):
        ImportanceScores.load(tmp_path / "missing.safetensors")
