"""One description of a point-spread function, shared by everything that renders, fits or bounds it.

A PSF model says what light an emitter at ``(x, y, z)`` puts on the camera. Today's implementation is the
scalar pupil model (:class:`ScalarPupilPSF`): an optical setup, a pupil phase (a phase mask plus any
aberrations, rad), a pupil amplitude (apodisation) and a Gaussian blur σ (pixels) for everything the pupil
does not describe (finite bead size, residual defocus across the pixel, vibration). A vectorial model
would be a second implementation of :class:`PSFModel`.

Plain data in and out: :meth:`PSFModel.to_dict` gives numbers, strings and nested lists only, for
checkpoints (loadable with ``torch.load(weights_only=True)``); :func:`save_psf` / :func:`load_psf` write and
read a calibration file (``.npz``, no pickles) that ``optics.pupil=<file>`` accepts.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dstorm3d.errors import UserInputError
from dstorm3d.utils.files import atomic_write

from .pupil import PupilModel
from .render import filter_patches, intensity_filter
from .setup import OpticalSetup

#: Suffix of a calibration file.
PSF_FILE_SUFFIX = ".npz"
#: Format version written into every file; readers refuse newer ones.
PSF_FILE_VERSION = 1


class PSFFileError(UserInputError):
    """A PSF (calibration) file that cannot be read or does not fit the requested setup."""


class PSFModel(ABC):
    """What every PSF model offers. Positions are in µm (x, y from the frame's top-left corner, z above
    the coverslip), photons per emitter; PSFs are expected photons per camera pixel."""

    kind: str
    setup: OpticalSetup
    blur_sigma_px: float

    @abstractmethod
    def pupil_model(self, dtype: torch.dtype = torch.float32, learnable: bool = False) -> PupilModel:
        """The differentiable renderer of this PSF without its blur (blur: :attr:`blur_sigma_px`)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Plain data (numbers, strings, nested lists) from which :func:`psf_from_dict` rebuilds the model."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """A short JSON-able record of the model for reports (no arrays)."""

    def zstack(self, z_um: np.ndarray | Tensor, window: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """``(Z, P, P)`` PSFs per photon of an emitter at the centre of pixel ``(P//2, P//2)``, blurred."""
        pupil = self.pupil_model(dtype)
        with torch.no_grad():
            stack = pupil.psf_zstack(z_um, window)
            return blur_images(stack, self.blur_sigma_px)

    def psf_on_grid(
        self,
        xyz_um: Tensor,
        corner: Tensor,
        shape: tuple[int, int],
        photons: Tensor | None = None,
    ) -> Tensor:
        """Blurred PSFs ``(E, H, W)`` of emitters ``xyz_um (E, 3)`` µm on pixel grids whose top-left pixels
        are ``corner`` (``(E, 2)`` or ``(2,)`` row, column), per photon or times ``photons (E,)``; in the
        dtype and on the device of ``xyz_um``, differentiable w.r.t. positions and photons. The blur is
        circular over each grid (exact for a whole DFT period; see :func:`blur_images`)."""
        pupil = self.pupil_model(xyz_um.dtype).to(xyz_um.device)
        return blur_images(pupil.psf_on_grid(xyz_um, corner, shape, photons=photons), self.blur_sigma_px)


class ScalarPupilPSF(PSFModel):
    """The scalar pupil model: setup + pupil phase + pupil amplitude + Gaussian blur.

    Args:
        setup: the optical setup (pupil grid N).
        phase: ``(N, N)`` pupil phase (rad): the phase mask and any aberrations; ``None`` = clear pupil.
        amplitude: ``(N, N)`` relative pupil amplitude (≥ 0) inside the aperture; ``None`` = uniform.
            Only its shape matters (it is normalised to a mean square of 1 on the aperture).
        blur_sigma_px: Gaussian blur σ of the intensity (camera pixels), ≥ 0.
        label: where the model came from (a mask name, a calibration file), for reports.
    """

    kind = "scalar_pupil"

    def __init__(
        self,
        setup: OpticalSetup,
        phase: np.ndarray | Tensor | None = None,
        amplitude: np.ndarray | Tensor | None = None,
        blur_sigma_px: float = 0.0,
        label: str = "",
    ) -> None:
        n = setup.pupil_grid
        self.setup = setup
        self.phase = _grid_array(phase, n, "phase", default=0.0)
        self.amplitude = None if amplitude is None else _grid_array(amplitude, n, "amplitude")
        if not (math.isfinite(blur_sigma_px) and blur_sigma_px >= 0):
            raise PSFFileError(f"blur_sigma_px must be a finite number ≥ 0, got {blur_sigma_px!r}")
        self.blur_sigma_px = float(blur_sigma_px)
        self.label = str(label)

    def pupil_model(self, dtype: torch.dtype = torch.float32, learnable: bool = False) -> PupilModel:
        return PupilModel(
            self.setup, self.phase, learnable=learnable, dtype=dtype, pupil_amplitude=self.amplitude
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": PSF_FILE_VERSION,
            "setup": self.setup.to_dict(),
            "phase": self.phase.tolist(),
            "amplitude": None if self.amplitude is None else self.amplitude.tolist(),
            "blur_sigma_px": self.blur_sigma_px,
            "label": self.label,
        }

    def describe(self) -> dict[str, Any]:
        """A short JSON-able record of the model for reports (no arrays)."""
        return {
            "kind": self.kind,
            "label": self.label,
            "setup": self.setup.name,
            "pupil_grid": self.setup.pupil_grid,
            "pupil_amplitude": "uniform" if self.amplitude is None else "given",
            "blur_sigma_px": self.blur_sigma_px,
        }

    def replace(self, **changes: Any) -> ScalarPupilPSF:
        """A copy with some of ``setup``, ``phase``, ``amplitude``, ``blur_sigma_px``, ``label`` changed."""
        fields = dict(
            setup=self.setup,
            phase=self.phase,
            amplitude=self.amplitude,
            blur_sigma_px=self.blur_sigma_px,
            label=self.label,
        )
        fields.update(changes)
        return ScalarPupilPSF(**fields)


IMPLEMENTATIONS: dict[str, type[PSFModel]] = {"scalar_pupil": ScalarPupilPSF}


def psf_from_dict(data: dict[str, Any]) -> PSFModel:
    """Rebuild a model from :meth:`PSFModel.to_dict`'s plain data."""
    kind = data.get("kind")
    if kind not in IMPLEMENTATIONS:
        raise PSFFileError(f"unknown PSF model kind {kind!r}; known: {sorted(IMPLEMENTATIONS)}")
    version = int(data.get("version", PSF_FILE_VERSION))
    if version > PSF_FILE_VERSION:
        raise PSFFileError(
            f"PSF model format version {version} is newer than this dstorm3d reads ({PSF_FILE_VERSION}): "
            "update dstorm3d"
        )
    setup = OpticalSetup.from_dict(dict(data["setup"]))
    amplitude = data.get("amplitude")
    return ScalarPupilPSF(
        setup,
        np.asarray(data["phase"], dtype=np.float64),
        None if amplitude is None else np.asarray(amplitude, dtype=np.float64),
        float(data.get("blur_sigma_px", 0.0)),
        str(data.get("label", "")),
    )


def save_psf(
    path: str | Path, model: PSFModel, metadata: dict[str, Any] | None = None, overwrite: bool = False
) -> Path:
    """Write ``model`` (plus optional JSON-able ``metadata``, e.g. fit statistics) to an ``.npz`` file,
    atomically; an existing file is replaced only with ``overwrite``. Arrays are stored as arrays,
    everything else as one JSON string (no pickles)."""
    path = Path(path)
    if path.suffix != PSF_FILE_SUFFIX:
        raise PSFFileError(f"a PSF file must end in {PSF_FILE_SUFFIX}, got {path.name!r}")
    data = model.to_dict()
    arrays = {
        key: np.asarray(data.pop(key), dtype=np.float64) for key in ("phase", "amplitude") if data.get(key)
    }
    data.pop("phase", None)
    data.pop("amplitude", None)
    header = json.dumps({"model": data, "metadata": metadata or {}})

    def write(target: Path) -> None:
        with open(target, "wb") as handle:
            np.savez_compressed(handle, header=np.array(header), **arrays)

    atomic_write(path, write, overwrite=overwrite)
    return path


def load_psf(path: str | Path) -> tuple[PSFModel, dict[str, Any]]:
    """Read a file written by :func:`save_psf`: ``(model, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise PSFFileError(f"PSF file {str(path)!r} does not exist: give the .npz file that calibrate wrote")
    try:
        with np.load(path, allow_pickle=False) as archive:
            header = json.loads(str(archive["header"]))
            arrays = {key: np.array(archive[key]) for key in ("phase", "amplitude") if key in archive.files}
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise PSFFileError(f"{str(path)!r} is not a dstorm3d PSF file ({exc})") from None
    data = dict(header["model"])
    data["phase"] = arrays.get("phase")
    data["amplitude"] = arrays.get("amplitude")
    return psf_from_dict(data), dict(header.get("metadata", {}))


def total_blur_px(psf_sigma_px: float, extra_sigma_px: Tensor | float | None) -> Tensor | float | None:
    """The Gaussian σ (pixels) of a PSF model's own blur followed by another one (e.g. the simulation's
    per-emitter blur, a number or ``(E,)``): Gaussians convolve to σ = √(σ_psf² + σ_extra²). ``None`` when
    neither blurs; ``extra_sigma_px`` itself (the same object) when the PSF model does not blur."""
    if not psf_sigma_px:
        return extra_sigma_px
    if extra_sigma_px is None:
        return float(psf_sigma_px)
    if isinstance(extra_sigma_px, Tensor):
        return torch.sqrt(extra_sigma_px.square() + float(psf_sigma_px) ** 2)
    return math.hypot(float(psf_sigma_px), float(extra_sigma_px))


def renderer(
    model: PSFModel | PupilModel, dtype: torch.dtype, extra_blur_px: float | None = None
) -> tuple[PupilModel, float | None]:
    """The pupil renderer of a PSF model in ``dtype`` and the total blur σ (pixels) to apply after it: the
    model's blur combined with ``extra_blur_px`` (:func:`total_blur_px`). A bare :class:`PupilModel` (no
    blur of its own) is returned as is when it has ``dtype``, else as a fixed copy on its device."""
    if isinstance(model, PSFModel):
        return model.pupil_model(dtype), total_blur_px(model.blur_sigma_px, extra_blur_px)
    pupil = model if model.kappa.dtype == dtype else model.fixed_copy(dtype)
    return pupil, extra_blur_px


def blur_images(images: Tensor, sigma_px: float) -> Tensor:
    """Images ``(…, H, W)`` blurred by a Gaussian of σ = ``sigma_px`` pixels (circular, as the renderer)."""
    if sigma_px <= 0:
        return images
    sigma = images.new_tensor([float(sigma_px)])
    transfer = intensity_filter(tuple(images.shape[-2:]), sigma, False, images.dtype, images.device)
    return filter_patches(images.reshape(-1, *images.shape[-2:]), transfer).reshape(images.shape)


def _grid_array(
    value: np.ndarray | Tensor | None, n: int, name: str, default: float | None = None
) -> np.ndarray:
    """``value`` as a float64 ``(N, N)`` array (``default`` fills it when ``value`` is None)."""
    if value is None:
        return np.full((n, n), float(default), dtype=np.float64)
    array = np.asarray(value.detach().cpu() if isinstance(value, Tensor) else value, dtype=np.float64)
    if array.shape != (n, n):
        raise PSFFileError(
            f"the PSF model's {name} has shape {array.shape}; its setup's pupil grid needs ({n}, {n})"
        )
    if not np.all(np.isfinite(array)):
        raise PSFFileError(f"the PSF model's {name} has non-finite values")
    return array
