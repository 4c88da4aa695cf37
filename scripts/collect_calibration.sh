#!/usr/bin/env bash
# Collects the real-backend (lora) traces the surrogate is calibrated and checked on
# (docs/fidelity.md). Resumable: a killed run is restarted with the same command, and every
# complete episode already in a trace file is kept (python -m fedenv.calibrate collect).
#
#   bash scripts/collect_calibration.sh [stage ...]     stages: sst2 soft qnli long (default: all)
#
# One trace file per (stage, seed) under $OUT (default results/calibration/v3); $THREADS torch
# threads per collection (default 1: on a 2-core machine run two stages side by side).
# About 5-6 CPU-hours in all on a 2-core CPU; a GPU makes it minutes.
#   sst2  SST-2, 15 rounds, six policies; seeds 0-7 fit the surrogate, 100-109 are held out
#   soft  the soft preset (SOFT-TSFA, sparsification), the four policies that act on it
#   qnli  QNLI, 15 rounds, six policies; seeds 0-1 fit, seed 100 is held out
#   long  max and Lyapunov over the default horizon (50 rounds) on held-out seeds 100 and 101
#
# The committed traces (configs/calibration/traces_v3/) were collected at commit efdcc74, with the
# defaults of then: E_bar = 0.25 J, the assumed surrogate constants as the Lyapunov policy's model,
# its V = 0.1, no budget guard. Today's code collects different traces under the same names, so
# the script refuses to run from a later commit: add seeds to these stages from a checkout of
# efdcc74 (git worktree add ../collect efdcc74), or set FEDENV_COLLECT_ANYWAY=1 to collect with
# today's code into a new $OUT.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [ "${FEDENV_COLLECT_ANYWAY:-0}" != 1 ]; then
  echo "collect_calibration.sh: the committed traces were collected at commit efdcc74 with the" \
    "defaults of then; run it from a checkout of efdcc74 (git worktree add ../collect efdcc74)" \
    "to extend them, or set FEDENV_COLLECT_ANYWAY=1 to collect with this code into a new OUT" >&2
  exit 2
fi
export FEDENV_DATA_DIR="${FEDENV_DATA_DIR:-$root/../shared/data/glue}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
out="${OUT:-results/calibration/v3}"
threads="${THREADS:-1}"
python="${PYTHON:-.venv/bin/python}"
mkdir -p "$out"

policies=(lyapunov max min_rank greedy round_robin random)
soft_policies=(lyapunov max greedy random) # min_rank and round_robin need a module/schedule

collect() { # name seed args...
  local name=$1 seed=$2
  shift 2
  echo "$(date -u +%FT%TZ) $name seed $seed"
  "$python" -m fedenv.calibrate collect --threads "$threads" --no-progress --seeds "$seed" \
    --out "$out/${name}_s$seed.jsonl" "$@"
}

stage_sst2() {
  # fit seeds 4-7 come last: they were added after the first collection (docs/fidelity.md)
  for s in 0 1 2 3 100 101 102 103 104 105 106 107 108 109 4 5 6 7; do
    collect sst2 "$s" --task sst2 --rounds 15 --policies "${policies[@]}"
  done
}
stage_soft() {
  for s in 0 1 100 101 102 103; do
    collect soft "$s" --config soft --task sst2 --rounds 15 --policies "${soft_policies[@]}"
  done
}
stage_qnli() {
  for s in 0 1 100; do
    collect qnli "$s" --task qnli --rounds 15 --policies "${policies[@]}"
  done
}
stage_long() {
  for s in 100 101; do
    collect sst2_long "$s" --task sst2 --rounds 50 --policies lyapunov max
  done
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(sst2 soft qnli long)
for stage in "${stages[@]}"; do
  case "$stage" in
  sst2 | soft | qnli | long) "stage_$stage" ;;
  *)
    echo "unknown stage '$stage': expected sst2, soft, qnli or long" >&2
    exit 2
    ;;
  esac
done
