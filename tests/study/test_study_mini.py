"""The miniature study end to end: every row, 2 seeds; pairing, FLOP accounting, the report's arithmetic, resume.

FLOPs are checked against their definitions: the student's fwd+bwd per token against 3 x the one counter
(``models.counting.forward_flops_per_token``) of the model.yaml the run trained; the teacher's forward against the
same function of the teacher, only for online KD; importance against one calibration pass (the default layer
metric needs no layer drops) charged to every init that read the scores; search against the sum of the recorded
evaluations; a cache against the samples it covers.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # a few minutes on 2 cores: one of the few slow tests


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import dataclasses

    from nemo_subnet.study.config import mini
    from nemo_subnet.study.report import collect, write_report
    from nemo_subnet.study.run import run_study

    out = tmp_path_factory.mktemp("study")
    config = dataclasses.replace(mini(), out_dir=str(out / "study"))
    results = run_study(config, log=lambda _: None)
    summary = write_report(config, results, out / "report")
    assert collect(out / "study", config.rows(), config.seeds) == results
    return config, results, summary, out


def _teacher(out):
    from nemo_subnet.models.config import ModelConfig

    return ModelConfig.load(out / "study" / "base" / "teacher" / "model" / "model.yaml")


def test_every_row_seed_and_file(study):
    config, results, summary, out = study
    assert list(results) == [r.name for r in config.rows()]
    for name in ("study.csv", "study_seeds.csv", "comparisons.csv", "study.md", "curves_tokens.png",
                 "curves_compute.png"):
        assert (out / "report" / name).stat().st_size > 0
    with (out / "report" / "study_seeds.csv").open() as f:
        per_seed = list(csv.DictReader(f))
    assert len(per_seed) == len(config.rows()) * len(config.seeds)
    text = (out / "report" / "study.md").read_text()
    assert config.scale in text and "## Verdicts" in text and all(f"| {r.name} |" in text for r in config.rows())
    student = config.base.student_train
    for row in config.rows():
        runs = results[row.name]
        assert [s["seed"] for s in runs] == config.seeds
        for seed in runs:
            steps = [t // (student.data.global_batch_size * student.data.seq_length) for t, _ in seed["curve"]]
            assert steps[:2] == [0, 1]  # the init itself, then the dense early point (logging.eval_steps)
            assert seed["test_ppl"] > 1 and seed["tokens"] == seed["steps"] * student.data.global_batch_size * \
                student.data.seq_length
            base = student.schedule.train_steps
            if row.tokens == "reference":
                assert seed["steps"] == base * config.long_factor
            elif row.tokens == "kd_compute":  # as many CE tokens as the online-KD run's FLOPs buy
                s, t = seed["student_train_flops_per_token"], _teacher_fwd(out, config)
                assert seed["steps"] == round(base * (s + t) / s) > base
            else:
                assert seed["steps"] == base
            run_dir = out / "study" / "runs" / row.name / f"seed{seed['seed']}"
            trained = yaml.safe_load((run_dir / "config.yaml").read_text())
            expected = dict(row.train) or {"optimizer.lr": student.optimizer.lr,
                                           "schedule.warmup_steps": student.schedule.warmup_steps}
            for key, value in expected.items():
                section, name = key.split(".")
                assert trained[section][name] == pytest.approx(value), (row.name, key)


def _teacher_fwd(out, config):
    from nemo_subnet.models.counting import forward_flops_per_token

    return forward_flops_per_token(_teacher(out), config.base.student_train.data.seq_length)


def test_seeds_are_paired_and_searches_vary(study):
    """Fixed inits (Minitron, first-k) start at the same valid ppl in every seed: the same evaluation samples.
    Random and evolutionary search get different seeds from each other and per study seed."""
    config, results, summary, out = study
    for row in ("minitron_kd", "firstk_ce"):
        starts = {s["curve"][0][1] for s in results[row]}
        assert len(starts) == 1, starts
    assert len({s["curve"][-1][1] for s in results["minitron_kd"]}) == 2  # the data order differs
    for gentle, default in zip(results["evosearch_kd_gentle_lr"], results["evosearch_kd"]):  # one init, two LRs
        assert gentle["curve"][0] == default["curve"][0] and gentle["curve"][-1] != default["curve"][-1]
    root = out / "study" / "inits"
    searches = [json.loads((root / name / f"seed{seed}" / "search" / "search.json").read_text())
                for name in ("randsearch", "evosearch") for seed in config.seeds]
    assert len({s["seed"] for s in searches}) == 4


def test_flop_accounting_matches_independent_counts(study):
    from nemo_subnet.models.config import ModelConfig
    from nemo_subnet.models.counting import forward_flops_per_token
    from nemo_subnet.subnet.config import SubnetConfig, resolve
    from nemo_subnet.subnet.extract import extract_model_config

    config, results, summary, out = study
    root, teacher = out / "study", _teacher(out)
    seq, imp = config.base.student_train.data.seq_length, config.base.importance
    importance = imp.batches * imp.micro_batch_size * imp.seq_length * forward_flops_per_token(teacher, imp.seq_length)
    minitron = json.loads((root / "inits" / "minitron" / "init.json").read_text())
    for row in config.rows():
        for seed in results[row.name]:
            init_dir = root / "inits" / row.init.name / (f"seed{seed['seed']}" if row.init.searched_per_seed else "")
            init = json.loads((init_dir / "init.json").read_text())
            student = ModelConfig.load(init.get("model_yaml") or f"{init['checkpoint']}/model.yaml")
            assert seed["student_train_flops_per_token"] == pytest.approx(3 * forward_flops_per_token(student, seq))
            online = row.teacher == "online"
            assert seed["teacher_forward_flops_per_token"] == (pytest.approx(_teacher_fwd(out, config)) if online else 0)
            if row.init.kind == "random":
                assert seed["importance_flops"] == seed["search_flops"] == 0
            else:
                assert seed["importance_flops"] == pytest.approx(importance)
            if row.init.kind == "firstk":  # charged the Minitron pick it takes its sizes from
                assert seed["search_flops"] == minitron["search_flops"] > 0
            elif row.init.kind != "random":
                lines = (init_dir / "search" / "candidates.jsonl").read_text().splitlines()
                records = [json.loads(line) for line in lines if line.strip()]
                assert seed["search_flops"] == pytest.approx(sum(r["flops"] for r in records))
            if row.teacher == "cache":
                info = json.loads((root / "caches" / row.cache.name / f"seed{seed['seed']}" / "cache.json").read_text())
                covered = seed["steps"] * config.base.student_train.data.global_batch_size
                assert seed["cache_flops"] == pytest.approx(covered * seq * _teacher_fwd(out, config) / info["served"])
            else:
                assert seed["cache_flops"] == 0
            if "layerwise" not in row.init.granularity:  # a uniform student exports as it is
                assert seed["hf_parameters"] == seed["student_parameters"]


def test_targets_ratios_means_and_paired_verdicts(study):
    from nemo_subnet.study.report import total_flops
    from nemo_subnet.training.tokens_to_target import tokens_at

    config, results, summary, out = study
    refs = {s["seed"]: s for s in results["random_ref"]}
    by = {(m["row"], m["seed"]): m for m in summary["per_seed"]}
    for (row, seed), m in by.items():
        assert m["target"] == refs[seed]["curve"][-1][1]
        run = next(s for s in results[row] if s["seed"] == seed)
        assert m["tokens_to_target"] == tokens_at(run["curve"], m["target"])
        if m["compute_to_target"]:
            assert m["compute_ratio"] == pytest.approx(total_flops(refs[seed]) / m["compute_to_target"])
            assert m["compute_ratio_bound"] is None
        else:  # short of the target: at most what all its compute would give
            assert m["compute_ratio_bound"] == pytest.approx(total_flops(refs[seed]) / m["total_flops"])
        if m["overhead_flops"]:  # no row beats what its importance + search + cache share alone allow
            assert m["compute_ratio_cap"] == pytest.approx(total_flops(refs[seed]) / m["overhead_flops"])
            assert m["compute_ratio"] is None or m["compute_ratio"] <= m["compute_ratio_cap"]
        else:
            assert m["compute_ratio_cap"] is None and row in ("random_ref", "random_kd", "random_ce")
    for entry in summary["rows"]:
        tests = [by[(entry["row"], seed)]["test_ppl"] for seed in config.seeds]
        assert entry["test_ppl"] == pytest.approx(statistics.fmean(tests))
        assert entry["test_ppl_se"] == pytest.approx(statistics.stdev(tests) / math.sqrt(len(tests)))
    assert by[("random_ref", 1)]["compute_ratio"] == pytest.approx(1.0)
    pairs = {(p["a"], p["b"], p["metric"]): p for p in summary["comparisons"]}
    p = pairs[("evosearch_kd", "random_kd", "test_ppl")]
    diffs = [by[("evosearch_kd", s)]["test_ppl"] - by[("random_kd", s)]["test_ppl"] for s in config.seeds]
    assert p["mean"] == pytest.approx(statistics.fmean(diffs)) and p["n"] == 2
    assert p["se"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(2))
    assert p["verdict"] in ("holds", "does not hold", "unresolved")
    goal = pairs[("evosearch_kd", "random_ref", "compute")]
    reached = [s for s in config.seeds if by[("evosearch_kd", s)]["compute_to_target"]]
    assert goal["n"] == len(config.seeds) and goal["seeds_not_reached"] == [s for s in config.seeds if s not in reached]
    # a seed that did not reach the target counts at the compute it spent: the most its ratio can be
    spent = [by[("evosearch_kd", s)]["compute_to_target"] or by[("evosearch_kd", s)]["total_flops"]
             for s in config.seeds]
    assert goal["mean"] == pytest.approx(statistics.fmean(
        math.log(total_flops(refs[s]) / c) for s, c in zip(config.seeds, spent)))
    if goal["seeds_not_reached"]:
        assert goal["verdict"] != "holds"


def test_rerun_trains_nothing_and_report_only(study, capsys):
    import time

    from nemo_subnet.study.__main__ import main
    from nemo_subnet.study.run import run_study

    config, results, summary, out = study
    files = sorted((out / "study" / "runs").glob("*/seed*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in files]
    begin = time.perf_counter()
    assert run_study(config, log=lambda _: None) == results
    assert [p.stat().st_mtime_ns for p in files] == stamps
    assert time.perf_counter() - begin < 60  # nothing trained again (shared stages reused by their markers)
    assert main(["--preset", "mini", "--out", config.out_dir, "--report-only", "--results", str(out / "again")]) == 0
    assert (out / "again" / "study.md").read_text() == (out / "report" / "study.md").read_text()


def test_a_stopped_run_is_no_result_and_stops_the_study(study, monkeypatch):
    """SIGTERM mid-run (the train loop returns "preempted"): no result.json, the study raises; a rerun trains it."""
    import dataclasses

    import nemo_subnet.training.loop as loop
    from nemo_subnet.study.run import Study, StudyStopped

    config = study[0]
    row = dataclasses.replace(next(r for r in config.rows() if r.name == "minitron_kd"), name="stopped_probe")

    def preempted(run):
        return loop.TrainResult(run_dir=run.run_dir, step=1, tokens=0, status="preempted", last_checkpoint=None,
                                final_metrics={})

    monkeypatch.setattr(loop, "train", preempted)
    runner = Study(config, log=lambda _: None)
    runner.shared()
    with pytest.raises(StudyStopped, match="stopped_probe seed 1 stopped by SIGTERM at step 1"):
        runner.run_seed(row, 1)
    assert not (Path(config.out_dir) / "runs" / "stopped_probe" / "seed1" / "result.json").exists()
