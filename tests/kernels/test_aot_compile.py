"""Every Triton kernel variant the KD ops launch compiles for sm_90 and sm_100, without spilling (no GPU needed).

The variants are not listed here: `triton_aot.plan` runs the ops on meta tensors and records the launches
the code builds (`kernels._row_kernels.recording`), so the check follows any change of launch config,
constexprs or dispatch. Compilation runs in a child process without TRITON_INTERPRET (this process may
have the interpreter on, which replaces the kernels), two compile workers, Triton's on-disk cache reused.
By default every kernel x constexpr combination at two row lengths (see `triton_aot.subset`); `make
test-extended` adds every vocabulary case x dtype. `pytest -s` prints the table; benchmarks/triton_compile.py writes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton_aot

from nemo_subnet.kernels import Backend, interpreter_active, kd_loss
from nemo_subnet.kernels._row_kernels import launch_config, recording

HELPER = str(Path(triton_aot.__file__))
REASON = triton_aot.missing_tools()
needs_tools = pytest.mark.skipif(REASON is not None, reason=f"AOT compile check: {REASON}")
OPS = {"kd_loss", "topk_kd_loss", "fused_linear_kd_loss", "vocab_parallel_kd_loss", "fused_linear_sampled_kd_loss"}


def _compile(subset: str, tmp_path, timeout: int) -> list[dict]:
    out = tmp_path / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, HELPER, "--subset", subset, "--jobs", "2", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert out.exists(), f"compile child failed (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}"
    result = json.loads(out.read_text())
    rows = result["rows"]
    print(f"\n{triton_aot.format_table(rows)}\n{len(rows)} variants: traced {result['trace_s']:.1f} s, "
          f"total {result['total_s']:.1f} s; max registers "
          f"{max((r['registers'] or 0) for r in rows)}, max spill "
          f"{max((r['spill_stores'] or 0) + (r['spill_loads'] or 0) for r in rows)} B")
    return rows


def _check(rows: list[dict]) -> None:
    errors = [f"{r['variant']} {r['arch']} {r['dtype']} V={r['n_cols']}: {r['error']}" for r in rows if r["error"]]
    assert not errors, "compile errors:\n" + "\n".join(errors)
    limit = triton_aot.SPILL_LIMIT_BYTES
    spills = [f"{r['variant']} {r['arch']} {r['dtype']} V={r['n_cols']}: {r['spill_stores']} B stored, "
              f"{r['spill_loads']} B loaded" for r in rows if max(r["spill_stores"], r["spill_loads"]) > limit]
    assert not spills, f"register spills above {limit} B:\n" + "\n".join(spills)
    for r in rows:  # what was compiled is what the launch plan picks for the GPU
        cfg = launch_config(r["n_cols"], interpreted=False)
        assert (r["block_v"], r["num_warps"]) == (cfg.block_v, cfg.num_warps), r
    assert {r["arch"] for r in rows} == {f"sm_{a}" for a in triton_aot.ARCHS}
    assert {r["kernel"] for r in rows} == {"_kd_stats_kernel", "_kd_jsd_kernel", "_kd_grad_kernel"}


@needs_tools
def test_representative_variants_compile_for_sm90_and_sm100(tmp_path):
    rows = _compile("default", tmp_path, timeout=600)
    _check(rows)
    uses = " ".join(r["uses"] for r in rows)
    assert all(op in uses for op in OPS), uses[:500]
    assert {r["dtype"] for r in rows} == {"float32", "bfloat16"}
    assert {r["n_valid_mod16"] == 0 for r in rows} == {True, False}  # vectorisable masks and odd vocabularies


@pytest.mark.extended  # ~4-6 min cold on 2 cores; benchmarks/triton_compile.py writes the same table
@needs_tools
def test_every_variant_compiles_for_sm90_and_sm100(tmp_path):
    rows = _compile("all", tmp_path, timeout=1800)
    _check(rows)
    uses = " ".join(r["uses"] for r in rows)
    assert all(f"[{case.name}]" in uses for case in triton_aot.VOCAB_CASES)
    assert {r["dtype"] for r in rows} == set(triton_aot.DTYPES)


def test_meta_tensor_launches_only_record():
    """Backend.TRITON on meta tensors plans launches; outside `recording()` it refuses to launch them."""
    pytest.importorskip("triton")
    student = torch.empty(4, 300, device="meta", requires_grad=True)
    teacher = torch.empty(4, 300, device="meta")
    with pytest.raises(RuntimeError, match="can only be recorded"):
        kd_loss(student, teacher, backend=Backend.TRITON)


@pytest.mark.skipif(not interpreter_active(), reason="checks the refusal under Triton's interpreter (CPU runs)")
def test_recording_refuses_the_interpreter():
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        with recording():
            pass
