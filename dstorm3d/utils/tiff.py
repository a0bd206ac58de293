"""TIFF files that Fiji/ImageJ opens with their physical calibration.

Every TIFF dstorm3d writes is an ImageJ hyperstack:

* pixel size: ``XResolution = YResolution = 1 / pixel`` (pixels per µm, ``ResolutionUnit`` none, as
  ImageJ writes it) and ``unit=micron`` in the ImageJ description (Fiji: *Image ▸ Properties*); files
  without a physical pixel say ``unit=pixel``;
* axes in ImageJ's order TZCYX(S): ``T`` frames (``frames=``, ``finterval=`` in s), ``Z`` slices
  (``slices=``, ``spacing=`` in µm, ``zorigin`` so that slice 0 sits at its z), ``C`` channels (named by
  slice labels), ``S`` the samples of an RGB image;
* the JSON that describes the file (setup, units, seed, ...): the ImageJ ``Info`` property in the
  ``IJMetadata`` tag (Fiji: *Image ▸ Show Info*), read back with :func:`read_tiff_info`.

The ImageJ description is made by ``tifffile.imagej_description`` and the pages are written by a plain
``tifffile.TiffWriter``, so that a recording can be streamed page by page (:class:`ImageJStackWriter`)
and a float64 phase mask keeps its bit-exact values (Fiji opens float64 as 32-bit). tifffile reads every
such file back as ImageJ (``TiffFile.imagej_metadata``, ``series[0].axes``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from dstorm3d.utils.files import atomic_write

#: Pixel types ImageJ opens: 8/16-bit, 32-bit float, and float64 (which ImageJ converts to 32-bit).
IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)
#: Classic TIFF offsets are 32-bit: larger files are written as BigTIFF (tifffile's margin for the IFDs).
CLASSIC_TIFF_BYTES = 2**32 - 2**25
_AXES_ORDER = "TZCYXS"


@dataclass(frozen=True)
class TiffCalibration:
    """What a TIFF written here tells Fiji: pixel size (``unit`` per pixel), axes and steps."""

    axes: str
    shape: tuple[int, ...]
    unit: str
    pixel_size: float  # in ``unit`` per pixel (µm when unit is "micron")
    z_step_um: float | None
    z_first_um: float | None
    frame_interval_s: float | None
    labels: tuple[str, ...]


def _check_layout(shape: Sequence[int], dtype: np.dtype, axes: str) -> bool:
    """Check ``axes`` against the array and ImageJ; return whether the image is RGB (``S`` last)."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes!r} do not match an array of shape {tuple(shape)}")
    if not (axes.endswith("YX") or axes.endswith("YXS")):
        raise ValueError(f"axes {axes!r} must end in YX (or YXS for RGB)")
    positions = [_AXES_ORDER.find(axis) for axis in axes]
    if -1 in positions or positions != sorted(set(positions)):
        raise ValueError(f"axes {axes!r} must be distinct letters in ImageJ's order {_AXES_ORDER}")
    rgb = axes.endswith("S")
    if rgb and (dtype != np.uint8 or shape[-1] != 3):
        raise ValueError(f"an RGB image must be uint8 with 3 samples, got {dtype} with {shape[-1]}")
    if dtype not in IMAGEJ_DTYPES:
        names = ", ".join(np.dtype(t).name for t in IMAGEJ_DTYPES)
        raise ValueError(f"ImageJ cannot open {dtype} pixels: convert to one of {names}")
    return rgb


def imagej_write_options(
    shape: Sequence[int],
    dtype: np.dtype | type,
    axes: str,
    pixel_um: float | None,
    z_step_um: float | None = None,
    z_first_um: float | None = None,
    frame_interval_s: float | None = None,
    info: Mapping[str, Any] | None = None,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for the first ``TiffWriter.write`` of an ImageJ hyperstack of ``shape``.

    ``pixel_um`` is the pixel size in µm (``None``: no physical size, ``unit=pixel``); ``z_step_um`` the
    spacing of ``Z`` slices (µm) and ``z_first_um`` the z of slice 0; ``frame_interval_s`` the time
    between ``T`` frames (s); ``info`` goes into the ImageJ Info property as JSON; ``labels`` names the
    planes (one per page, e.g. per channel).
    """
    import tifffile

    dtype = np.dtype(dtype)
    rgb = _check_layout(shape, dtype, axes)
    if pixel_um is not None and not pixel_um > 0:
        raise ValueError(f"pixel_um must be positive, got {pixel_um}")
    metadata: dict[str, Any] = {"unit": "micron" if pixel_um is not None else "pixel"}
    if z_step_um is not None:
        if "Z" not in axes or not z_step_um > 0:
            raise ValueError(f"z_step_um={z_step_um} needs a Z axis and a positive step (axes {axes!r})")
        metadata["spacing"] = float(z_step_um)
        if z_first_um:
            metadata["zorigin"] = -float(z_first_um) / float(z_step_um)  # slice 0 at z_first_um
    if frame_interval_s is not None:
        if "T" not in axes or not frame_interval_s > 0:
            raise ValueError(f"frame_interval_s={frame_interval_s} needs a T axis and a positive interval")
        metadata["finterval"] = float(frame_interval_s)
    description = tifffile.imagej_description(tuple(shape), axes, rgb=rgb, **metadata)
    properties: dict[str, Any] = {}
    if info is not None:
        properties["Info"] = json.dumps(info, default=str)
    if labels is not None:
        pages = int(np.prod(shape[: -3 if rgb else -2]))
        if len(labels) != pages:
            raise ValueError(f"{len(labels)} labels for {pages} planes")
        properties["Labels"] = [str(label) for label in labels]
    per_pixel = 1.0 / pixel_um if pixel_um is not None else 1.0
    return {
        "description": description,
        "metadata": None,  # no tifffile JSON: the ImageJ description is the only one
        "photometric": "rgb" if rgb else "minisblack",
        "resolution": (per_pixel, per_pixel),
        "resolutionunit": tifffile.RESUNIT.NONE,
        "extratags": tifffile.imagej_metadata_tag(properties, "<") if properties else (),
        "software": "dstorm3d",
    }


def imagej_tiff_writer(
    array: np.ndarray,
    pixel_um: float | None,
    axes: str,
    *,
    z_step_um: float | None = None,
    z_first_um: float | None = None,
    frame_interval_s: float | None = None,
    info: Mapping[str, Any] | None = None,
    labels: Sequence[str] | None = None,
) -> Callable[[Path], None]:
    """``write(path)`` for ``array`` as a calibrated ImageJ TIFF, to pass to
    :func:`~dstorm3d.utils.files.atomic_write` (settings checked now, see :func:`imagej_write_options`)."""
    import tifffile

    array = np.ascontiguousarray(array)
    options = imagej_write_options(
        array.shape, array.dtype, axes, pixel_um, z_step_um, z_first_um, frame_interval_s, info, labels
    )

    def write(path: Path) -> None:
        big = array.nbytes > CLASSIC_TIFF_BYTES
        with tifffile.TiffWriter(path, byteorder="<", bigtiff=big, shaped=False) as tiff:
            tiff.write(array, **options)

    return write


def write_imagej_tiff(
    path: str | Path,
    array: np.ndarray,
    pixel_um: float | None,
    axes: str,
    *,
    z_step_um: float | None = None,
    z_first_um: float | None = None,
    frame_interval_s: float | None = None,
    info: Mapping[str, Any] | None = None,
    labels: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``array`` (axes like ``"YX"``, ``"TYX"``, ``"ZYX"``, ``"CYX"`` or ``"YXS"`` for RGB uint8)
    atomically as a calibrated ImageJ TIFF; ``pixel_um`` in µm (``None``: ``unit=pixel``), ``z_step_um``
    and ``z_first_um`` in µm, ``frame_interval_s`` in s, ``info`` stored as JSON in the Info property,
    ``labels`` one per plane. Raises ``FileExistsError`` when ``path`` exists unless ``overwrite``."""
    write = imagej_tiff_writer(
        array,
        pixel_um,
        axes,
        z_step_um=z_step_um,
        z_first_um=z_first_um,
        frame_interval_s=frame_interval_s,
        info=info,
        labels=labels,
    )
    return atomic_write(Path(path), write, overwrite=overwrite)


def psf_zstack_writer(
    stack: np.ndarray, z_um: Sequence[float], pixel_um: float, info: Mapping[str, Any] | None = None
) -> Callable[[Path], None]:
    """``write(path)`` for a PSF z-stack ``(Z, P, P)`` (fraction of the emitted photons per pixel) as a
    float32 ImageJ z-stack: pixels at the sample and the slice spacing in µm, slice 0 at ``z_um[0]``; the
    Info property holds ``z_um``, the unit and the pixel size, plus ``info``. Slices must be evenly spaced."""
    z = np.asarray(z_um, dtype=np.float64)
    steps = np.diff(z)
    if steps.size and not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-9):
        raise ValueError(f"ImageJ z-stacks need evenly spaced slices, got z = {z.tolist()} µm")
    step = float(steps[0]) if steps.size and steps[0] > 0 else None
    record = {
        "z_um": [float(v) for v in z],
        "unit": "fraction of the emitted photons per pixel",
        "pixel_size_um": float(pixel_um),
        **(info or {}),
    }
    return imagej_tiff_writer(
        np.asarray(stack, dtype=np.float32),
        pixel_um,
        "ZYX",
        z_step_um=step,
        z_first_um=float(z[0]) if step else None,
        info=record,
    )


def write_psf_zstack(
    path: str | Path,
    stack: np.ndarray,
    z_um: Sequence[float],
    pixel_um: float,
    info: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """:func:`psf_zstack_writer` into ``path``, atomically."""
    return atomic_write(Path(path), psf_zstack_writer(stack, z_um, pixel_um, info), overwrite=overwrite)


class ImageJStackWriter:
    """Write an ImageJ hyperstack of known ``shape`` one plane at a time (a recording, frame by frame).

    Writes to ``path`` directly: for an atomic file, write to a temporary name and rename it (the simulate
    command's staged outputs do). BigTIFF when the data exceed the classic 4 GB limit.

        with ImageJStackWriter(path, (frames, h, w), np.uint16, pixel_um=0.11, axes="TYX", info=...) as w:
            for frame in frames:
                w.write(frame)
    """

    def __init__(
        self,
        path: str | Path,
        shape: Sequence[int],
        dtype: np.dtype | type,
        pixel_um: float | None,
        axes: str = "TYX",
        *,
        z_step_um: float | None = None,
        z_first_um: float | None = None,
        frame_interval_s: float | None = None,
        info: Mapping[str, Any] | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        import tifffile

        self.path, self.shape, self.dtype = Path(path), tuple(int(n) for n in shape), np.dtype(dtype)
        self._options = imagej_write_options(
            self.shape, self.dtype, axes, pixel_um, z_step_um, z_first_um, frame_interval_s, info, labels
        )
        rgb = axes.endswith("S")
        self._plane = self.shape[-3:] if rgb else self.shape[-2:]
        self.planes = int(np.prod(self.shape[: -3 if rgb else -2]))
        self.written = 0
        big = self.planes * int(np.prod(self._plane)) * self.dtype.itemsize > CLASSIC_TIFF_BYTES
        self._tiff = tifffile.TiffWriter(self.path, byteorder="<", bigtiff=big, shaped=False)

    def write(self, plane: np.ndarray) -> None:
        """Append the next plane (shape ``shape[-2:]``, or ``shape[-3:]`` for RGB)."""
        plane = np.ascontiguousarray(plane)
        if plane.shape != self._plane or plane.dtype != self.dtype:
            raise ValueError(f"plane {plane.shape} {plane.dtype} != {self._plane} {self.dtype}")
        if self.written >= self.planes:
            raise ValueError(f"all {self.planes} planes are written already")
        options = self._options if self.written == 0 else {"metadata": None}
        self._tiff.write(plane, contiguous=True, **options)
        self.written += 1

    def close(self) -> None:
        self._tiff.close()

    def __enter__(self) -> ImageJStackWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
        if kind is None and self.written != self.planes:
            raise ValueError(f"{self.path.name}: {self.written} of {self.planes} planes written")


# ---------------------------------------------------------------------------------------- reading
def read_tiff_info(path: str | Path) -> dict[str, Any]:
    """The JSON stored in a TIFF's ImageJ Info property (``{}`` when there is none)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        text = (tif.imagej_metadata or {}).get("Info")
    return json.loads(text) if text else {}


def read_tiff_calibration(path: str | Path) -> TiffCalibration:
    """The calibration Fiji sees in a TIFF (ImageJ description and resolution tags)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        meta = tif.imagej_metadata or {}
        series = tif.series[0]
        x_per_unit, _ = tif.pages.first.resolution
        spacing, origin = meta.get("spacing"), meta.get("zorigin")
        labels = meta.get("Labels") or ()
        return TiffCalibration(
            axes=series.axes,
            shape=tuple(series.shape),
            unit=str(meta.get("unit", "")),
            pixel_size=1.0 / x_per_unit if x_per_unit else float("nan"),
            z_step_um=float(spacing) if spacing is not None else None,
            z_first_um=None if spacing is None else -float(origin or 0.0) * float(spacing),
            frame_interval_s=float(meta["finterval"]) if "finterval" in meta else None,
            labels=tuple(str(label) for label in labels),
        )
