"""Look at localizations on their recording in napari.

    python -m dstorm3d.view locs=logs/mito/localizations.csv recording=<mito folder>
    python -m dstorm3d.view locs=out/localizations.csv recording=rec.tif render=out/render.tif
    python -m dstorm3d.view locs=table.csv pixel_size_nm=110           # no recording, no infer summary.json

Settings are in ``configs/view.yaml``. Opens a napari window (needs the optional extra:
``pip install 'dstorm3d[view]'``) with, in a world measured in µm:

* ``recording``: the camera frames as an image layer, frames on the time axis (read lazily, frame by frame);
* ``localizations``: one point per row of the table on its frame (the time coordinate; a point shows only
  on its own frame), at its x, y converted from nm to camera pixels, coloured by z (``colormap``, colour
  limits ``z_range_nm`` or the table's range); every column is a feature napari shows under the cursor;
* ``render``: ``infer.py``'s ``render.tif`` (RGB) or ``render_counts_zmean.tif`` (channels), at its own µm
  pixel size from the TIFF's calibration.

The camera pixel size comes from ``pixel_size_nm``, else the recording's TIFF calibration (µm per pixel, as
``python -m dstorm3d.simulate`` and ImageJ write it), else ``summary.json`` beside the table (``infer.py``'s
optical setup). Positions follow the conventions of the README: pixel ``(r, c)`` covers
``x ∈ [c, c+1)·Δx`` and napari draws pixel centres at whole coordinates, so a point's pixel coordinate is
``x/Δx − ½``. Every setting and file is checked before napari opens; a problem ends the command with one
line ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import Container, DictConfig, OmegaConf

from dstorm3d.utils.cli import UserInputError, exit_on_bad_overrides, run_or_exit
from dstorm3d.utils.paths import CONFIG_DIR, register_root
from dstorm3d.utils.validate import number, pair

INSTALL_HINT = "pip install 'dstorm3d[view]'"
FRAME_UNITS = ("pixel", "µm", "µm")  # napari (pint) units of the axes (frame, y, x): µm after the scales
REQUIRED_COLUMNS = ("frame", "x [nm]", "y [nm]", "z [nm]")
SETTING_KEYS = ("locs", "recording", "render", "pixel_size_nm", "z_range_nm", "point_size_px", "colormap")


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ViewSettings:
    """What ``python -m dstorm3d.view`` shows (paths checked to exist; nothing read yet)."""

    locs: Path
    recording: Path | None = None
    render: Path | None = None
    pixel_size_nm: float | None = None
    z_range_nm: tuple[float, float] | None = None
    point_size_px: float = 2.0
    colormap: str = "turbo"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ViewSettings:
        from matplotlib import colormaps

        colormap = config.get("colormap", "turbo")
        if colormap not in colormaps:
            raise UserInputError(f"colormap={colormap!r}: not a matplotlib colormap (e.g. colormap=turbo)")
        z_range = config.get("z_range_nm")
        return cls(
            locs=existing_path(
                "locs", config.get("locs"), "a localization table (infer.py's localizations.csv)"
            ),
            recording=existing_path(
                "recording", config.get("recording"), "a TIFF or a folder of TIFFs", True
            ),
            render=existing_path("render", config.get("render"), "infer.py's render.tif", True),
            pixel_size_nm=number(
                "pixel_size_nm", config.get("pixel_size_nm"), above=0.0, allow_none=True, example=110
            ),
            z_range_nm=None if z_range is None else pair("z_range_nm", z_range),
            point_size_px=float(
                number("point_size_px", config.get("point_size_px", 2.0), above=0.0, example=2)
            ),
            colormap=str(colormap),
        )


def existing_path(key: str, value: Any, what: str, optional: bool = False) -> Path | None:
    """A path that exists (``None`` for an optional setting left out)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise UserInputError(f"{key}={value!r}: give the path of {what} (e.g. {key}=<path>)")
    path = Path(value).expanduser()
    if not path.exists():
        raise UserInputError(f"{key}={path}: no such file or folder: give the path of {what}")
    return path


def import_napari() -> Any:
    """The napari module, or a one-line error saying how to install it."""
    try:
        import napari
    except ImportError as exc:
        raise UserInputError(f"napari is not installed ({exc.name or exc}): {INSTALL_HINT}") from None
    return napari


# ---------------------------------------------------------------------------------------------- inputs
def read_table(path: Path) -> dict[str, np.ndarray]:
    """The localization table (:func:`~dstorm3d.inference.outputs.read_localizations`; x, y, z in nm, frames
    from 1) with every other numeric column kept under its header; one-line errors for a bad table."""
    import csv

    from dstorm3d.inference.outputs import read_localizations

    with open(path, newline="") as handle:
        header = [h.strip() for h in next(csv.reader(handle), [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise UserInputError(
            f'locs={path} has no column "{missing[0]}" (its columns: {", ".join(header) or "none"}): give a '
            "ThunderSTORM-style table such as infer.py's localizations.csv"
        )
    try:
        return read_localizations(path)
    except ValueError as exc:
        raise UserInputError(f"locs={path}: a value is not a number ({str(exc).splitlines()[0]})") from None


def tiff_pixel_nm(path: Path) -> float | None:
    """The pixel size (nm) a TIFF's ImageJ calibration gives (``None`` when it is not in µm)."""
    from dstorm3d.utils.tiff import read_tiff_calibration

    calibration = read_tiff_calibration(path)
    if calibration.unit not in ("micron", "µm", "um") or not np.isfinite(calibration.pixel_size):
        return None
    return float(calibration.pixel_size) * 1e3


def summary_pixel_nm(locs: Path) -> float | None:
    """The camera pixel (nm) of ``infer.py``'s ``summary.json`` beside a table (``None`` without one)."""
    summary = locs.parent / "summary.json"
    if not summary.is_file():
        return None
    try:
        setup = json.loads(summary.read_text()).get("optical_setup") or {}
        return float(setup["camera_pixel_um"]) / float(setup["magnification"]) * 1e3
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def camera_pixel_nm(settings: ViewSettings, recording_files: tuple[Path, ...]) -> tuple[float, str]:
    """The camera pixel at the sample (nm) and where it came from (see the module docstring)."""
    if settings.pixel_size_nm is not None:
        return settings.pixel_size_nm, "pixel_size_nm"
    if recording_files:
        pixel = tiff_pixel_nm(recording_files[0])
        if pixel is not None:
            return pixel, f"the calibration of {recording_files[0].name}"
    pixel = summary_pixel_nm(settings.locs)
    if pixel is not None:
        return pixel, f"{settings.locs.parent / 'summary.json'}"
    raise UserInputError(
        "the camera pixel size is unknown (no calibrated recording TIFF, no infer.py summary.json beside "
        "locs): pass pixel_size_nm=<nm> (e.g. pixel_size_nm=110)"
    )


def open_frames(path: Path) -> Any:
    """The recording, opened and checked (:func:`~dstorm3d.inference.recording.open_recording`); no pixels
    are read."""
    from dstorm3d.inference.recording import RecordingError, open_recording

    try:
        return open_recording(path, allow_float=True)
    except RecordingError as exc:
        raise UserInputError(f"recording={path}: {exc}") from None


def lazy_frames(recording: Any) -> Any:
    """A recording as a lazy ``(T, H, W)`` dask array in the file's pixel type (one frame per chunk; dask
    comes with napari)."""
    import dask.array as da

    return da.from_array(FrameStack(recording), chunks=(1, *recording.shape))


class FrameStack:
    """A :class:`~dstorm3d.inference.recording.Recording` as the array-like dask reads: ``shape (T, H, W)``,
    ``dtype``, and blocks ``[t0:t1, rows, columns]``."""

    def __init__(self, recording: Any) -> None:
        self.recording = recording
        self.shape = (len(recording), *recording.shape)
        self.dtype = recording.dtype
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        frames, *rest = key if isinstance(key, tuple) else (key,)
        block = self.recording[frames]  # (H, W) for one frame index, (n, H, W) for a slice
        return block[(..., *rest)] if rest else block


# ---------------------------------------------------------------------------------------------- layers
def points_data(table: dict[str, np.ndarray], pixel_nm: float) -> np.ndarray:
    """``(N, 3)`` napari coordinates ``(frame index from 0, row, column)`` of the localizations, in camera
    pixels with pixel centres at whole numbers."""
    return np.stack(
        [table["frame"] - 1.0, table["y"] / pixel_nm - 0.5, table["x"] / pixel_nm - 0.5], axis=1
    ).reshape(-1, 3)


def points_features(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-point features (napari shows them under the cursor): ``z_nm`` (the colour), the table's other
    columns in their units."""
    renamed = {"x": "x_nm", "y": "y_nm", "z": "z_nm"}
    return {renamed.get(key, key): np.asarray(values, dtype=np.float64) for key, values in table.items()}


def render_geometry(
    render_pixel_um: float, camera_pixel_um: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(scale, translate)`` (µm) of a render layer whose pixel ``(r, c)`` covers ``[c, c+1)·p`` in x,
    in the world of the recording layer, where the centre of camera pixel 0 lies at 0."""
    offset = 0.5 * (render_pixel_um - camera_pixel_um)
    return (render_pixel_um, render_pixel_um), (offset, offset)


def read_render(path: Path) -> tuple[np.ndarray, float, bool, tuple[str, ...]]:
    """``(image, pixel µm, rgb, channel names)`` of a render TIFF (``YXS`` RGB, ``YX`` or ``CYX``)."""
    import tifffile

    from dstorm3d.utils.tiff import read_tiff_calibration

    try:
        calibration = read_tiff_calibration(path)
        image = tifffile.imread(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is one line for the user
        raise UserInputError(
            f"render={path} is not a readable TIFF ({str(exc).splitlines()[0][:160]})"
        ) from None
    pixel_nm = tiff_pixel_nm(path)
    if pixel_nm is None:
        raise UserInputError(f"render={path} has no pixel size in µm: give infer.py's render.tif")
    axes = calibration.axes
    if axes not in ("YXS", "YX", "CYX"):
        raise UserInputError(
            f"render={path} has axes {axes}: give infer.py's render.tif (YXS) or a YX/CYX image"
        )
    return image, pixel_nm / 1e3, axes == "YXS", calibration.labels


def build_viewer(napari: Any, settings: ViewSettings, show: bool = True) -> Any:
    """A napari viewer with the layers of the module docstring (``show=False``: no window, for tests). The
    files are read and checked before the window opens."""
    layers = read_inputs(settings)
    viewer = napari.Viewer(title=f"dstorm3d: {settings.locs}", show=show)
    return add_layers(viewer, layers, settings)


@dataclass
class Inputs:
    """What the viewer shows, read and checked: the table, the lazy frames, the render and the pixel size."""

    table: dict[str, np.ndarray]
    pixel_nm: float
    pixel_source: str
    recording: Any | None = None  # the opened Recording; its frames are read lazily by the viewer
    render: tuple[np.ndarray, float, bool, tuple[str, ...]] | None = None  # read_render's


def read_inputs(settings: ViewSettings) -> Inputs:
    """Read the table, open the recording and the render, find the camera pixel size; one-line errors."""
    table = read_table(settings.locs)
    recording = open_frames(settings.recording) if settings.recording else None
    pixel_nm, source = camera_pixel_nm(settings, recording.files if recording is not None else ())
    if recording is not None and len(table["frame"]) and table["frame"].max() > len(recording):
        raise UserInputError(
            f"locs reach frame {int(table['frame'].max())} but recording={settings.recording} has "
            f"{len(recording)} frames: give the recording the table was localized from"
        )
    render = read_render(settings.render) if settings.render else None
    return Inputs(table, pixel_nm, source, recording, render)


def add_layers(viewer: Any, inputs: Inputs, settings: ViewSettings) -> Any:
    """Add the recording, render and localization layers to a napari ``Viewer`` (or a GUI-less
    ``ViewerModel``); returns it."""
    table, pixel_nm, source = inputs.table, inputs.pixel_nm, inputs.pixel_source
    pixel_um = pixel_nm / 1e3
    if inputs.recording is not None:
        frames = lazy_frames(inputs.recording)
        first = np.asarray(frames[0].compute())
        lo, hi = np.percentile(first, [0.5, 99.8]) if first.size else (0.0, 1.0)
        viewer.add_image(
            frames,
            name="recording",
            scale=(1.0, pixel_um, pixel_um),
            units=FRAME_UNITS,
            colormap="gray",
            contrast_limits=(float(lo), float(max(hi, lo + 1))),
            metadata={"path": str(settings.recording), "pixel_size_nm": pixel_nm, "pixel_size_from": source},
        )
    if inputs.render is not None:
        image, render_um, rgb, labels = inputs.render
        scale, translate = render_geometry(render_um, pixel_um)
        viewer.add_image(
            image,
            name=list(labels) if (labels and not rgb) else "render",
            rgb=rgb,
            channel_axis=0 if image.ndim == 3 and not rgb else None,
            scale=scale,
            translate=translate,
            units=FRAME_UNITS[1:],
            blending="additive",
            metadata={"path": str(settings.render), "pixel_size_um": render_um},
        )
    z = table["z"]
    z_range = settings.z_range_nm or ((float(z.min()), float(z.max())) if len(z) else (0.0, 1.0))
    if z_range[1] <= z_range[0]:
        z_range = (z_range[0], z_range[0] + 1.0)
    viewer.add_points(
        points_data(table, pixel_nm),
        name="localizations",
        ndim=3,
        features=points_features(table),
        face_color="z_nm",
        face_colormap=settings.colormap,
        face_contrast_limits=z_range,
        size=settings.point_size_px,
        border_width=0.0,
        scale=(1.0, pixel_um, pixel_um),
        units=FRAME_UNITS,
        metadata={"path": str(settings.locs), "pixel_size_nm": pixel_nm, "pixel_size_from": source},
    )
    viewer.dims.axis_labels = ("frame", "y (µm)", "x (µm)")
    viewer.scale_bar.visible = True
    return viewer


# ---------------------------------------------------------------------------------------------- command
def view(cfg: DictConfig, show: bool = True) -> Any:
    """Check the settings and napari, build the viewer and (``show``) run napari's event loop until the
    window closes; returns the viewer."""
    if OmegaConf.is_missing(cfg, "locs"):
        raise UserInputError(
            "locs is required: python -m dstorm3d.view locs=<localizations.csv> [recording=<tif>]"
        )
    config = {
        key: OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value
        for key, value in ((key, cfg.get(key)) for key in SETTING_KEYS)
    }
    settings = ViewSettings.from_config(config)
    napari = import_napari()
    viewer = build_viewer(napari, settings, show=show)
    if show:
        napari.run()
    return viewer


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="view")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: a bad setting, a missing file or a missing napari ends with one line on stderr
    and exit code 2."""
    run_or_exit(view, cfg)


if __name__ == "__main__":
    register_root()
    exit_on_bad_overrides("view")
    main()
