#!/usr/bin/env bash
# Does a learned phase mask beat its starting point (the clear pupil)? A CPU-sized version of the
# paper's Fig. 4 comparison, about 20 minutes on 2 cores:
#   1. learn the mask jointly with a decoder, starting from the clear pupil (experiment=psf_design_cpu);
#   2. retrain a fresh decoder for the learned mask and another for the clear pupil, same budget;
#   3. score both on the same fixed-seed test sets (evaluate.py), at several densities.
# Usage: studies/psf_design_cpu.sh [output folder]
#   JOINT_STEPS=<n> (default 500): mask + decoder steps; STEPS=<n> (default 1000): each retrained decoder
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-logs/studies/psf_design_cpu}
JOINT_STEPS=${JOINT_STEPS:-500}
STEPS=${STEPS:-1000}
# the decoders of the published study: the quickstart data with the paper's dilated trunk, 32 channels, Adam 1e-3
DECODER=(model.network.trunk=paper model.network.channels=32 model.optimizer.lr=1e-3 model.scheduler.kind=none)
COMMON=(logger=csv test=false +trainer.max_steps="$STEPS" trainer.max_epochs=-1 "${DECODER[@]}")

"$PY" train.py experiment=psf_design_cpu logger=csv test=false +trainer.max_steps="$JOINT_STEPS" trainer.max_epochs=-1 \
    hydra.run.dir="$OUT/joint"
"$PY" train.py experiment=quickstart optics.mask="$OUT/joint/learned_mask.npy" "${COMMON[@]}" hydra.run.dir="$OUT/learned"
"$PY" train.py experiment=quickstart optics.mask=clear "${COMMON[@]}" hydra.run.dir="$OUT/clear"
"$PY" evaluate.py "ckpts=[$OUT/clear/checkpoints/last.ckpt,$OUT/learned/checkpoints/last.ckpt]" \
    "labels=[clear pupil,learned mask]" frames=50 "counts=[10,30,50,75]" baseline=false \
    out="$OUT/evaluation" overwrite=true
echo "report: $OUT/evaluation/report.md"
