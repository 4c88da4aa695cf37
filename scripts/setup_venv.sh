#!/usr/bin/env bash
# Creates the virtualenv .venv in the project root on first use and installs fedenv into it
# (editable) with the extras given as $1 (default: everything the tests need).
# FEDENV_VENV names another virtualenv directory in the project root (setup_rllib.sh: .venv-rllib).
# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build.
# Override the pin with FEDENV_TORCH_SPEC (e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu").
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/${FEDENV_VENV:-.venv}"
extras="${1:-lora,train,dev}"
torch_spec="${FEDENV_TORCH_SPEC:-torch==2.13.0}"
python="${PYTHON:-python3}"
stamp="$venv/.installed-${extras//,/-}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "fedenv needs Python >= 3.10")'
  echo "[setup] creating $venv" >&2
  "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "[setup] installing fedenv[$extras] into $(basename "$venv") (first run only, ~2 min)" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check $torch_spec
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[$extras]"
  touch "$stamp"
fi
