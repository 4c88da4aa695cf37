#!/usr/bin/env bash
# The main job: sets up .venv on first use, then trains PPO on the default preset for a short
# budget and compares it with the Lyapunov policy and the heuristics on held-out seeds
# (python -m agents.demo; results in results/main/). Extra arguments go to the demo, e.g.
#   bash scripts/main.sh --budget full      the documented full training budget (docs/agents.md)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_venv.sh" lora,train,dev
cd "$root"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m agents.demo "$@"
