"""The calibration pipeline behind ``python -m dstorm3d.calibrate``: stack → beads → fit → checks → files.

Every structural problem of a stack (not a z-stack, no usable bead, a saturated bead, no z step, a focus
slice outside the stack) is refused before the fit; a fit whose z step scale or focus says the stack's z
step is wrong is refused after it, and then nothing is written.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dstorm3d.errors import UserInputError
from dstorm3d.evaluation.report import json_safe
from dstorm3d.optics.crlb import crlb
from dstorm3d.optics.psf_model import ScalarPupilPSF, save_psf
from dstorm3d.simulation.camera import Camera

from . import beads as bead_tools
from . import report
from .fit import (
    BeadStackModel,
    FitSettings,
    StackData,
    expected_windows,
    fit_bead_stack,
    fitted_psf,
    free_parameter_count,
    lateral_shift_phase,
    zernike_decomposition,
)
from .settings import CalibrationSettings

log = logging.getLogger(__name__)
NM_PER_UM = 1000.0


class CalibrationError(UserInputError):
    """A bead stack whose fit says its z step or focus is wrong."""


@dataclass
class Calibration:
    """What a calibration produced: the PSF model, the fitted model, the record written to report.json."""

    psf: ScalarPupilPSF
    model: BeadStackModel
    record: dict[str, Any]
    data: np.ndarray
    expected: np.ndarray


def excess_noise_factor(settings: CalibrationSettings, camera: Camera) -> float:
    """F²: the setting, else 2 for an EMCCD with gain > 1 and 1 for every other camera."""
    if settings.excess_noise is not None:
        return settings.excess_noise
    return 2.0 if camera.kind == "emccd" and getattr(camera, "em_gain", 1.0) > 1 else 1.0


def slice_selection(settings: CalibrationSettings, total: int, reference: float) -> np.ndarray:
    """0-based slices to fit: within ``settings.slices``, every ``slice_stride``-th, one of them the
    reference slice's nearest whole slice. Raises when the range leaves the stack."""
    first, last = settings.slices or (1, total)
    if last > total:
        raise UserInputError(f"slices=[{first}, {last}]: the stack has {total} slices")
    lo, hi = first - 1, last - 1
    anchor = int(round(reference))
    chosen = np.arange(lo + (anchor - lo) % settings.slice_stride, hi + 1, settings.slice_stride)
    if len(chosen) < 3:
        raise UserInputError(
            f"slices and slice_stride={settings.slice_stride} "
            f"leave {len(chosen)} slices: at least 3 are needed"
        )
    return chosen


def check_stack(settings: CalibrationSettings, stack: bead_tools.BeadStack) -> float:
    """The z step (µm) to use; refuses a missing step and a focus slice outside the stack."""
    total = stack.counts.shape[0]
    if settings.focus_slice is not None and not 1 <= settings.focus_slice <= total:
        raise UserInputError(
            f"focus_slice={settings.focus_slice:g} is outside the stack's slices 1 … {total}"
        )
    if settings.z_step_nm is not None:
        return settings.z_step_nm / NM_PER_UM
    if stack.z_step_um is None:
        raise UserInputError(
            f"beads={stack.path}: the TIFF has no z spacing (ImageJ "
            "calibration): give z_step_nm=<stage step in nm>"
        )
    return stack.z_step_um


def prepare(
    settings: CalibrationSettings, stack: bead_tools.BeadStack, camera: Camera, z_step_um: float
) -> tuple[StackData, bead_tools.BeadWindows]:
    """Photons, beads, slices and starting values."""
    photons = camera.to_photons(torch.as_tensor(stack.counts)).double().numpy()
    saturation = settings.saturation_adu if settings.saturation_adu is not None else stack.integer_max
    windows = bead_tools.bead_windows(
        stack,
        photons,
        settings.window_px,
        settings.min_snr,
        settings.min_separation_px,
        saturation,
        settings.max_beads,
    )
    guess = bead_tools.focus_guess(windows.photons)
    reference = guess if settings.focus_slice is None else settings.focus_slice - 1
    slices = slice_selection(settings, stack.counts.shape[0], reference)
    chosen = windows.photons[:, slices]
    background = bead_tools.background_guess(chosen)
    signal = (chosen - background[:, None, None, None]).sum(axis=(-2, -1)).mean(axis=1)
    data = StackData(
        photons=chosen,
        corners=windows.corners,
        slices=slices,
        z_step_um=z_step_um,
        reference_slice=float(reference),
        start_rowcol=bead_tools.initial_positions(windows.photons, int(round(reference))),
        start_photons=np.clip(signal, 1.0, None),
        start_background=background,
    )
    return data, windows


def check_fit(settings: CalibrationSettings, model: BeadStackModel, total: int, z_step_um: float) -> None:
    """Refuse a fit whose step scale or focus says the stack's z step is wrong."""
    scale = float(model.step_scale().detach())
    lo, hi = settings.step_scale_range
    if not lo <= scale <= hi:
        raise CalibrationError(
            f"the fitted z-step scale is {scale:.3g} (outside "
            f"step_scale_range=[{lo:g}, {hi:g}]): the stack's z "
            f"step of {z_step_um * NM_PER_UM:g} nm is probably wrong; give the stage step as z_step_nm"
        )
    focus = model.focus_slice() + 1
    if not 1 <= focus <= total:
        raise CalibrationError(
            f"the fitted focus lies at slice {focus:.1f}, outside the stack's slices 1 … {total}: the z step "
            f"({z_step_um * NM_PER_UM:g} nm) or the stack is wrong, or give focus_slice"
        )


def bead_table(
    model: BeadStackModel, data: np.ndarray, mu: np.ndarray, excess_noise: float
) -> list[dict[str, Any]]:
    """One row per bead: position (nm from the frame's top-left corner), photons, background, fit."""
    from .fit import poisson_deviance

    pixel_nm = model.setup.pixel_size_um * NM_PER_UM
    with torch.no_grad():
        rowcol = model.positions_px().numpy()
        photons = model.photons().numpy().mean(axis=1)
        background = torch.exp(model.log_background).numpy().mean(axis=1)
    deviance = poisson_deviance(data, mu, excess_noise).mean(axis=(1, 2, 3))
    return [
        {
            "bead": index + 1,
            "x_nm": float((rowcol[index, 1] + 0.5) * pixel_nm),
            "y_nm": float((rowcol[index, 0] + 0.5) * pixel_nm),
            "photons": float(photons[index]),
            "background": float(background[index]),
            "deviance_per_pixel": float(deviance[index]),
        }
        for index in range(len(rowcol))
    ]


def model_record(
    model: BeadStackModel, psf: ScalarPupilPSF, z_step_um: float, nominal_focus: float | None
) -> dict[str, Any]:
    """The fitted optical numbers: Zernike decomposition of the calibrated phase, amplitude, blur, z axis."""
    settings = model.settings
    first = 4 if not settings.fit_focus else 5
    noll = list(range(first, max(settings.max_noll, first) + 1))
    zernike = zernike_decomposition(psf.phase, psf.setup, noll)
    scale = float(model.step_scale().detach())
    focus = model.focus_slice() + 1
    nominal = focus if nominal_focus is None else nominal_focus
    return {
        "zernike_rad": {str(j): v for j, v in zernike.items()},
        "zernike_rms_rad": report.rms([v for j, v in zernike.items() if j >= 5]),
        "amplitude_log_coefficients": model.amplitude.detach().numpy().tolist(),
        "blur_sigma_px": psf.blur_sigma_px,
        "focus_slice": focus,
        "focus_fitted": settings.fit_focus,
        "z_step_nm": z_step_um * NM_PER_UM,
        "step_scale": scale,
        "step_scale_fitted": settings.fit_step_scale,
        "z_offset_nm": (nominal - focus) * z_step_um * scale * NM_PER_UM,
        "z_convention": (
            f"the beads at slice s (1-based) are at z = nfp_um + {scale:.5f} × (s − {focus:.3f}) × "
            f"{z_step_um * NM_PER_UM:g} nm in this PSF model (z "
            f"= nfp_um {psf.setup.nfp_um:g} µm at the focus "
            "slice)"
        ),
    }


def calibrate_stack(
    settings: CalibrationSettings,
    start: ScalarPupilPSF,
    camera: Camera,
    command: str,
) -> Calibration:
    """Read, check and fit; raises :class:`UserInputError` (or a subclass) on a bad stack or fit."""
    stack = bead_tools.read_bead_stack(settings.beads)
    z_step_um = check_stack(settings, stack)
    start.setup.check_window(settings.window_px)
    excess = excess_noise_factor(settings, camera)
    data, windows = prepare(settings, stack, camera, z_step_um)
    fit = FitSettings(**{**settings.fit.__dict__, "excess_noise": excess})
    if start.blur_sigma_px > 0:
        fit = FitSettings(**{**fit.__dict__, "initial_blur_px": start.blur_sigma_px})
    log.info(
        "fitting %d beads × %d slices (%d-px windows), Noll ≤ %d",
        *data.photons.shape[:2],
        settings.window_px,
        fit.max_noll,
    )
    model, trace = fit_bead_stack(start.setup, data, fit, start.replace(blur_sigma_px=0.0))
    total = stack.counts.shape[0]
    check_fit(settings, model, total, z_step_um)
    psf = fitted_psf(model, f"calibrated from {settings.beads.name}")
    mu = expected_windows(model)
    z_nm = model.z_relative_um().detach().numpy() * NM_PER_UM
    per_slice = report.slice_statistics(data.photons, mu, excess, z_nm)
    beads = bead_table(model, data.photons, mu, excess)
    references = None
    if settings.reference_positions is not None:
        references = report.compare_positions(
            beads, settings.reference_positions, psf.setup.pixel_size_um * NM_PER_UM
        )
        if settings.align_to_reference:
            psf, beads, references = align_to_reference(psf, beads, references)
    record: dict[str, Any] = {
        "beads": str(settings.beads),
        "command": command,
        "setup": psf.setup.to_dict(),
        "camera": camera.to_dict(),
        "excess_noise": excess,
        "pixel_nm": psf.setup.pixel_size_um * NM_PER_UM,
        "window_px": settings.window_px,
        "slices_total": total,
        "slices_used": int(len(data.slices)),
        "slice_numbers": (data.slices + 1).tolist(),
        "statistics": report.fit_statistics(data.photons, mu, excess, free_parameter_count(model)),
        "correlation": report.correlation_summary(per_slice),
        "per_slice": {key: value.tolist() for key, value in per_slice.items()},
        "model": model_record(model, psf, z_step_um, settings.focus_slice),
        "slice_photon_factor": model.slice_gain().detach().numpy().tolist(),
        "beads_table": beads,
        "rejected": list(windows.rejected),
        "fit_stages": trace.stages,
    }
    if references is not None:
        record["reference_positions"] = references
    record["crlb"] = crlb_record(psf, settings, excess > 1)
    return Calibration(psf, model, record, data.photons, mu)


def align_to_reference(
    psf: ScalarPupilPSF, beads: list[dict[str, Any]], references: dict[str, Any]
) -> tuple[ScalarPupilPSF, list[dict[str, Any]], dict[str, Any]]:
    """Move the model's lateral origin onto the reference positions' (their mean offset, as pupil tip and
    tilt): the bead table's positions then are the reference's, in its own convention."""
    offset_nm = references["mean_offset_nm_if_corner"]
    pixel_nm = psf.setup.pixel_size_um * NM_PER_UM
    shift_px = (offset_nm[0] / pixel_nm, offset_nm[1] / pixel_nm)
    aligned = psf.replace(phase=psf.phase + lateral_shift_phase(psf.setup, shift_px))
    moved = [
        {**bead, "x_nm": bead["x_nm"] + offset_nm[0], "y_nm": bead["y_nm"] + offset_nm[1]} for bead in beads
    ]
    note = (
        f"the model's origin was moved by ({offset_nm[0]:+.1f}, "
        f"{offset_nm[1]:+.1f}) nm (pupil tip/tilt) onto the "
        "reference's: localizations made with it are in the reference's convention"
    )
    return aligned, moved, {**references, "aligned": True, "alignment": note}


def crlb_record(psf: ScalarPupilPSF, settings: CalibrationSettings, emccd: bool) -> dict[str, Any]:
    """CRLB of x, y, z (nm) of the calibrated PSF over ``settings.crlb_z_nm`` (41 depths)."""
    z_nm = np.linspace(*settings.crlb_z_nm, 41)
    bounds = crlb(
        psf.pupil_model(torch.float64),
        psf.setup.nfp_um + z_nm / NM_PER_UM,
        settings.crlb_photons,
        settings.crlb_background,
        window=settings.window_px,
        emccd=emccd,
        blur_sigma_px=psf.blur_sigma_px or None,
    )
    return {
        "photons": settings.crlb_photons,
        "background": settings.crlb_background,
        "window_px": settings.window_px,
        "emccd": emccd,
        "z_nm": z_nm.tolist(),
        "x_nm": bounds["x_nm"].tolist(),
        "y_nm": bounds["y_nm"].tolist(),
        "sigma_z_nm": bounds["z_nm"].tolist(),
    }


def write_outputs(calibration: Calibration, settings: CalibrationSettings, folder: Path) -> list[Path]:
    """Figures, report.md/json, then the calibration file (last: a folder with it holds a whole result)."""
    record, data, mu = calibration.record, calibration.data, calibration.expected
    per_slice = {key: np.asarray(value) for key, value in record["per_slice"].items()}
    pick = report.pick_slices(data.shape[1], settings.montage_slices)
    pixel_um = calibration.psf.setup.pixel_size_um
    crlb_values = record["crlb"]
    figures = {
        "montage.png": report.montage_figure(data, mu, per_slice["z_nm"], pick, pixel_um),
        "residuals.png": report.residual_figure(data, mu, record["excess_noise"], per_slice, pick, pixel_um),
        "zernike.png": report.zernike_figure(
            {int(j): v for j, v in record["model"]["zernike_rad"].items()},
            f"calibrated pupil phase: RMS {record['model']['zernike_rms_rad']:.3f} rad (j ≥ 5)",
        ),
        "crlb.png": report.crlb_figure(
            np.asarray(crlb_values["z_nm"]),
            {"x_nm": crlb_values["x_nm"], "y_nm": crlb_values["y_nm"], "z_nm": crlb_values["sigma_z_nm"]},
            crlb_values["photons"],
            crlb_values["background"],
            crlb_values["emccd"],
        ),
    }
    written = report.write_report(folder, figures, record, settings.overwrite)
    metadata = {
        key: record[key]
        for key in (
            "beads",
            "command",
            "camera",
            "excess_noise",
            "statistics",
            "correlation",
            "model",
            "beads_table",
        )
    }
    if "reference_positions" in record:
        metadata["reference_positions"] = record["reference_positions"]
    target = folder / settings.psf_file
    if target.exists() and not settings.overwrite:
        raise FileExistsError(f"{target} exists: pass overwrite=true or choose another out=<folder>")
    # save_psf never replaces a file: write a fresh one beside it, then rename it over the old one
    partial = target.with_name(f".{target.stem}.partial{target.suffix}")
    partial.unlink(missing_ok=True)
    save_psf(partial, calibration.psf, json_safe(metadata))
    os.replace(partial, target)
    written.append(target)
    return written
