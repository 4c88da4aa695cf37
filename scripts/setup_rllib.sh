#!/usr/bin/env bash
# Creates the virtualenv .venv-rllib in the project root on first use and installs fedenv with
# the extras given as $1 (default: rllib,dev) into it, for Ray RLlib (docs/rllib.md).
# A separate virtualenv because Ray's rllib extra pins gymnasium exactly (1.2.2 for ray 2.60),
# older than the one .venv may hold. torch is installed first and pinned, as in setup_venv.sh
# (override with FEDENV_TORCH_SPEC).
#   bash scripts/setup_rllib.sh && .venv-rllib/bin/python -m pytest -m "slow or not slow" tests/test_rllib.py
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv-rllib"
extras="${1:-rllib,dev}"
torch_spec="${FEDENV_TORCH_SPEC:-torch==2.13.0}"
python="${PYTHON:-python3}"
stamp="$venv/.installed-${extras//,/-}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "fedenv needs Python >= 3.10")'
  echo "[setup] creating $venv" >&2
  "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "[setup] installing fedenv[$extras] into .venv-rllib (first run only, ~1-2 min)" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check $torch_spec
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[$extras]"
  touch "$stamp"
fi
