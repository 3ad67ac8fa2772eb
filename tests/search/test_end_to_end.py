"""importance + search on a real (tiny) checkpoint through the CLI: run directory, resume, DP=2, bad input."""

import json

import pytest
import torch
from torchrun_utils import run_torchrun

from nemo_subnet.cli import main
from nemo_subnet.importance import ImportanceScores
from nemo_subnet.search.results import CANDIDATES
from nemo_subnet.subnet.config import SubnetConfig
from nemo_subnet.subnet.params import count_parameters, subnet_parameters

CLI_EVAL = ["--val-batches", "2", "--seq-length", "32", "--micro-batch-size", "2"]


def _space(tmp_path, text="granularity: fine_layerwise\nordering: importance\nround_to: 8\n", name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def scores(ckpt, data_dir, tmp_path_factory, megatron_runtime):
    out = tmp_path_factory.mktemp("scores") / "scores.safetensors"
    assert main(["importance", "--ckpt", str(ckpt), "--data", str(data_dir), "--out", str(out), "--batches", "2",
                 "--seq-length", "32", "--micro-batch-size", "2"]) == 0
    return out


def test_importance_cli_writes_scores(scores, ckpt):
    """Default: the layer metric the default search reads (cosine), so one forward pass and no layer drops."""
    from nemo_subnet.checkpointing import read_model_config
    from nemo_subnet.search.objective import forward_flops

    loaded = ImportanceScores.load(scores)
    assert loaded.tokens == 2 * 2 * 32 and not loaded.has_layer_drop
    assert loaded.model["num_layers"] == 4 and torch.isfinite(loaded.layers("cosine")).all()
    teacher = forward_flops(read_model_config(ckpt), SubnetConfig(), 32)
    assert loaded.meta["passes"] == 1 and loaded.meta["tokens"] == 128
    assert loaded.meta["flops"] == pytest.approx(128 * teacher)


def test_importance_layer_drop_runs_for_perplexity_metric(ckpt, data_dir, tmp_path, capsys, megatron_runtime):
    """--layer-metric perplexity: 1 calibration + 1 base + L layer-drop passes, shown and charged pass by pass."""
    from nemo_subnet.checkpointing import read_model_config
    from nemo_subnet.search.objective import forward_flops

    out = tmp_path / "scores.safetensors"
    capsys.readouterr()
    assert main(["importance", "--ckpt", str(ckpt), "--data", str(data_dir), "--out", str(out), "--batches", "2",
                 "--seq-length", "32", "--micro-batch-size", "2", "--layer-metric", "perplexity"]) == 0
    captured = capsys.readouterr()
    assert "importance pass 6/6" in captured.err and "tok/s" in captured.err  # tqdm's bar
    assert "6 forward pass(es) (5 layer-drop), 768 tokens" in captured.out
    loaded = ImportanceScores.load(out)
    assert loaded.has_layer_drop and torch.isfinite(loaded.layers("perplexity")).all()
    cfg = read_model_config(ckpt)
    full = forward_flops(cfg, SubnetConfig(), 32)
    drops = sum(forward_flops(cfg, SubnetConfig(layers=[j for j in range(4) if j != i]), 32) for i in range(4))
    assert loaded.meta["passes"] == 6 and loaded.meta["flops"] == pytest.approx(128 * (2 * full + drops))


def test_search_cli_run_dir_and_resume(ckpt, data_dir, scores, tmp_path, capsys):
    from nemo_subnet.checkpointing import read_model_config

    out = tmp_path / "run"
    args = ["search", "--ckpt", str(ckpt), "--data", str(data_dir), "--space", str(_space(tmp_path)), "--budget", "0.6",
            "--tolerance", "0.1", "--scores", str(scores), "--out", str(out), "--population", "3", "--no-progress",
            "--rungs", "1", *CLI_EVAL]  # multi-fidelity off: one evaluation per candidate, as before it existed
    assert main([*args, "--evaluations", "5"]) == 0
    for name in ("search.json", CANDIDATES, "candidates.csv", "best.yaml", "pareto.csv", "progress.png", "pareto.png",
                 "summary.json"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / CANDIDATES).read_text().splitlines()]
    assert len(records) == 5
    cfg = read_model_config(ckpt)
    total = count_parameters(cfg)
    for r in records:
        assert 0.54 * total <= r["params"] <= 0.66 * total + 1 and r["objective"] > 1 and r["flops_per_token"] > 0
    best = SubnetConfig.load(out / "best.yaml")
    assert subnet_parameters(cfg, best) == min(records, key=lambda r: r["objective"])["params"]
    assert isinstance(best.hidden, list)  # importance-ordered: index lists
    capsys.readouterr()
    assert main([*args, "--evaluations", "7"]) == 0  # continues: only 2 new evaluations
    assert "7 candidates, 7 evaluations (2 run now)" in capsys.readouterr().out
    again = [json.loads(line) for line in (out / CANDIDATES).read_text().splitlines()]
    assert again[:5] == records and len(again) == 7


def test_family_of_budgets_cli(ckpt, data_dir, tmp_path, capsys, megatron_runtime):
    """--budgets: one search, one line and one best_<budget>.yaml per budget, every candidate in its band."""
    from nemo_subnet.checkpointing import read_model_config

    out = tmp_path / "family"
    capsys.readouterr()
    assert main(["search", "--ckpt", str(ckpt), "--data", str(data_dir), "--space",
                 str(_space(tmp_path, "granularity: fine_uniform\nordering: first_k\n")), "--budgets", "0.3", "0.6",
                 "--budgets.tolerance", "0.1", "--evaluations", "8", "--population", "2", "--out", str(out), "--no-progress",
                 "--no-plots", *CLI_EVAL]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("8 candidates, ") and len(lines) == 3
    total = count_parameters(read_model_config(ckpt))
    summary = json.loads((out / "summary.json").read_text())
    for line, target, entry in zip(lines[1:], (0.3, 0.6), summary["budgets"]):
        assert line.startswith(f"budget {target:g}: best of 4 candidates: perplexity ") and f"best_{target:g}.yaml" in line
        best = SubnetConfig.load(out / f"best_{target:g}.yaml")
        assert 0.9 * target * total - 1 <= subnet_parameters(read_model_config(ckpt), best) <= 1.1 * target * total + 1
        assert entry["best"]["rung"] == len(summary["rungs"]) - 1  # chosen at full fidelity
    for record in (json.loads(x) for x in (out / CANDIDATES).read_text().splitlines()):
        if record["rung"] == 0:
            assert abs(record["params"] / total - record["budget"]) <= 0.1 * record["budget"] + 1e-6


@pytest.mark.distributed
def test_search_objective_same_at_every_layout_and_forward(ckpt, data_dir, tmp_path, megatron_runtime):
    """The objective of every candidate: masked == compact at TP=1, and compact at DP=2, TP=2, PP=2 (uneven and
    empty local shards included: the space keeps 1 of 2 query groups), and the best equals the perplexity of
    the extracted student."""
    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.importance.evaluation import evaluate_loss, load_batches, perplexity
    from nemo_subnet.subnet.extract import extract_checkpoint

    space = _space(tmp_path, "granularity: coarse_uniform\nordering: first_k\nquery_groups: [1, 2]\n")
    common = ["search", "--ckpt", str(ckpt), "--data", str(data_dir), "--space", str(space), "--budget", "0.5",
              "--tolerance", "0.2", "--strategy", "random", "--evaluations", "4", "--rungs", "1", "--no-progress",
              "--no-plots", *CLI_EVAL]
    assert main([*common, "--forward", "masked", "--out", str(tmp_path / "masked")]) == 0
    assert main([*common, "--out", str(tmp_path / "compact")]) == 0
    cli = str(__import__("nemo_subnet.cli", fromlist=["x"]).__file__)
    for name, layout in (("dp2", []), ("tp2", ["--tp", "2"]), ("pp2", ["--pp", "2"])):
        run_torchrun(cli, 2, *common, *layout, "--out", str(tmp_path / name), timeout=300)
    runs = {name: [json.loads(x) for x in (tmp_path / name / CANDIDATES).read_text().splitlines()]
            for name in ("masked", "compact", "dp2", "tp2", "pp2")}
    reference = runs.pop("masked")
    assert any(r["subnet"]["layer"]["query_groups"] == 1 for r in reference)
    for name, records in runs.items():
        assert [r["key"] for r in records] == [r["key"] for r in reference], name
        for a, b in zip(reference, records):
            assert b["objective"] == pytest.approx(a["objective"], rel=1e-5), (name, a["subnet"])
        # compact runs the sub-network, masked the kept layers at full width
        assert all(b["flops"] <= a["flops"] for a, b in zip(reference, records)), name
        assert sum(b["flops"] for b in records) < sum(a["flops"] for a in reference), name

    best = SubnetConfig.load(tmp_path / "compact" / "best.yaml")
    extract_checkpoint(ckpt, best, tmp_path / "student")
    cfg, student = load_model(tmp_path / "student")
    data = load_batches(data_dir, cfg, split="valid", num_batches=2, seq_length=32, micro_batch_size=2, seed=1234)
    summary = json.loads((tmp_path / "compact" / "summary.json").read_text())
    assert perplexity(evaluate_loss(student, cfg, data)) == pytest.approx(summary["best"]["objective"], rel=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["--budget", "0.02"], "budget unreachable"),
    (["--budget", "0.5", "--strategy", "annealing"], "strategy: 'annealing' is not allowed; allowed: random, evolutionary, proxy"),
    (["--budget", "0.5", "--population", "0"], "strategy_config.population: 0 is out of range; allowed: >= 1"),
    (["--budget", "0.5", "--strategy", "proxy", "--space", "SPACE_FIRST_K"], "needs importance scores"),
    (["--budget", "0.5", "--space", "SPACE_BIG"], "exceed the model"),
    (["--budget", "0.5", "--space", "SPACE_NO_SCORES"], "no scores were given"),
    (["--budget", "0.5", "--space", "SPACE_FIRST_K", "--val-batches", "4000"], "fewer than"),
    (["--budget", "0.5", "--space", "SPACE_FIRST_K", "--seq-length", "100000"], "position limit"),
])
def test_bad_input_is_one_line(extra, message, ckpt, data_dir, tmp_path, capsys, megatron_runtime):
    spaces = {"SPACE_FIRST_K": _space(tmp_path, "ordering: first_k\n"),
              "SPACE_BIG": _space(tmp_path, "ordering: first_k\nffn: [64, 512]\n", "big.yaml"),
              "SPACE_NO_SCORES": _space(tmp_path, "ordering: importance\n", "no_scores.yaml")}
    args = ["search", "--ckpt", str(ckpt), "--data", str(data_dir), "--out", str(tmp_path / "run"), "--evaluations", "2",
            "--no-progress", "--space", str(spaces["SPACE_FIRST_K"]), *CLI_EVAL]
    args += [str(spaces.get(x, x)) for x in extra]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nemo-subnet search: error:") and message in err and "\n" not in err, err


def test_empty_validation_tokens_error(ckpt, megatron_runtime):
    from nemo_subnet.cli import UserError
    from nemo_subnet.importance.evaluation import evaluate_loss, load_supernet, random_batches

    cfg, model = load_supernet(ckpt)
    data = random_batches(cfg.vocab_size, num_batches=1, seq_length=8, micro_batch_size=2)
    data.batches[0]["loss_mask"].zero_()
    with pytest.raises(UserError, match="empty validation data"):
        evaluate_loss(model, cfg, data)
