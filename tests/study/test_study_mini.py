"""The miniature study end to end: every row, 2 seeds; the report's structure and arithmetic; resume per row.

FLOPs are checked against their definitions: the student's fwd+bwd per token against 3 x the one counter
(``models.counting.forward_flops_per_token``, itself checked against a built model's weights in
tests/models/test_counting.py) of the extracted model.yaml, i.e. the study counts the student it trained; the
teacher's forward against the same function of the teacher; importance against its definition (one calibration
pass: the default layer metric needs no layer drops) and search against every recorded evaluation (its tokens,
its rung, the sub-network's own forward).
"""

from __future__ import annotations

import csv
import json
import statistics

import pytest

pytestmark = pytest.mark.slow  # ~2-3 minutes on 2 cores: one of the few slow tests


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import dataclasses

    from nemo_subnet.study.config import mini
    from nemo_subnet.study.report import recorded_wall_s, write_report
    from nemo_subnet.study.run import run_study

    out = tmp_path_factory.mktemp("study")
    config = dataclasses.replace(mini(), out_dir=str(out / "study"))
    rows = run_study(config, log=lambda _: None)
    summary = write_report(rows, out / "report", recorded_wall_s(config.out_dir, rows))
    return config, rows, summary, out


def test_every_row_and_file(study):
    config, rows, summary, out = study
    assert [r["row"] for r in rows] == [r.name for r in config.rows()]
    assert len(rows) == 3 + 8 + 4 + 8
    for name in ("study.csv", "study.md", "curves_tokens.png", "curves_compute.png"):
        assert (out / "report" / name).stat().st_size > 0
    with (out / "report" / "study.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["row"] for r in table] == [r["row"] for r in rows]
    text = (out / "report" / "study.md").read_text()
    assert all(f"| {r['row']} |" in text for r in rows)
    for row in rows:
        assert [s["seed"] for s in row["seeds"]] == config.seeds
        for seed in row["seeds"]:
            assert seed["curve"][0][0] == 0  # every curve starts with the init itself
            assert seed["test_ppl"] is not None and seed["test_ppl"] > 1
            student = config.base.student_train
            steps = student.schedule.train_steps * (config.long_factor if row["row"] == "random_ce_long" else 1)
            assert seed["tokens"] == steps * student.data.global_batch_size * student.data.seq_length


def test_flop_accounting_matches_independent_counts(study):
    from nemo_subnet.models.config import ModelConfig
    from nemo_subnet.models.counting import forward_flops_per_token
    from nemo_subnet.subnet.config import SubnetConfig, resolve
    from nemo_subnet.subnet.extract import extract_model_config

    config, rows, summary, out = study
    root = out / "study"
    teacher = ModelConfig.load(root / "base" / "teacher" / "model" / "model.yaml")
    seq = config.base.student_train.data.seq_length
    teacher_fwd = forward_flops_per_token(teacher, seq)
    s, imp = config.base.search, config.base.importance
    tokens = imp.batches * imp.micro_batch_size * imp.seq_length
    importance = tokens * forward_flops_per_token(teacher, imp.seq_length)
    by_name = {e["row"]: e for e in summary["rows"]}
    for row in rows:
        init = json.loads((root / "inits" / row["init"] / "init.json").read_text())
        model_yaml = init.get("model_yaml") or f"{init['checkpoint']}/model.yaml"
        student = ModelConfig.load(model_yaml)
        for seed in row["seeds"]:  # the extracted student's own (per-layer) sizes
            assert seed["student_train_flops_per_token"] == pytest.approx(3 * forward_flops_per_token(student, seq))
        for seed in row["seeds"]:
            assert seed["teacher_forward_flops_per_token"] == (pytest.approx(teacher_fwd) if row["kd"] else 0.0)
        searched = row["init"].startswith(("evolutionary", "random_search", "minitron"))
        assert row["importance_flops"] == (pytest.approx(importance) if searched else 0.0)
        if searched:
            lines = (root / "inits" / row["init"] / "search" / "candidates.jsonl").read_text().split("\n")
            evaluations = [json.loads(line) for line in lines if line.strip()]
            first = {r["index"]: r for r in evaluations if r["rung"] == 0}
            assert len(first) == row["search_evaluations"] == (1 if row["init"] == "minitron" else s.evaluations)
            ev = s.eval
            assert max(r["batches"] for r in evaluations) == ev.batches
            for r in evaluations:  # compact evaluation: the sub-network's own forward over the rung's tokens
                assert r["tokens"] == r["batches"] * ev.micro_batch_size * ev.seq_length
                sub = extract_model_config(teacher, resolve(teacher, SubnetConfig.from_dict(first[r["index"]]["subnet"])))
                assert r["flops"] == pytest.approx(r["tokens"] * forward_flops_per_token(sub, ev.seq_length))
            assert row["search_flops"] == pytest.approx(sum(r["flops"] for r in evaluations))
        else:
            assert row["search_flops"] == 0.0
        entry = by_name[row["row"]]
        for m, seed in zip(entry["per_seed"], row["seeds"]):
            assert m["total_flops"] == pytest.approx(m["student_flops"] + m["teacher_flops"] + m["importance_flops"]
                                                     + m["search_flops"])
            assert m["student_flops"] == pytest.approx(seed["tokens"] * seed["student_train_flops_per_token"])
    # random search and evolutionary search get the same number of evaluations
    assert by_name["randsearch_kd"]["search_evaluations"] == by_name["evosearch_kd"]["search_evaluations"]


def test_means_stds_target_and_ratios(study):
    from nemo_subnet.training.tokens_to_target import tokens_at

    config, rows, summary, out = study
    reference = next(r for r in rows if r["row"] == "random_ce_long")
    target = max(s["curve"][-1][1] for s in reference["seeds"])
    assert summary["target"] == pytest.approx(target)
    random_ce = next(r for r in rows if r["row"] == "random_ce")
    assert summary["reference_compute"] == pytest.approx(statistics.fmean(
        s["tokens"] * s["student_train_flops_per_token"] for s in random_ce["seeds"]))
    for entry, row in zip(summary["rows"], rows):
        tests = [s["test_ppl"] for s in row["seeds"]]
        assert entry["test_ppl"] == pytest.approx(statistics.fmean(tests))
        assert entry["test_ppl_std"] == pytest.approx(statistics.stdev(tests))
        reached = [tokens_at(s["curve"], target) for s in row["seeds"]]
        present = [t for t in reached if t is not None]
        assert entry["tokens_to_target_n"] == len(present)
        if present:
            assert entry["tokens_to_target"] == pytest.approx(statistics.fmean(present))
    ref = next(e for e in summary["rows"] if e["row"] == "random_ce_long")
    assert ref["tokens_to_target_n"] == ref["seeds"] and ref["tokens_ratio"] == pytest.approx(1.0)
    for entry in summary["rows"]:
        if entry["tokens_ratio"] is not None:
            assert entry["tokens_ratio"] == pytest.approx(ref["tokens_to_target"] / entry["tokens_to_target"])


def test_rerun_skips_finished_rows(study):
    import time

    from nemo_subnet.study.run import run_study

    config, rows, summary, out = study
    row_files = sorted((out / "study" / "rows").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in row_files]
    begin = time.perf_counter()
    again = run_study(config, log=lambda _: None)
    assert again == rows and [p.stat().st_mtime_ns for p in row_files] == stamps
    assert time.perf_counter() - begin < 60  # nothing trained again (shared stages reused by their markers)
