"""Run the Triton kernels on CPU through Triton's interpreter, whatever was imported first.

Triton fixes interpret mode for its own library functions when `triton` is first imported, and megatron-core
imports it. So: set TRITON_INTERPRET=1 here (early enough when tests/kernels is collected first); and if
some other test module imported triton before us, tests marked `triton` are run once, together, in a child
pytest with the variable set, and each reports the child's outcome. On a CUDA machine they run natively.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

import pytest
import torch

_CHILD_FLAG = "NEMO_SUBNET_TRITON_CHILD"
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from nemo_subnet.kernels import interpreter_active  # noqa: E402  (after TRITON_INTERPRET)

_child_results: dict[str, tuple[str, str]] | None = None


@pytest.fixture
def device() -> torch.device:
    """Where a kernel test puts its tensors: CUDA where it exists (compiled Triton), else the CPU (Triton's
    interpreter for Backend.TRITON, the torch mirror for Backend.TORCH)."""
    from kd_testing import DEVICE

    return DEVICE


def pytest_configure(config):
    config.addinivalue_line("markers", "triton: runs Triton kernels (CUDA, or the CPU interpreter)")


def pytest_collection_modifyitems(config, items):
    # numpy (the interpreter) warns about inf - inf in lanes the kernels mask out right after
    ignore = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
    for item in items:
        if item.get_closest_marker("triton"):
            item.add_marker(ignore)


def _needs_child() -> bool:
    return not torch.cuda.is_available() and not interpreter_active() and os.environ.get(_CHILD_FLAG) != "1"


def _junit_key(nodeid: str) -> tuple[str, str]:
    path, _, name = nodeid.partition("::")
    return path[: -len(".py")].replace("/", "."), name


def _run_children(session) -> dict[str, tuple[str, str]]:
    items = [i for i in session.items if i.get_closest_marker("triton")]
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, "triton.xml")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
               *[i.nodeid for i in items]]
        env = {**os.environ, "TRITON_INTERPRET": "1", _CHILD_FLAG: "1"}
        proc = subprocess.run(cmd, cwd=str(session.config.rootpath), env=env, capture_output=True, text=True)
        by_key: dict[tuple[str, str], tuple[str, str]] = {}
        if os.path.exists(junit):
            for case in ET.parse(junit).getroot().iter("testcase"):
                outcome, text = "passed", ""
                for child in case:
                    if child.tag in ("failure", "error", "skipped"):
                        outcome, text = child.tag, (child.get("message") or "") + "\n" + (child.text or "")
                by_key[(case.get("classname"), case.get("name"))] = (outcome, text)
    tail = (proc.stdout + proc.stderr)[-4000:]
    return {i.nodeid: by_key.get(_junit_key(i.nodeid), ("error", f"no result from child pytest:\n{tail}"))
            for i in items}


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    global _child_results
    if not pyfuncitem.get_closest_marker("triton") or not _needs_child():
        return None
    if _child_results is None:
        _child_results = _run_children(pyfuncitem.session)
    outcome, text = _child_results[pyfuncitem.nodeid]
    if outcome == "skipped":
        pytest.skip(text)
    if outcome != "passed":
        raise AssertionError(f"[run in a TRITON_INTERPRET=1 child pytest] {outcome}:\n{text}")
    return True
