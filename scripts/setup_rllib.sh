#!/usr/bin/env bash
# Creates the virtualenv .venv-rllib in the project root on first use and installs fedenv with
# the extras given as $1 (default: rllib,dev) into it, for Ray RLlib (docs/rllib.md).
# A separate virtualenv because Ray's rllib extra pins gymnasium exactly (1.2.2 for ray 2.60),
# older than the one .venv may hold. torch is installed first and pinned, as in setup_venv.sh
# (override with FEDENV_TORCH_SPEC).
#   bash scripts/setup_rllib.sh && .venv-rllib/bin/python -m pytest -m "slow or not slow" tests/test_rllib.py
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FEDENV_VENV=.venv-rllib exec bash "$root/scripts/setup_venv.sh" "${1:-rllib,dev}"
