#!/usr/bin/env bash
# The GPU acceptance run on a machine without network: install the carried wheels, then run the script.
#
#   bash benchmarks/gpu_acceptance.sh --out DIR [more gpu_acceptance.py options]   install if needed, then run
#   bash benchmarks/gpu_acceptance.sh --install-only                              install and check, no run
#   bash benchmarks/gpu_acceptance.sh --download-wheels                           (a machine WITH registry
#                                                       access) fill .whl/ with the cp312 wheels listed below
#
# When `python3` can already import megatron-core, datasets and nemo_subnet (a normal `pip install -e .`),
# nothing is installed. Otherwise a virtual environment is made at $NEMO_SUBNET_ACCEPTANCE_VENV
# (default ${TMPDIR:-/tmp}/nemo_subnet_acceptance_venv) on top of python3's own packages (torch, triton,
# transformers stay the machine's: a .pth file puts its site-packages on the venv's path) and the missing
# packages are installed there from .whl/ by name, offline, without dependencies (nothing already present
# is replaced or upgraded, torch is never pulled), then nemo-subnet itself in editable mode (no build
# isolation: it uses the machine's setuptools, which torch requires on Python 3.12).
# Environment: PYTHON (default python3), NEMO_SUBNET_WHEELS (default <repo>/.whl), NEMO_SUBNET_COMMIT
# (recorded in the report when the tree has no .git).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS=${NEMO_SUBNET_WHEELS:-$REPO/.whl}
PY=${PYTHON:-python3}
VENV=${NEMO_SUBNET_ACCEPTANCE_VENV:-${TMPDIR:-/tmp}/nemo_subnet_acceptance_venv}
# What the GPU machine lacks for the acceptance run (Python 3.12, x86_64): megatron-core and what the
# training / data path imports that torch + transformers do not bring; liger-kernel for the speed comparison.
# datasets 5.2 needs pyarrow >= 24: 24.0.0 is the smallest wheel (49 MB) that keeps the set under the
# 64 MiB a device run may carry (63.2 MiB in all).
WHEEL_PINS=(megatron-core==0.16.1 datasets==5.2.0 pyarrow==24.0.0 pandas==3.1.1 dill==0.4.1 multiprocess==0.70.19
            xxhash==4.1.0 python-dateutil==2.9.0.post0 six==1.17.0 einops==0.8.2 psutil==7.2.2 liger-kernel==0.8.5)
IMPORTS="import megatron.core, datasets, pyarrow, pandas, psutil, einops, torch, triton, transformers, nemo_subnet.kernels"

die() { echo "gpu_acceptance.sh: $*" >&2; exit 2; }

if [[ "${1:-}" == "--download-wheels" ]]; then
    mkdir -p "$WHEELS"
    "$PY" -m pip download --python-version 3.12 --only-binary=:all: --no-deps -d "$WHEELS" "${WHEEL_PINS[@]}"
    du -b "$WHEELS"/*.whl | sort -n
    total=$(du -cb "$WHEELS"/*.whl | tail -1 | cut -f1)
    echo "total $((total / 1024 / 1024)) MiB in $WHEELS ($total bytes; a device run carries at most 64 MiB)"
    exit 0
fi

install_into_venv() {
    [[ -d "$WHEELS" ]] || die "$PY cannot import the acceptance run's packages and $WHEELS does not exist: run with --download-wheels on a machine with registry access, or pip install -e . with its dependencies"
    if [[ ! -x "$VENV/bin/python" ]]; then
        "$PY" -m venv --without-pip "$VENV" || die "could not create a virtual environment at $VENV"
    fi
    local site
    site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    # the machine's packages (torch, triton, transformers, pip, setuptools) under the venv's own
    "$PY" -c "import site, sys; print('\n'.join(site.getsitepackages() + [site.getusersitepackages()]))" > "$site/_machine_site.pth"
    local names=()
    for wheel in "$WHEELS"/*.whl; do names+=("$(basename "$wheel" | cut -d- -f1)"); done
    [[ ${#names[@]} -gt 0 ]] || die "no wheels in $WHEELS"
    echo "gpu_acceptance.sh: installing into $VENV (offline, from $WHEELS): ${names[*]}"
    "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELS" --no-deps "${names[@]}"
    "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation -e "$REPO" \
        || die "editable install of $REPO failed (it needs setuptools >= 68 in $PY's environment)"
}

if "$PY" -c "$IMPORTS" >/dev/null 2>&1; then
    RUN_PY=$PY
else
    install_into_venv
    RUN_PY=$VENV/bin/python
    "$RUN_PY" -c "$IMPORTS" || die "the installed environment still cannot import: $IMPORTS"
fi
"$RUN_PY" -c "import importlib.metadata as m
for p in ('torch', 'triton', 'transformers', 'megatron-core', 'datasets', 'liger-kernel'):
    try: print(f'  {p} {m.version(p)}')
    except m.PackageNotFoundError: print(f'  {p} not installed')"
[[ "${1:-}" == "--install-only" ]] && { echo "gpu_acceptance.sh: ready: $RUN_PY"; exit 0; }
exec "$RUN_PY" "$REPO/benchmarks/gpu_acceptance.py" "$@"
