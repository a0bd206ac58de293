"""The mask orientation convention, checked against real data.

Re-render the authors' own localizations of a real mito frame (their network, their printed Tetrapod)
with our model and fit each emitter's brightness and a background plane by non-negative least squares.
The model's transform sign decides whether a mask array is seen as is or rotated by 180°; the right
convention must explain the real frame clearly better than the rotated one.
"""

from __future__ import annotations

import csv

import numpy as np
import tifffile
import torch
from conftest import shared_path
from scipy.optimize import nnls

from dstorm3d.optics.masks import load_phase_mask
from dstorm3d.optics.pupil import PupilModel
from dstorm3d.optics.render import render_frames
from dstorm3d.optics.setup import storm_setup


def explained_variance(mask: np.ndarray, image: np.ndarray, xyz_um: np.ndarray) -> float:
    setup = storm_setup()
    pupil = PupilModel(setup, mask, dtype=torch.float64)
    xyz = torch.tensor(xyz_um)
    one = torch.tensor([1.0], dtype=torch.float64)
    columns = [
        render_frames(pupil, xyz[i : i + 1], one, torch.tensor([0]), 1, image.shape, blur_sigma_px=1.0)[0]
        .numpy()
        .ravel()
        for i in range(len(xyz))
    ]
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]] / image.shape[0]
    plane = [np.ones(image.size), rows.ravel(), cols.ravel()]
    design = np.stack(columns + plane + [-p for p in plane], axis=1)
    coefficients, _ = nnls(design, image.ravel(), maxiter=5000)
    residual = image.ravel() - design @ coefficients
    return 1.0 - float((residual**2).sum() / ((image - image.mean()) ** 2).sum())


def test_printed_tetrapod_explains_the_real_frame_in_our_orientation():
    mask = load_phase_mask(shared_path("masks", "mask_tetrapod_printed.mat"), storm_setup())
    frame = tifffile.imread(shared_path("experimental", "mito_tetrapod", "01.tif")).astype(np.float64)
    crop = frame[100:228, 200:328]  # the region of the reference crop file
    with open(shared_path("reference", "mito_frames01-03_crop.csv")) as fh:
        locs = np.array(
            [
                [float(r["x_nm"]) / 1e3, float(r["y_nm"]) / 1e3, float(r["z_nm"]) / 1e3]
                for r in csv.DictReader(fh)
                if int(float(r["frame"])) == 1
            ]
        )
    ours = explained_variance(mask, crop, locs)
    rotated = explained_variance(mask[::-1, ::-1].copy(), crop, locs)
    negated = explained_variance(-mask, crop, locs)  # ≈ the axial direction reversed
    assert ours > 1.5 * rotated and ours > 1.5 * negated
