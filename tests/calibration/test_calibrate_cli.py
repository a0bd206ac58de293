"""``python -m dstorm3d.calibrate``: outputs, the calibration file, and one-line refusals of bad stacks and
settings (the structural ones before the fit, the wrong z step after it), in-process and as a real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import REPO_ROOT
from helpers_hydra import composed

from dstorm3d.calibrate import calibrate
from dstorm3d.calibration.report import FIGURES, REPORT_JSON, REPORT_MD
from dstorm3d.calibration.synthetic import bead_stack, random_aberration
from dstorm3d.errors import UserInputError
from dstorm3d.optics.masks import aperture_support
from dstorm3d.optics.psf_model import ScalarPupilPSF, load_psf
from dstorm3d.optics.setup import OpticalSetup

STEP_UM = 0.04
FOCUS = 20  # 0-based slice at z = NFP
#: A quick fit of the small stacks: 48-sample pupil grid, 17-px windows, Zernike up to Noll 11.
FAST = [
    "camera=ideal",
    "optics.pupil_grid=48",
    "window_px=17",
    "fit.max_noll=11",
    "fit.amplitude_terms=0",
    "fit.iterations=100",
    "threads=1",
]


def setup() -> OpticalSetup:
    return OpticalSetup(
        wavelength_um=0.66,
        na=1.49,
        n_immersion=1.518,
        n_sample=1.518,
        camera_pixel_um=16.0,
        magnification=160.0,
        nfp_um=1.0,
        z_range_um=(0.2, 1.8),
        pupil_grid=48,
        aperture="objective",
    )


def write_stack(path: Path, counts: np.ndarray, spacing_um: float | None = STEP_UM) -> Path:
    """An ImageJ TIFF (z spacing in µm unless ``None``)."""
    metadata = {"axes": "ZYX"[-counts.ndim :], "unit": "um"}
    if spacing_um is not None:
        metadata["spacing"] = spacing_um
    tifffile.imwrite(path, counts, imagej=True, metadata=metadata)
    return path


@pytest.fixture(scope="module")
def counts() -> np.ndarray:
    """``(41, 64, 64)`` photon counts (ideal camera) of 3 astigmatic beads, 40 nm steps, focus at slice 21."""
    rng = np.random.default_rng(3)
    optics = setup()
    phase, _ = random_aberration(optics.pupil_grid, optics.zernike_radius_px, [5, 6, 7, 8, 11], 0.8, rng)
    truth = ScalarPupilPSF(optics, phase * aperture_support(optics), None, 1.0)
    z = optics.nfp_um + (np.arange(41) - FOCUS) * STEP_UM
    rowcol = np.array([[15.2, 16.4], [16.7, 47.9], [44.1, 30.3]])
    return bead_stack(truth, rowcol, z, (64, 64), 20000.0, 5.0, 31, rng)


@pytest.fixture()
def stack_file(counts, tmp_path) -> Path:
    return write_stack(tmp_path / "beads.tif", counts.astype(np.uint16))


def run(args: list[str], out: Path) -> dict:
    with composed("calibrate.yaml", [*args, f"out={out}"], out.parent) as cfg:
        return calibrate(cfg)


def test_calibrate_writes_the_calibration_file_and_report(stack_file, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "cal"
    record = run([f"beads={stack_file}", *FAST], out)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [*FIGURES, REPORT_JSON, REPORT_MD, "psf.npz"]
    )
    model, metadata = load_psf(out / "psf.npz")
    assert model.setup.pupil_grid == 48 and model.setup.name == "smlm2016_as"
    assert metadata["model"]["z_step_nm"] == pytest.approx(40.0)  # from the TIFF's ImageJ spacing
    assert set(metadata["model"]["zernike_rad"]) == {str(j) for j in range(5, 12)}
    assert len(metadata["beads_table"]) == 3 and metadata["statistics"]["dof"] > 0
    # the fitted focus within a slice of the truth; the fit explains the stack (measured: focus slice 20.98
    # for 21, deviance/dof 1.011, per-slice correlation ≥ 0.9961 within ±600 nm)
    assert abs(metadata["model"]["focus_slice"] - (FOCUS + 1)) < 0.3
    assert record["statistics"]["deviance_per_dof"] < 1.03
    assert record["correlation"]["min_correlation_within"] > 0.993
    saved = json.loads((out / REPORT_JSON).read_text())
    assert saved["command"].startswith("python -m dstorm3d.calibrate beads=")
    assert "deviance/dof" in capsys.readouterr().out
    with pytest.raises(UserInputError, match="overwrite=true"):
        run([f"beads={stack_file}", *FAST], out)


def test_given_focus_slice_fits_defocus_and_reference_positions_align_the_origin(stack_file, tmp_path):
    torch.set_num_threads(1)
    # reference positions 30 nm right of and 50 nm below the truth's corner-convention positions
    truth_nm = (np.array([[15.2, 16.4], [16.7, 47.9], [44.1, 30.3]]) + 0.5) * 100
    csv = tmp_path / "positions.csv"
    csv.write_text(
        "bead,x_nm,y_nm\n" + "".join(f"{i},{x + 30},{y + 50}\n" for i, (y, x) in enumerate(truth_nm))
    )
    out = tmp_path / "cal"
    args = [f"beads={stack_file}", *FAST, f"focus_slice={FOCUS + 1}", f"reference_positions={csv}"]
    record = run([*args, "align_to_reference=true"], out)
    reference = record["reference_positions"]
    # measured: offset (30.1, 50.2) nm read as corner, spread 0.2 nm
    assert reference["convention"] == "corner"
    assert np.allclose(reference["mean_offset_nm_if_corner"], [30, 50], atol=2)
    assert "4" in record["model"]["zernike_rad"] and record["model"]["focus_slice"] == FOCUS + 1
    table = np.array([[b["x_nm"], b["y_nm"]] for b in record["beads_table"]])
    expected = np.array([[x + 30, y + 50] for y, x in truth_nm])
    assert np.abs(np.sort(table, axis=0) - np.sort(expected, axis=0)).max() < 3  # aligned onto the reference


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no beads", "beads="),
        ("saturated", "the bead at row"),
        ("2-D image", "beads="),
        ("no z step", "beads="),
        ("focus outside", "focus_slice=99 is outside the stack's slices 1 … 41"),
    ],
)
def test_bad_stacks_are_refused_before_the_fit(case, expected, counts, tmp_path, monkeypatch):
    import dstorm3d.calibration.run as pipeline

    def no_fit(*args, **kwargs):
        raise AssertionError("the fit ran")

    monkeypatch.setattr(pipeline, "fit_bead_stack", no_fit)
    rng = np.random.default_rng(0)
    extra: list[str] = []
    if case == "no beads":
        path = write_stack(tmp_path / "s.tif", rng.poisson(5.0, counts.shape).astype(np.uint16))
    elif case == "saturated":
        path = write_stack(tmp_path / "s.tif", np.clip(counts, 0, 255).astype(np.uint8))
    elif case == "2-D image":
        path = write_stack(tmp_path / "s.tif", counts[0].astype(np.uint16))
    elif case == "no z step":
        path = write_stack(tmp_path / "s.tif", counts.astype(np.uint16), spacing_um=None)
    else:
        path = write_stack(tmp_path / "s.tif", counts.astype(np.uint16))
        extra = ["focus_slice=99"]
    out = tmp_path / "cal"
    with pytest.raises(UserInputError) as error:
        run([f"beads={path}", *FAST, *extra], out)
    message = str(error.value)
    assert message.startswith(expected) and "\n" not in message
    if case == "no beads":
        assert "no bead found" in message
    if case == "saturated":
        assert "saturates the camera" in message and "255 ADU" in message
    if case == "2-D image":
        assert "needs shape (slices, height, width)" in message
    if case == "no z step":
        assert "z_step_nm" in message
    assert not out.exists() or list(out.iterdir()) == []


def test_a_wrong_z_step_is_refused_after_the_fit(stack_file, tmp_path):
    """The stack's step is 40 nm; told 400 nm, the fitted step scale (measured 0.091) leaves [0.5, 2]."""
    torch.set_num_threads(1)
    out = tmp_path / "cal"
    with pytest.raises(UserInputError) as error:
        run([f"beads={stack_file}", *FAST, "z_step_nm=400", "fit.iterations=20"], out)
    assert str(error.value).startswith("the fitted z-step scale is")
    assert "z_step_nm" in str(error.value)
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize(
    "override, expected",
    [
        ("window_px=3", "window_px=3: must be a whole number ≥ 7"),
        ("psf_file=psf.txt", "psf_file='psf.txt': must be a file name ending in .npz"),
        ("align_to_reference=true", "align_to_reference=true needs reference_positions"),
        ("fit.max_noll=4", "fit.max_noll=4: must be a whole number ≥ 5"),
        ("step_scale_range=[1.5,2]", "step_scale_range=[1.5, 2]: must be [lo, hi] with 0 < lo ≤ 1 ≤ hi"),
        ("camera=checkpoint", "camera.kind must be one of"),
        ("z_step_nm=0", "z_step_nm=0: must be the stage step"),
    ],
)
def test_bad_settings_are_refused_before_the_stack_is_read(
    override, expected, stack_file, tmp_path, monkeypatch
):
    import dstorm3d.calibration.beads as bead_tools

    def no_read(*args, **kwargs):
        raise AssertionError("the stack was read")

    monkeypatch.setattr(bead_tools, "read_bead_stack", no_read)
    with pytest.raises(UserInputError) as error:
        run([f"beads={stack_file}", override], tmp_path / "cal")
    assert str(error.value).startswith(expected), str(error.value)


@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            "DSTORM3D_LOG_DIR": str(tmp_path / "logs"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1",
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "dstorm3d.calibrate", "beads=nowhere.tif", "out=cal"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: beads=nowhere.tif: no such file")
