"""A stage that fails under NeMo-Run is reported by its own one-line error first, the path of its full log below —
through NeMo-Run's `nemo` CLI and through `nemo-subnet run` — and a GPU task on a machine without CUDA fails
with one line instead of running on CPU."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from recipe_utils import BIN, nemo_subnet, run_cli  # noqa: E402


def _error_block(stderr: str, prog: str) -> list[str]:
    """The lines from the CLI's `<prog>: error:` line to the end of stderr."""
    lines = stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"{prog}: error: ")), None)
    assert start is not None, stderr[-4000:]
    return lines[start:]


def _log_path(block: list[str]) -> Path:
    logs = [line.split("full log: ", 1)[1] for line in block if line.strip().startswith("full log: ")]
    assert logs, block
    return Path(logs[0])


def test_bad_input_stage_error_comes_first_through_nemo_run_cli(tmp_path):
    missing = tmp_path / "no_such_corpus.jsonl"
    proc = run_cli([BIN / "nemo", "subnet", "search-then-pretrain", "--factory", "tiny", "-y",
                    f"config.out_dir={tmp_path / 'out'}", f"config.data.inputs=['{missing}']"], tmp_path, timeout=900)
    assert proc.returncode != 0
    block = _error_block(proc.stderr, "nemo subnet search-then-pretrain")
    assert block[0] == (f"nemo subnet search-then-pretrain: error: stage data: nemo-subnet data: error: input path "
                        f"does not exist: {missing}"), block
    log = _log_path(block)
    assert log.is_file() and f"input path does not exist: {missing}" in log.read_text()
    assert any(line.strip().startswith("not finished: data") for line in block), block
    assert "Traceback" not in "\n".join(block)


def test_gpu_stage_without_cuda_is_one_line_not_a_cpu_run(tmp_path):
    """launch.gpus_per_node=1 on this CPU machine: the teacher task (one rank per GPU) refuses to start."""
    out = tmp_path / "out"
    proc = run_cli(nemo_subnet("run", "--factory", "tiny", "--stage", "teacher", f"config.out_dir={out}",
                               "launch.gpus_per_node=1"), tmp_path, timeout=900)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-4000:]
    block = _error_block(proc.stderr, "nemo-subnet run")
    assert block[0].startswith("nemo-subnet run: error: stage teacher: this task requested 1 GPU(s) per node "
                               "(NEMO_SUBNET_REQUIRE_CUDA=1) but CUDA is not available ("), block
    assert "torch.cuda.is_available()=False" in block[0] and "refusing to run on CPU" in block[0]
    assert _log_path(block).is_file()
    assert not (out / "teacher").exists(), "the stage must not have started on CPU"
