"""The tiny recipe end to end through NeMo-Run's LocalExecutor, training stages under torchrun on 2 ranks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from recipe_utils import assert_complete, nemo_subnet, run_cli  # noqa: E402

STAGES = ("data", "teacher", "importance", "search", "extract", "distill", "baseline", "export", "report")


@pytest.mark.distributed
def test_tiny_recipe_local_torchrun_two_ranks(tmp_path):
    out = tmp_path / "out"
    proc = run_cli(nemo_subnet("run", "--factory", "tiny", f"config.out_dir={out}", "launch.nproc_per_node=2"),
                   tmp_path, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert_complete(out, STAGES)
    # training stages really ran on 2 data-parallel ranks
    for run in ("teacher", "distill", "baseline"):
        state = json.loads(next((out / run / "checkpoints").glob("step_*/train_state.json")).read_text())
        assert state["layout"]["world_size"] == 2 and state["layout"]["dp"] == 2, state
    # the student was exported and generated text with transformers
    assert (out / "export" / "student_hf" / "config.json").is_file()
    assert (out / "export" / "generation.txt").read_text().startswith("def ")
    report = (out / "report" / "report.md").read_text()
    assert "## Sub-network search" in report and "### Tokens to target" in report
    assert (out / "report" / "students.png").stat().st_size > 0 and (out / "report" / "search.png").stat().st_size > 0
