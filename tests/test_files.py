"""Atomic writes and append-only JSON-lines logs read back after a kill (nemo_subnet/files.py), and the two
logs that rely on them: a training run's metrics.jsonl and a search's candidates.jsonl."""

from __future__ import annotations

import json

import pytest

from nemo_subnet.files import read_jsonl, write_text_atomic
from nemo_subnet.search.results import CANDIDATES, RunDir
from nemo_subnet.training.metrics import METRICS_FILE, read_metrics, truncate


def _log(path, records, tail: str = ""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "a.yaml"
    write_text_atomic(target, "old\n")

    def disk_full(self, text):  # the temporary file fails half-way: the target keeps its old text
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(target), "write_text", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_text_atomic(target, "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml"]
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"


@pytest.mark.parametrize("tail", ['{"step": 3, "lo', '{"step": 3}'], ids=["cut-json", "no-newline"])
def test_a_last_line_cut_by_a_kill_is_dropped(tmp_path, tail):
    path = tmp_path / "log.jsonl"
    _log(path, [{"step": 1}, {"step": 2}], tail)
    assert read_jsonl(path) == ([{"step": 1}, {"step": 2}], True)
    _log(path, [{"step": 1}])
    assert read_jsonl(path) == ([{"step": 1}], False)
    assert read_jsonl(tmp_path / "absent.jsonl") == ([], False)


def test_a_bad_line_before_the_end_is_damage_not_a_kill(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"log.jsonl line 2 is not JSON .* the file is damaged"):
        read_jsonl(path)


def test_training_resume_truncates_past_a_cut_metrics_line(tmp_path, capsys):
    path = tmp_path / METRICS_FILE
    records = [{"kind": "train", "step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    _log(path, records, '{"kind": "train", "step": 4, "lo')
    truncate(path, 2)
    assert "dropped the last line" in capsys.readouterr().out
    assert read_metrics(tmp_path) == records[:2] and path.read_text().endswith("}\n")
    with pytest.raises(FileNotFoundError, match="no metrics"):
        read_metrics(tmp_path / "elsewhere")


def test_search_resume_rewrites_only_a_cut_candidates_log(tmp_path):
    path = tmp_path / CANDIDATES
    _log(path, [{"index": 0}, {"index": 1}], '{"index": 2, "obj')
    assert RunDir(tmp_path, writer=False).read_candidates() == [{"index": 0}, {"index": 1}]
    assert path.read_text().endswith('"obj')  # a reader never rewrites
    assert RunDir(tmp_path).read_candidates() == [{"index": 0}, {"index": 1}]
    assert path.read_text() == '{"index": 0}\n{"index": 1}\n'
