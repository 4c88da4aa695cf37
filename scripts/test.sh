#!/usr/bin/env bash
# The test command: sets up .venv on first use, then runs the test suite.
#   bash scripts/test.sh            fast suite (a few minutes)
#   bash scripts/test.sh --all      fast + slow tests (real MiniLM, SB3 training); CI runs this
# Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_venv.sh" lora,train,dev
cd "$root"
marker=(-m "not slow")
if [ "${1:-}" = "--all" ] || [ "${CI:-}" = "true" ]; then
  [ "${1:-}" = "--all" ] && shift
  marker=(-m "slow or not slow")
fi
export FEDENV_DATA_DIR="${FEDENV_DATA_DIR:-$root/../shared/data/glue}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "${marker[@]}" -n 2 --dist loadfile "$@"
