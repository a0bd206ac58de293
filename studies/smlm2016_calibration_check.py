"""Check a PSF calibration of the SMLM 2016 AS beads against the challenge's own ground truth.

    python studies/smlm2016_calibration_check.py studies/results/smlm2016_calibration/smlm2016_as_psf.npz

Fits every ground-truth emitter of the 64 MT0.N1.LD frames (../shared/data/external/smlm2016/mt0_n1_ld_as)
with the calibrated PSF (dstorm3d.evaluation.fitting.fit_emitters: Poisson ML, 15-px windows, overlapping
emitters jointly, started at the truth) and prints the median lateral and axial offsets fitted − truth of
the emitters above 2000 photons, their spread, and the straight line z_fit = a·z_truth + b: a calibration
whose z axis and lateral origin are the challenge's gives offsets near 0 and a ≈ 1.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import tifffile
import torch

from dstorm3d.evaluation.fitting import fit_emitters
from dstorm3d.optics.psf_model import load_psf
from dstorm3d.simulation.camera import camera_from_config
from dstorm3d.utils.paths import shared_data_dir

FRAMES = "external/smlm2016/mt0_n1_ld_as/frames_0001-0064.tif"
TRUTH = "external/smlm2016/mt0_n1_ld_as/ground_truth_0001-0064.csv"
CAMERA = "configs/camera/smlm2016_emccd.yaml"
MIN_PHOTONS = 2000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("psf", help="calibration file (.npz) written by python -m dstorm3d.calibrate")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import yaml

    from dstorm3d.utils.paths import REPO_ROOT

    psf, _ = load_psf(args.psf)
    camera = camera_from_config(yaml.safe_load((REPO_ROOT / CAMERA).read_text()))
    counts = tifffile.imread(shared_data_dir() / FRAMES).astype(np.float64)
    frames = camera.to_photons(torch.as_tensor(counts)).numpy()
    truth = np.genfromtxt(shared_data_dir() / TRUTH, delimiter=",", names=True)
    nfp_nm = psf.setup.nfp_um * 1e3
    starts = []
    for frame in range(frames.shape[0]):
        rows = truth[truth["frame"] == frame + 1]
        starts.append(np.stack([rows["x_nm"], rows["y_nm"], rows["z_nm"] + nfp_nm], axis=1) / 1e3)
    z_range = (psf.setup.nfp_um - 0.85, psf.setup.nfp_um + 0.85)
    fitted = fit_emitters(psf, frames, starts, window=15, joint=True, z_range_um=z_range).emitters.xyz.numpy()

    offsets, truth_z = [], []
    for frame in range(frames.shape[0]):
        rows = truth[truth["frame"] == frame + 1]
        for slot, row in enumerate(rows):
            if row["photons"] <= MIN_PHOTONS:
                continue
            x, y, z = fitted[frame, slot] * 1e3
            offsets.append((x - row["x_nm"], y - row["y_nm"], z - nfp_nm - row["z_nm"]))
            truth_z.append(row["z_nm"])
    offsets, truth_z = np.asarray(offsets), np.asarray(truth_z)
    design = np.stack([truth_z, np.ones_like(truth_z)], axis=1)
    slope, intercept = np.linalg.lstsq(design, offsets[:, 2] + truth_z, rcond=None)[0]
    print(
        json.dumps(
            {
                "psf": args.psf,
                "emitters": int(len(offsets)),
                "min_photons": MIN_PHOTONS,
                "median_offset_nm_xyz": np.round(np.median(offsets, axis=0), 1).tolist(),
                "std_nm_xyz": np.round(offsets.std(axis=0), 1).tolist(),
                "z_fit_vs_truth": {
                    "slope": round(float(slope), 4),
                    "intercept_nm": round(float(intercept), 1),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
