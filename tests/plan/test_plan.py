"""The planner's arithmetic against independent counts: built models' parameters and saved tensors, the
optimizer's state rules, the layout search's fit decisions, and the CLI's errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.plan.hardware import GPUS, gpu
from nemo_subnet.plan.memory import PlanOptions, layer_activation_bytes, plan_memory, stage_parameters
from nemo_subnet.config import parse_count
from nemo_subnet.plan.models import PRESETS, preset_config, uniform_subnet
from nemo_subnet.plan.search import best_layout, candidates, parse_gpus
from nemo_subnet.plan.throughput import step_time
from nemo_subnet.subnet.params import count_parameters

TINY_LLAMA = dict(family="llama", vocab_size=500, hidden_size=64, num_layers=2, num_attention_heads=4,
                  num_query_groups=2, ffn_hidden_size=96, kv_channels=16, max_position_embeddings=256,
                  normalization="RMSNorm", norm_eps=1e-5, activation="silu", gated_mlp=True, add_bias_linear=False,
                  add_qkv_bias=False)
TINY_NEOX = dict(TINY_LLAMA, family="gpt_neox", num_query_groups=4, normalization="LayerNorm", activation="gelu",
                 gated_mlp=False, add_bias_linear=True, add_qkv_bias=True, parallel_residual=True, rotary_percent=0.25)


def opts(**kw) -> PlanOptions:
    return PlanOptions(**{"seq_length": 32, "micro_batch_size": 2, "global_batch_size": 4, **kw})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_stage_parameters_sum_to_the_config_count(name):
    cfg = preset_config(name)
    assert stage_parameters(cfg, 1, 1, 0) == count_parameters(cfg)
    # pipeline stages partition the model (a tied output is a second copy on the last stage at pp > 1)
    pp = 4 if cfg.num_layers % 4 == 0 else 2
    extra = cfg.padded_vocab_size * cfg.hidden_size if cfg.tie_embeddings else 0
    assert sum(stage_parameters(cfg, 1, pp, s) for s in range(pp)) == count_parameters(cfg) + extra


@pytest.mark.parametrize("shape", [TINY_LLAMA, TINY_NEOX, dict(TINY_LLAMA, tie_embeddings=True)])
def test_parameter_bytes_equal_a_built_model(shape, megatron_runtime):
    from nemo_subnet.models import build_gpt_model

    cfg = ModelConfig(**shape)
    model = build_gpt_model(cfg, params_dtype=torch.bfloat16)
    numel = sum(p.numel() for p in model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    plan = plan_memory(cfg, None, opts(precision="bf16"))
    assert stage_parameters(cfg, 1, 1, 0) == numel
    assert plan.parts["student weights"] == nbytes
    assert plan.parts["student grads"] == 4 * numel  # fp32 main_grad buffers


def test_tensor_parallel_shards_sum_to_the_whole():
    cfg = preset_config("llama-3.1-8b")
    for tp in (2, 4, 8):
        sharded = stage_parameters(cfg, tp, 1, 0)
        replicated_per_layer = 2 * cfg.hidden_size  # two RMSNorm weights
        replicated = cfg.num_layers * replicated_per_layer + cfg.hidden_size  # + final norm
        assert tp * (sharded - replicated) + replicated == count_parameters(cfg)


def test_optimizer_state_bytes():
    cfg = ModelConfig(**TINY_LLAMA)
    n = count_parameters(cfg)
    bf16 = plan_memory(cfg, None, opts(precision="bf16", dp=2, global_batch_size=4, distributed_optimizer=True))
    assert bf16.parts["optimizer state"] == 12 * n / 2  # fp32 master + exp_avg + exp_avg_sq, sharded over dp
    replicated = plan_memory(cfg, None, opts(precision="bf16", dp=2, distributed_optimizer=False))
    assert replicated.parts["optimizer state"] == 12 * n
    fp32 = plan_memory(cfg, None, opts(precision="fp32", distributed_optimizer=False))
    assert fp32.parts["optimizer state"] == 8 * n  # no master copy
    foreach = plan_memory(cfg, None, opts(precision="fp32", adam="foreach"))
    assert foreach.phases["optimizer step"] - fp32.phases["optimizer step"] == 4 * n  # torch's sqrt temporary


def _layer_saved_bytes(base: ModelConfig, seq: int, batch: int, execution=None) -> int:
    """Bytes autograd saves for one layer's backward (storages, parameters excluded): a 2-layer model's minus a
    1-layer model's."""
    from nemo_subnet.models import build_gpt_model
    from nemo_subnet.runtime import compute_device

    def saved_bytes(cfg):
        torch.manual_seed(0)
        model = build_gpt_model(cfg, execution=execution)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        storages = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        device = compute_device()
        tokens = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
        positions = torch.arange(seq, device=device).expand(batch, seq)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(tokens, positions, attention_mask=None)
        return sum(storages.values())

    return saved_bytes(dataclasses.replace(base, num_layers=2)) - saved_bytes(dataclasses.replace(base, num_layers=1))


@pytest.mark.parametrize("recompute", ["none", "selective"])
@pytest.mark.parametrize("shape", [TINY_LLAMA, TINY_NEOX])
def test_layer_activations_equal_autograd_saved_tensors(shape, recompute, megatron_runtime):
    """Bytes per token one layer keeps for backward: the planner's count (CPU backend) == what autograd saves."""
    from nemo_subnet.models.execution import ExecutionOptions

    seq, batch = 64, 2
    base = ModelConfig(**shape)
    measured = _layer_saved_bytes(base, seq, batch, ExecutionOptions(recompute=recompute))
    planned = layer_activation_bytes(base, 0, opts(precision="fp32", backend="cpu", seq_length=seq,
                                                   micro_batch_size=batch, recompute=recompute)) * seq * batch
    assert planned == measured


@pytest.mark.parametrize("shape", [TINY_LLAMA, TINY_NEOX])
def test_selective_recompute_saves_most_of_a_layer(shape, megatron_runtime):
    """Selective recompute must be worth its extra forward: with SDPA, recomputing the core attention (megatron's
    core_attn) dropped only the logsumexp (0.1-0.2 % of a layer); recomputing the MLP drops its activations."""
    from nemo_subnet.models.execution import ExecutionOptions

    base = ModelConfig(**shape)
    none = _layer_saved_bytes(base, 64, 2, ExecutionOptions())
    selective = _layer_saved_bytes(base, 64, 2, ExecutionOptions(recompute="selective"))
    ffn_terms = (5 if base.gated_mlp else 2) * base.ffn_hidden_size * 4 * 64 * 2  # fp32 bytes of the MLP's tensors
    assert none - selective == ffn_terms
    assert selective < 0.8 * none, (selective, none)  # Llama-shaped: 0.36 x; plain MLP (GPT-NeoX): 0.76 x


def test_activation_options_reduce_memory_as_documented():
    student, teacher = preset_config("llama-3.1-8b"), preset_config("llama-3.1-70b")
    base = opts(seq_length=4096, micro_batch_size=1, global_batch_size=64, tp=8, dp=8)
    plain = plan_memory(student, teacher, base)
    # flat in the number of micro-batches at pp = 1 (the teacher runs inside each micro-batch)
    assert plan_memory(student, teacher, dataclasses.replace(base, global_batch_size=512)).total == plain.total
    sp = plan_memory(student, teacher, dataclasses.replace(base, sequence_parallel=True))
    full = plan_memory(student, teacher, dataclasses.replace(base, recompute="full"))
    selective = plan_memory(student, teacher, dataclasses.replace(base, recompute="selective"))
    for smaller in (sp, full, selective):
        assert smaller.total < plain.total
    assert full.parts["student activations"] < plain.parts["student activations"] / 4
    assert selective.parts["student activations"] < 0.75 * plain.parts["student activations"]  # the MLPs, / tp here
    # the fused output where distill.fused_output auto takes it: a micro-batch of more than one chunk (here 4 x
    # 4096 tokens at V/tp = 16032); with one chunk it saves nothing (and its fp32 grad_weight costs 2 bytes/row)
    long = dataclasses.replace(base, micro_batch_size=4)
    fused = plan_memory(student, teacher, dataclasses.replace(long, fused_output=True))
    assert fused.total < plan_memory(student, teacher, long).total
    assert fused.parts["KD buffers / logits"] < plan_memory(student, teacher, long).parts["KD buffers / logits"]


def test_pipeline_first_stage_holds_pp_microbatches():
    from nemo_subnet.plan.memory import _stage_plan, stage_activation_bytes

    student = preset_config("pythia-410m")
    for global_batch, in_flight in ((16, 4), (2, 2)):  # 1F1B: min(pp, micro-batches) on the first stage
        o = opts(seq_length=1024, micro_batch_size=1, global_batch_size=global_batch, pp=4)
        first, last = _stage_plan(student, None, o, 0), _stage_plan(student, None, o, 3)
        assert first.parts["student activations"] == in_flight * stage_activation_bytes(student, o, 0)
        assert last.parts["student activations"] == stage_activation_bytes(student, o, 3)
        p2p = 1024 * student.hidden_size * 2
        assert first.parts["pipeline buffers"] == in_flight * p2p and last.parts["pipeline buffers"] == p2p


def test_step_time_uses_the_training_flop_count():
    from nemo_subnet.models.counting import forward_flops_per_token
    from nemo_subnet.training.metrics import PEAK_BF16_FLOPS

    student, teacher = preset_config("pythia-160m"), preset_config("pythia-410m")
    o = opts(seq_length=2048, micro_batch_size=4, global_batch_size=32)
    t = step_time(student, teacher, o, gpu("H100"), mfu=0.5)
    flops = 3 * forward_flops_per_token(student, 2048) + forward_flops_per_token(teacher, 2048)
    assert t.flops_per_token == flops
    assert t.compute_s == pytest.approx(32 * 2048 * flops / (PEAK_BF16_FLOPS["H100"] * 0.5))
    assert GPUS["H200"].peak_bf16_flops == PEAK_BF16_FLOPS["H200"]
    assert t.pp_comm_s == 0.0
    with pytest.raises(ValueError, match="mfu"):
        step_time(student, teacher, o, gpu("H100"), mfu=1.5)


def test_pipeline_p2p_time_counts_both_directions_on_the_critical_path():
    student, teacher = preset_config("pythia-160m"), preset_config("pythia-410m")
    h100 = gpu("H100")
    # pp 4 inside one node: 8 micro-batches, each [2048, 1, 768 + 1024] bf16 forward and its gradient back
    inside = step_time(student, teacher, opts(seq_length=2048, micro_batch_size=1, global_batch_size=16, pp=4, dp=2),
                       h100)
    transfer = 2048 * (768 + 1024) * 2 / h100.nvlink_bytes_per_s
    assert inside.pp_comm_s == pytest.approx(2 * (8 + 3) * transfer)
    assert inside.step_s == pytest.approx(inside.compute_s + inside.tp_comm_s + inside.bubble_s + inside.pp_comm_s
                                          + inside.exposed_comm_s)
    # across nodes the network carries it; sequence parallelism sends 1/tp of the sequence per rank
    across = step_time(student, teacher, opts(seq_length=2048, micro_batch_size=1, global_batch_size=16, pp=4, dp=2,
                                               tp=2, sequence_parallel=True), h100, gpus_per_node=8)
    assert across.pp_comm_s == pytest.approx(2 * (8 + 3) * transfer / 2 * h100.nvlink_bytes_per_s
                                             / h100.network_bytes_per_s)


def test_layout_search_returns_a_fitting_layout_and_rejects_the_rest():
    student, teacher = preset_config("llama-3.1-8b"), preset_config("llama-3.1-70b")
    base = opts(seq_length=4096, micro_batch_size=1, global_batch_size=256, sequence_parallel=True)
    h100 = gpu("H100")
    found = candidates(student, teacher, base, h100, 4, 8)
    fitting = [c for c in found if c.fits]
    rejected = [c for c in found if not c.fits]
    assert fitting and rejected
    for c in found:
        assert c.fits == (plan_memory(student, teacher, c.options).total <= h100.hbm_bytes - 2 * 2**30)
        assert c.options.tp * c.options.pp * c.options.dp == 32 and c.options.tp <= 8
    best = best_layout(student, teacher, base, h100, 4, 8)
    assert best.fits and best.time.tokens_per_s == max(c.time.tokens_per_s for c in fitting)
    # a 70B teacher cannot fit on one GPU at all
    with pytest.raises(ValueError, match="nothing fits"):
        best_layout(student, teacher, base, h100, 1, 1)


def test_parsers_and_budget_student():
    assert parse_gpus("64x8") == (64, 8) and parse_gpus("8") == (1, 8)
    for bad in ("8x", "x8", "0x8", "eight"):
        with pytest.raises(ValueError, match="NODESxGPUS"):
            parse_gpus(bad)
    assert parse_count("160M") == 160_000_000 and parse_count("8B") == 8_000_000_000 and parse_count("1e6") == 10**6
    with pytest.raises(ValueError):
        parse_count("-3")
    teacher = preset_config("pythia-410m")
    student = uniform_subnet(teacher, 160_000_000)
    assert 0.9 * 160e6 < count_parameters(student) <= 160e6 and student.num_layers == teacher.num_layers
    with pytest.raises(ValueError, match="below the smallest"):
        uniform_subnet(teacher, 1000)


def _cli(capsys, *argv):
    from nemo_subnet.cli import main

    code = main(["plan", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prints_json_plan(capsys):
    code, out, _ = _cli(capsys, "--teacher", "pythia-410m", "--student", "pythia-160m", "--seq-length", "2048",
                        "--micro-batch-size", "4", "--global-batch-size", "256", "--dp", "8", "--json", "--tokens", "1B")
    assert code == 0
    report = json.loads(out)
    assert report["layout"]["num_microbatches"] == 8
    assert report["memory_per_gpu"]["total_bytes"] == pytest.approx(sum(report["memory_per_gpu"]["parts_bytes"].values()))
    assert report["time"]["days"] == pytest.approx(1e9 / report["time"]["tokens_per_s"] / 86400)


@pytest.mark.parametrize("argv, message", [
    (["--teacher", "pythia-9b", "--student", "pythia-70m"], "neither a preset"),
    (["--teacher", "pythia-410m", "--student", "pythia-160m", "--tp", "3"], "not divisible by tp=3"),
    (["--teacher", "pythia-410m", "--student", "llama-3.1-8b"], "vocab mismatch"),
    (["--student", "pythia-160m", "--global-batch-size", "6", "--micro-batch-size", "4"], "not a multiple"),
    (["--student", "pythia-160m", "--sequence-parallel"], "sequence_parallel needs tp > 1"),
    (["--student-params", "100M"], "give a teacher"),
    (["--student", "pythia-160m", "--gpu", "V100"], "unknown GPU"),
    (["--student", "pythia-160m", "--cluster", "--gpus", "8by8"], "NODESxGPUS"),
    (["--student", "pythia-160m", "--seq-length", "4K"], "position limit 2048"),
])
def test_cli_errors_name_the_cause(capsys, argv, message):
    defaults = {"--seq-length": "1024", "--global-batch-size": "8"}
    for key, value in defaults.items():
        if key not in argv:
            argv = [*argv, key, value]
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1
