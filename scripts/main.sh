#!/usr/bin/env bash
# The main job: sets up .venv on first use, then runs the demo (see README).
# Extra arguments go to the demo.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_venv.sh" lora,train,dev
cd "$root"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m fedenv.demo "$@"
