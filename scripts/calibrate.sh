#!/usr/bin/env bash
# Refits the surrogate to the committed real-backend traces and regenerates docs/fidelity.md
# (docs/fidelity.md, "Method"): the calibration files under configs/calibration/, then every
# generated block of the page. Takes a few minutes on a CPU; needs no data and no model.
#
#   bash scripts/calibrate.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python="${PYTHON:-.venv/bin/python}"
cal() { "$python" -m fedenv.calibrate "$@"; }
v3=configs/calibration/traces_v3
heldout=(100 101 102 103 104 105 106 107 108 109)
soft_heldout=(100 101 102 103)

# SST-2 / MiniLM: fit on every seed not held out (0-7, six policies). warmup stays 0: the fixed
# backend has no slow start, and a free fit pins it at that bound.
# The fit starts from the assumed constants pinned in start/assumed.yaml, not from the defaults,
# so that it does not move when they do.
cal fit --traces "$v3/sst2/" --heldout-seeds "${heldout[@]}" --objective both \
  --parameters step_size rank_scale participation_exponent heterogeneity_penalty \
  rank_mix_penalty max_accuracy --base configs/calibration/start/assumed.yaml \
  --out configs/calibration/sst2_minilm.yaml >/dev/null

cal report --traces "$v3/sst2/" --calibration configs/calibration/sst2_minilm.yaml \
  --heldout-seeds "${heldout[@]}" --out docs/fidelity.md >/dev/null
# soft preset: the sparsity exponent, the one constant no SST-2 episode determines, fitted alone
# on the soft fit seeds (0-1), the others from the SST-2 fit above
if [ -d "$v3/soft" ]; then
  cal fit --traces "$v3/soft/" --heldout-seeds "${soft_heldout[@]}" --objective both \
    --parameters sparsity_exponent --base configs/calibration/sst2_minilm.yaml \
    --out configs/calibration/sst2_soft_minilm.yaml >/dev/null
  cal report --traces "$v3/soft/" --calibration configs/calibration/sst2_soft_minilm.yaml \
    --heldout-seeds "${soft_heldout[@]}" --block soft --out docs/fidelity.md >/dev/null
fi
if [ -d "$v3/sst2_long" ]; then
  cal report --traces "$v3/sst2_long/" --calibration configs/calibration/sst2_minilm.yaml \
    --heldout-seeds 100 101 --block sst2_long --out docs/fidelity.md >/dev/null
fi
# QNLI / MiniLM: the same six constants on the qnli stage's fit seeds (0-1), seed 100 held out;
# the report needs the held-out seed's episodes
if [ -d "$v3/qnli" ]; then
  cal fit --traces "$v3/qnli/" --heldout-seeds 100 --objective both \
    --parameters step_size rank_scale participation_exponent heterogeneity_penalty \
    rank_mix_penalty max_accuracy --base configs/calibration/start/assumed.yaml \
    --out configs/calibration/qnli_minilm.yaml >/dev/null
  if compgen -G "$v3/qnli/qnli_s100.*" >/dev/null; then
    cal report --traces "$v3/qnli/" --calibration configs/calibration/qnli_minilm.yaml \
      --heldout-seeds 100 --out docs/fidelity.md >/dev/null
  fi
fi
cal inventory --traces "$v3"/*/ --out docs/fidelity.md >/dev/null
echo "-> configs/calibration/{sst2,sst2_soft,qnli}_minilm.yaml, docs/fidelity.md"
