#!/usr/bin/env bash
# The README's analysis figures (issue 18): localize, then `python -m dstorm3d.analyze`, on
#   1. the 25 real mito frames (STORM, printed Tetrapod) with the shipped model;
#   2. a long simulated recording: FRAMES (default 1000) frames of 128×128 px, mitochondria-like filaments,
#      drawn from the shipped model's own training distribution (photons, background, camera), localized by it.
# The renders are copied to docs/figures/{mito,simulated}_render.png, the FRC and drift figures beside them.
# (25 sparse frames: 30 nm render pixels and spots at least 45 nm wide, so that a page-sized figure shows them.)
# Usage: studies/analysis_renders.sh [output folder]      (~2 min on 2 CPU cores at 1000 frames)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-logs/studies/analysis_renders}
FRAMES=${FRAMES:-1000}
CKPT=models/storm_tetrapod.ckpt
MITO=../shared/data/experimental/mito_tetrapod

"$PY" infer.py ckpt=$CKPT data=$MITO out="$OUT/mito" overwrite=true overlay_frames=0 hydra.run.dir="$OUT/mito/hydra"
"$PY" -m dstorm3d.analyze locs="$OUT/mito/localizations.csv" out="$OUT/mito_analysis" overwrite=true \
    render.pixel_nm=30 render.min_sigma_nm=45 \
    hydra.run.dir="$OUT/mito_analysis/hydra"

"$PY" -m dstorm3d.simulate ckpt=$CKPT frames="$FRAMES" structure=filaments blinking.density_per_um2=0.15 \
    out="$OUT/sim" overwrite=true hydra.run.dir="$OUT/sim/hydra"
"$PY" infer.py ckpt=$CKPT data="$OUT/sim/recording.tif" out="$OUT/sim_localized" overwrite=true overlay_frames=1 \
    hydra.run.dir="$OUT/sim_localized/hydra"
"$PY" -m dstorm3d.analyze locs="$OUT/sim_localized/localizations.csv" out="$OUT/sim_analysis" overwrite=true \
    hydra.run.dir="$OUT/sim_analysis/hydra"
"$PY" -m dstorm3d.score locs="$OUT/sim_localized/localizations.csv" truth="$OUT/sim/ground_truth.csv" \
    out="$OUT/sim_score" overwrite=true hydra.run.dir="$OUT/sim_score/hydra"

cp "$OUT/mito_analysis/render.png" docs/figures/mito_render.png
cp "$OUT/sim_analysis/render.png" docs/figures/simulated_render.png
cp "$OUT/sim_analysis/frc.png" docs/figures/simulated_frc.png
cp "$OUT/sim_analysis/drift.png" docs/figures/simulated_drift.png
echo "summaries: $OUT/mito_analysis/summary.json $OUT/sim_analysis/summary.json $OUT/sim_score/score.json"
