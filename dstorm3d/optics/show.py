"""Show an optical setup and its phase mask: PSF z-stack, montage, mask image and precision bound.

    python -m dstorm3d.optics.show optics=storm
    python -m dstorm3d.optics.show optics=storm_printed show.emccd=true show.photons=5000 show.background=50
    python -m dstorm3d.optics.show optics=storm optics.mask=/path/to/mask.npy
    python -m dstorm3d.optics.show optics=calibrated optics.pupil=/path/to/calibration.npz

Writes into the Hydra run folder (settings in ``configs/show.yaml``):

The PSF is the config's PSF model (:func:`~dstorm3d.optics.config.psf_from_config`): the setup's scalar
pupil with ``optics.mask``, or the calibrated model of ``optics.pupil`` (its pupil amplitude and blur
included).

* ``psf_zstack.tif``: float32 ``(Z, P, P)`` PSFs per photon (one DFT period sums to 1) of an emitter at
  the centre of pixel ``(P//2, P//2)``, an ImageJ z-stack calibrated in µm (pixel at the sample, slice
  spacing); its ImageJ Info property is JSON with ``z_um``, the pixel size and the setup.
* ``psf_montage.png``: the slices in a grid, each titled with its z, with a scale bar and a colour bar.
* ``phase_mask.png``: the pupil phase (the mask's, or the calibrated one) wrapped, inside the aperture.
* ``crlb.csv`` / ``crlb.png``: Cramér–Rao bounds of x, y, z (nm) against z.
* ``summary.json``: the setup, the mask's (or pupil file's) source, the PSF model, the mean bounds and the
  window's photon fraction.

Everything is computed before the first file is written; a setup, mask or setting that cannot be used
ends the run with one line on stderr and exit code 2, and writes none of these files.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dstorm3d.errors import UserInputError
from dstorm3d.optics.config import psf_from_config
from dstorm3d.optics.crlb import crlb
from dstorm3d.optics.masks import BUILTIN_MASKS
from dstorm3d.optics.psf_model import PSFModel
from dstorm3d.optics.setup import OpticalSetup
from dstorm3d.utils.cli import exit_on_bad_overrides, run_or_exit
from dstorm3d.utils.files import atomic_write
from dstorm3d.utils.paths import CONFIG_DIR, register_root
from dstorm3d.utils.tiff import psf_zstack_writer
from dstorm3d.utils.validate import flag, integer, number
from dstorm3d.visualization import new_figure, psf_montage_figure
from dstorm3d.visualization import phase_mask_figure as draw_phase_mask

OUTPUT_FILES = ("psf_zstack.tif", "psf_montage.png", "phase_mask.png", "crlb.csv", "crlb.png", "summary.json")
CRLB_COLUMNS = ("z_um", "x_nm", "y_nm", "z_nm", "photons_std", "background_std")


class ShowError(UserInputError):
    """A ``show.*`` setting that cannot be used."""


# ---------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ShowSettings:
    """The validated ``show`` config group (see ``configs/show.yaml``)."""

    z_slices: int
    window_px: int
    shared_colour_scale: bool
    photons: float
    background: float
    emccd: bool
    crlb_z_points: int
    crlb_window_px: int | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ShowSettings:
        def get(key: str) -> Any:
            return f"show.{key}", config.get(key)

        return cls(
            z_slices=integer(*get("z_slices"), minimum=1),
            window_px=integer(*get("window_px"), minimum=3),
            shared_colour_scale=flag(*get("shared_colour_scale")),
            photons=number(*get("photons"), above=0.0, example=10000),
            # zero background leaves pixels without signal at μ = 0 and the Fisher information undefined
            background=number(*get("background"), above=0.0, example=10),
            emccd=flag(*get("emccd")),
            crlb_z_points=integer(*get("crlb_z_points"), minimum=1),
            crlb_window_px=integer(*get("crlb_window_px"), minimum=3, allow_none=True),
        )


def describe_mask_source(optics: Mapping[str, Any]) -> dict[str, Any]:
    """Where the mask came from: a built-in name or a resolved file path (with its loading options), or
    the PSF calibration file (``optics.pupil``) that replaces it."""
    if optics.get("pupil") is not None:
        return {"kind": "pupil file", "path": str(Path(str(optics["pupil"])).expanduser().resolve())}
    spec = str(optics.get("mask"))
    if spec in BUILTIN_MASKS:
        return {"kind": "built-in", "name": spec}
    return {
        "kind": "file",
        "path": str(Path(spec).expanduser().resolve()),
        "variable": optics.get("mask_variable"),
        "resample_mask": bool(optics.get("resample_mask", False)),
    }


# ---------------------------------------------------------------------------------------- computing
@dataclass(frozen=True)
class SetupView:
    """Everything the files show, computed before any of them is written."""

    setup: OpticalSetup
    psf_model: PSFModel
    mask: np.ndarray  # (N, N) rad: the pupil phase
    mask_source: dict[str, Any]
    settings: ShowSettings
    z_um: np.ndarray  # (Z,) PSF slices
    psf: np.ndarray  # (Z, P, P) float32, per photon
    crlb_z_um: np.ndarray  # (Zc,)
    bounds: dict[str, np.ndarray]  # crlb() output, each (Zc,)

    @property
    def window_fraction(self) -> np.ndarray:
        """Fraction of the photons inside the P × P window, per slice."""
        return self.psf.sum(axis=(1, 2), dtype=np.float64)


def compute_view(optics: Mapping[str, Any], settings: ShowSettings) -> SetupView:
    """Build the PSF model from the ``optics`` config and evaluate PSFs and bounds (float64)."""
    model = psf_from_config(optics, max(settings.window_px, settings.crlb_window_px or 0))
    setup = model.setup
    setup.check_window(settings.window_px)
    if settings.crlb_window_px is not None:
        setup.check_window(settings.crlb_window_px)
    z0, z1 = setup.z_range_um
    z_um = np.linspace(z0, z1, settings.z_slices)
    crlb_z_um = np.linspace(z0, z1, settings.crlb_z_points)
    with torch.no_grad():
        psf = model.zstack(z_um, settings.window_px).numpy().astype(np.float32)
    bounds = crlb(
        model,
        crlb_z_um,
        photons=settings.photons,
        background=settings.background,
        window=settings.crlb_window_px,
        emccd=settings.emccd,
    )
    return SetupView(
        setup=setup,
        psf_model=model,
        mask=np.asarray(model.phase),
        mask_source=describe_mask_source(optics),
        settings=settings,
        z_um=z_um,
        psf=psf,
        crlb_z_um=crlb_z_um,
        bounds=bounds,
    )


# ---------------------------------------------------------------------------------------- figures
def _new_figure(width: float, height: float) -> Any:
    """A matplotlib figure drawn by the Agg canvas (no display, no pyplot state)."""
    return new_figure(width, height, dpi=110)


def montage_figure(view: SetupView) -> Any:
    """The z slices in a grid, titled with z (µm), with a scale bar and a colour bar: one shared colour
    scale (photons per pixel) or one per slice (relative to its peak)."""
    return psf_montage_figure(
        view.psf,
        view.z_um,
        view.setup.pixel_size_um,
        f"{view.setup.name}, mask {_mask_label(view.mask_source)}: PSF per photon, "
        f"NFP {view.setup.nfp_um:g} µm",
        shared_colour_scale=view.settings.shared_colour_scale,
    )


def phase_mask_figure(view: SetupView) -> Any:
    """Wrapped phase (−π, π] inside the aperture on a cyclic colour map, axes in ρ = n·sinθ."""
    setup = view.setup
    return draw_phase_mask(
        view.mask,
        setup,
        f"{setup.name}: phase mask {_mask_label(view.mask_source)}\n"
        f"inside the aperture (ρ < {setup.aperture_na:g}), N = {setup.pupil_grid}",
    )


def crlb_figure(view: SetupView) -> Any:
    """CRLB of x, y and z (nm) against z, the nominal focal plane marked."""
    settings = view.settings
    figure = _new_figure(6.0, 4.0)
    ax = figure.subplots()
    for key, label in (("x_nm", "x"), ("y_nm", "y"), ("z_nm", "z")):
        values = view.bounds[key]
        ax.plot(
            view.crlb_z_um,
            values,
            marker="." if values.size < 60 else None,
            label=f"{label} (mean {values.mean():.2f} nm)",
        )
    ax.axvline(view.setup.nfp_um, color="0.6", linestyle="--", linewidth=1, label="NFP")
    ax.set_xlabel("z above the coverslip (µm)")
    ax.set_ylabel("CRLB (nm)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    noise = ", EMCCD excess noise (×√2)" if settings.emccd else ""
    ax.set_title(
        f"{view.setup.name}, mask {_mask_label(view.mask_source)}: {settings.photons:,.0f} photons, "
        f"{settings.background:g} background photons/px{noise}",
        fontsize=9,
    )
    return figure


def _mask_label(source: Mapping[str, Any]) -> str:
    return source["name"] if source["kind"] == "built-in" else Path(source["path"]).name


# ---------------------------------------------------------------------------------------- files
def crlb_table(view: SetupView) -> str:
    """``crlb.csv`` text: one row per depth."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CRLB_COLUMNS)
    b = view.bounds
    for row in zip(view.crlb_z_um, b["x_nm"], b["y_nm"], b["z_nm"], b["photons"], b["background"]):
        writer.writerow([f"{value:.6g}" for value in row])
    return buffer.getvalue()


def summary(view: SetupView) -> dict[str, Any]:
    """``summary.json`` contents."""
    settings, fraction = view.settings, view.window_fraction
    return {
        "setup": view.setup.to_dict(),
        "mask": view.mask_source,
        "psf_model": view.psf_model.describe(),
        "psf": {
            "z_um": [round(float(z), 6) for z in view.z_um],
            "window_px": settings.window_px,
            "pixel_size_um": view.setup.pixel_size_um,
            "window_photon_fraction": {"min": float(fraction.min()), "mean": float(fraction.mean())},
            "colour_scale": "shared" if settings.shared_colour_scale else "per slice",
        },
        "crlb": {
            "photons": settings.photons,
            "background": settings.background,
            "emccd": settings.emccd,
            "window_px": settings.crlb_window_px or view.setup.pupil_grid,
            "z_points": settings.crlb_z_points,
            "mean_nm": {axis: float(view.bounds[f"{axis}_nm"].mean()) for axis in ("x", "y", "z")},
        },
        "files": list(OUTPUT_FILES),
    }


def write_outputs(view: SetupView, folder: Path) -> list[Path]:
    """Write every output file atomically into ``folder``; return their paths."""
    info = {"setup": view.setup.name, "mask": view.mask_source, "optical_setup": view.setup.to_dict()}
    writers = {
        "psf_zstack.tif": psf_zstack_writer(view.psf, view.z_um, view.setup.pixel_size_um, info),
        "psf_montage.png": lambda p: montage_figure(view).savefig(p),
        "phase_mask.png": lambda p: phase_mask_figure(view).savefig(p),
        "crlb.csv": lambda p: p.write_text(crlb_table(view)),
        "crlb.png": lambda p: crlb_figure(view).savefig(p),
        "summary.json": lambda p: p.write_text(json.dumps(summary(view), indent=2) + "\n"),
    }
    return [atomic_write(folder / name, writers[name], overwrite=True) for name in OUTPUT_FILES]


def show(cfg: DictConfig) -> None:
    """Compute the view, then write the files, then print where they went."""
    optics = OmegaConf.to_container(cfg.optics, resolve=True)
    settings = ShowSettings.from_config(OmegaConf.to_container(cfg.show, resolve=True))
    view = compute_view(optics, settings)
    folder = Path(HydraConfig.get().runtime.output_dir)
    paths = write_outputs(view, folder)
    means = summary(view)["crlb"]["mean_nm"]
    print(
        f"{view.setup.name} with mask {_mask_label(view.mask_source)}: mean CRLB x {means['x']:.2f}, "
        f"y {means['y']:.2f}, z {means['z']:.2f} nm"
    )
    print(f"wrote {len(paths)} files to {folder}:")
    for path in paths:
        print(f"  {path.name}")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="show")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: a bad setting ends with one line on stderr and exit code 2."""
    run_or_exit(show, cfg)


if __name__ == "__main__":
    register_root()
    exit_on_bad_overrides("show")
    main()
