"""Packages of the wheel: every package under nemo_subnet/ found, plus kernels/ and recipes/ (with any subpackages),
which live at the top level (design card) and install as nemo_subnet.kernels / nemo_subnet.recipes (pyproject's
package-dir). Everything else is in pyproject.toml; tests/test_packaging.py builds the wheel and checks it is whole.
"""

from setuptools import find_packages, setup

MAPPED = {"nemo_subnet.kernels": "kernels", "nemo_subnet.recipes": "recipes"}

packages = find_packages(include=["nemo_subnet", "nemo_subnet.*"])
for name, folder in MAPPED.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(where=folder)]
setup(packages=packages)
