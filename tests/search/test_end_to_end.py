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


def test_importance_cli_writes_scores(scores):
    loaded = ImportanceScores.load(scores)
    assert loaded.tokens == 2 * 2 * 32 and loaded.has_layer_drop
    assert loaded.model["num_layers"] == 4 and torch.isfinite(loaded.layers("perplexity")).all()


def test_search_cli_run_dir_and_resume(ckpt, data_dir, scores, tmp_path, capsys):
    from nemo_subnet.checkpointing import read_model_config

    out = tmp_path / "run"
    args = ["search", "--ckpt", str(ckpt), "--data", str(data_dir), "--space", str(_space(tmp_path)), "--budget", "0.6",
            "--tolerance", "0.1", "--scores", str(scores), "--out", str(out), "--population", "3", "--no-progress", *CLI_EVAL]
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
    assert "(2 evaluated now)" in capsys.readouterr().out
    again = [json.loads(line) for line in (out / CANDIDATES).read_text().splitlines()]
    assert again[:5] == records and len(again) == 7


@pytest.mark.distributed
def test_search_dp2_equals_dp1(ckpt, data_dir, tmp_path, megatron_runtime):
    space = _space(tmp_path, "granularity: coarse_uniform\nordering: first_k\n")
    common = ["search", "--ckpt", str(ckpt), "--data", str(data_dir), "--space", str(space), "--budget", "0.5",
              "--tolerance", "0.2", "--strategy", "random", "--evaluations", "3", "--no-progress", "--no-plots", *CLI_EVAL]
    assert main([*common, "--out", str(tmp_path / "dp1")]) == 0
    cli = str(__import__("nemo_subnet.cli", fromlist=["x"]).__file__)
    run_torchrun(cli, 2, *common, "--out", str(tmp_path / "dp2"), timeout=300)
    one = [json.loads(x) for x in (tmp_path / "dp1" / CANDIDATES).read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "dp2" / CANDIDATES).read_text().splitlines()]
    assert [r["key"] for r in one] == [r["key"] for r in two]
    for a, b in zip(one, two):
        assert b["objective"] == pytest.approx(a["objective"], rel=1e-5)


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
