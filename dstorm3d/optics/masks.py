"""Phase masks: built-in (clear, Tetrapod, Zernike), loading, fitting to a setup's pupil grid, saving.

A phase mask is a real ``(N, N)`` float64 array in radians, centred at index ``N // 2``, one value per
pupil sample of the setup (see :mod:`dstorm3d.optics.setup`). Values outside the aperture are ignored by
the renderer; built-in masks are exactly zero there, as are the paper's masks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dstorm3d.errors import UserInputError
from dstorm3d.utils.files import atomic_write

from .setup import OpticalSetup
from .zernike import TETRAPOD_COEFFICIENTS, pupil_polar_grid, zernike_phase


class MaskError(UserInputError):
    """A phase-mask file or array that cannot be used with the requested setup."""


MASK_SUFFIXES = (".npy", ".tif", ".tiff", ".mat")


# ---------------------------------------------------------------------------------------- built-ins
def aperture_support(setup: OpticalSetup) -> np.ndarray:
    """``(N, N)`` bool: pupil samples inside the aperture (ρ < ρ_max)."""
    rho, _ = pupil_polar_grid(setup.pupil_grid, setup.pupil_radius_px)
    return rho < 1.0


def clear_mask(setup: OpticalSetup) -> np.ndarray:
    """No phase modulation: the standard (astigmatism-free) PSF."""
    return np.zeros((setup.pupil_grid, setup.pupil_grid), dtype=np.float64)


def zernike_mask(setup: OpticalSetup, coefficients: dict[int, float]) -> np.ndarray:
    """Σ a_j·Z_j (Noll, rad) on the water-limited unit disc of ``setup``, zero outside the aperture."""
    phase = zernike_phase(coefficients, setup.pupil_grid, setup.zernike_radius_px)
    return np.where(aperture_support(setup), phase, 0.0)


def tetrapod_mask(setup: OpticalSetup) -> np.ndarray:
    """The paper's 4 µm model Tetrapod for any setup (15 Noll coefficients, reference.md §3)."""
    return zernike_mask(setup, TETRAPOD_COEFFICIENTS)


BUILTIN_MASKS: dict[str, Callable[[OpticalSetup], np.ndarray]] = {
    "clear": clear_mask,
    "tetrapod": tetrapod_mask,
}


# ---------------------------------------------------------------------------------------- loading
def read_mask_file(path: str | Path, variable: str | None = None) -> np.ndarray:
    """Read a 2-D real phase array (rad) from ``.mat`` (the single non-``__`` array variable, or
    ``variable``), ``.npy`` or ``.tif``/``.tiff``."""
    path = Path(path)
    if not path.is_file():
        raise MaskError(
            f"phase-mask file not found: {path} (give an existing .npy, .tif or .mat file, or "
            f"one of the built-ins {sorted(BUILTIN_MASKS)})"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        elif suffix == ".mat":
            from scipy.io import loadmat

            contents = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
            arrays = {
                k: v
                for k, v in contents.items()
                if isinstance(v, np.ndarray)
                and v.ndim == 2
                and np.issubdtype(v.dtype, np.number)
                and min(v.shape) > 1
            }
            if variable is not None:
                if variable not in arrays:
                    raise MaskError(
                        f"{path} has no 2-D numeric variable {variable!r}; it has {sorted(arrays)}"
                    )
                array = arrays[variable]
            elif len(arrays) != 1:
                raise MaskError(
                    f"{path} holds {len(arrays)} 2-D numeric variables {sorted(arrays)}; "
                    "name the phase mask with variable=<name>"
                )
            else:
                array = next(iter(arrays.values()))
        else:
            raise MaskError(
                f"unsupported phase-mask format {suffix!r} for {path}: use one of {MASK_SUFFIXES}"
            )
    except MaskError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear line
        raise MaskError(f"could not read phase mask {path}: {exc}") from None
    array = np.asarray(array)
    if np.iscomplexobj(array):
        raise MaskError(f"{path} holds a complex array; a phase mask must be real phase in radians")
    array = np.squeeze(array).astype(np.float64)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise MaskError(
            f"{path} holds an array of shape {array.shape}; a phase mask must be square 2-D (N, N)"
        )
    if not np.all(np.isfinite(array)):
        raise MaskError(f"{path} contains NaN or infinite values; a phase mask must be finite radians")
    return array


def support_radius(mask: np.ndarray) -> float | None:
    """Radius (samples, from index N//2) of the mask's non-zero support, or ``None`` if it has none."""
    nonzero = mask != 0
    if not nonzero.any() or nonzero.all():
        return None
    c = mask.shape[0] // 2
    rows, cols = np.nonzero(nonzero)
    return float(np.hypot(rows - c, cols - c).max())


def _center_crop_or_pad(mask: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size, size), dtype=np.float64)
    src_c, dst_c = mask.shape[0] // 2, size // 2
    half = min(src_c, dst_c, mask.shape[0] - src_c - 1, size - dst_c - 1)
    out[dst_c - half : dst_c + half + 1, dst_c - half : dst_c + half + 1] = mask[
        src_c - half : src_c + half + 1, src_c - half : src_c + half + 1
    ]
    return out


def resample_mask(mask: np.ndarray, size: int, scale: float) -> np.ndarray:
    """Resample a phase mask onto a ``size²`` grid where one source sample spans ``scale`` target samples.

    Interpolates the complex field ``exp(iφ)`` (bilinear) so wrapped phase jumps do not smear.
    """
    from scipy.ndimage import map_coordinates

    c_dst, c_src = size // 2, mask.shape[0] // 2
    grid = (np.arange(size, dtype=np.float64) - c_dst) / scale + c_src
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    field = np.exp(1j * mask)
    re = map_coordinates(field.real, [rows, cols], order=1, mode="constant", cval=1.0)
    im = map_coordinates(field.imag, [rows, cols], order=1, mode="constant", cval=0.0)
    return np.angle(re + 1j * im)


def fit_mask_to_setup(
    mask: np.ndarray, setup: OpticalSetup, resample: bool = False, source: str = "phase mask"
) -> np.ndarray:
    """Place a mask on the setup's pupil grid, or raise a :class:`MaskError` naming the fix.

    * Same grid size and a support that matches the aperture: used as is.
    * Same pupil scale (support radius within 1.5 samples of the setup's) but another grid size: centre
      crop or zero pad.
    * Anything else: resampled by the ratio of pupil radii when ``resample`` is true, else rejected.
    """
    n, radius = setup.pupil_grid, setup.pupil_radius_px
    if not setup.has_4f and mask.shape[0] != n:
        raise MaskError(
            f"{source} is {mask.shape[0]}×{mask.shape[1]}, but setup '{setup.name}' has no 4f system "
            f"(optics.f4f_mm is null), so a mask must be on its {n}×{n} pupil grid already: save it on "
            f"that grid, or set optics.pupil_grid={mask.shape[0]}"
        )
    mask_radius = support_radius(mask)
    if mask_radius is None:
        if mask.shape[0] == n:
            return mask.copy()
        raise MaskError(
            f"{source} is {mask.shape[0]}×{mask.shape[1]} without a zero border to tell its pupil "
            f"scale, and setup '{setup.name}' needs {n}×{n}: save it on the setup's grid"
        )
    # Masks are drawn on the water-limited disc; compare with that radius when the aperture is larger.
    expected = min(radius, setup.zernike_radius_px) if setup.aperture == "objective" else radius
    same_scale = abs(mask_radius - expected) <= 1.5
    if same_scale:
        return mask.copy() if mask.shape[0] == n else _center_crop_or_pad(mask, n)
    if resample and not setup.has_4f:
        raise MaskError(
            f"{source} (pupil radius {mask_radius:.1f} samples) does not match setup '{setup.name}' (pupil "
            f"radius {expected:.1f} samples), and without a 4f system (optics.f4f_mm is null) it is not "
            "resampled: save the mask on the setup's pupil grid and aperture"
        )
    if resample:
        return resample_mask(mask, n, scale=expected / mask_radius)
    raise MaskError(
        f"{source} ({mask.shape[0]}×{mask.shape[1]}, pupil radius {mask_radius:.1f} samples) does not match "
        f"setup '{setup.name}' ({n}×{n}, pupil radius {expected:.1f} samples): use the setup the mask was "
        "made for, or set optics.resample_mask=true to resample it onto this pupil"
    )


def load_phase_mask(
    spec: str | Path, setup: OpticalSetup, resample: bool = False, variable: str | None = None
) -> np.ndarray:
    """A mask for ``setup`` from a built-in name (``clear``, ``tetrapod``) or a file path."""
    if isinstance(spec, str) and spec in BUILTIN_MASKS:
        return BUILTIN_MASKS[spec](setup)
    mask = read_mask_file(spec, variable=variable)
    return fit_mask_to_setup(mask, setup, resample=resample, source=str(spec))


# ---------------------------------------------------------------------------------------- saving
def mask_sample_um(setup: OpticalSetup) -> float | None:
    """One pupil sample of the mask array in the mask (SLM) plane, µm: ``λ·f_4f / (N·Δ_camera)``
    (the SLM pixel at the natural grid); ``None`` without a 4f system."""
    if not setup.has_4f:
        return None
    return setup.mask_pixel_um / setup.mask_scale


def save_phase_mask(
    mask: np.ndarray, path: str | Path, setup: OpticalSetup | None = None, overwrite: bool = False
) -> Path:
    """Save a phase mask (rad) as ``.npy``, ``.tif`` or ``.mat`` (float64, bit-exact round trip).

    With ``setup``, its parameters go into the file (``.mat`` variable ``dstorm3d_setup``, the TIFF's
    ImageJ Info property) or a ``<name>.json`` sidecar for ``.npy``. The TIFF is an ImageJ image whose
    pixel is one pupil sample in the mask plane (:func:`mask_sample_um`; ``unit=pixel`` without a setup).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    mask = np.ascontiguousarray(mask, dtype=np.float64)
    meta = json.dumps({"optical_setup": setup.to_dict()}) if setup is not None else None
    if suffix == ".npy":

        def write(p: Path) -> None:
            with open(p, "wb") as fh:
                np.save(fh, mask, allow_pickle=False)
    elif suffix in (".tif", ".tiff"):
        from dstorm3d.utils.tiff import imagej_tiff_writer

        # pixels are pupil samples in the mask (SLM) plane: µm with a setup, unit=pixel without one
        pixel_um = mask_sample_um(setup) if setup is not None else None
        info: dict[str, Any] = {"unit": "rad", "pixel_size_um": pixel_um}
        if setup is not None:
            info["optical_setup"] = setup.to_dict()
        write = imagej_tiff_writer(mask, pixel_um, "YX", info=info)
    elif suffix == ".mat":

        def write(p: Path) -> None:
            from scipy.io import savemat

            data: dict[str, Any] = {"phase_mask": mask}
            if meta is not None:
                data["dstorm3d_setup"] = meta
            savemat(p, data)
    else:
        raise MaskError(f"unsupported phase-mask format {suffix!r} for {path}: use one of {MASK_SUFFIXES}")
    atomic_write(path, write, overwrite=overwrite)
    if suffix == ".npy" and meta is not None:
        atomic_write(path.with_suffix(".json"), lambda p: p.write_text(meta), overwrite=True)
    return path
