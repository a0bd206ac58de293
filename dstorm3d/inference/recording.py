"""Camera recordings for inference: TIFF files or folders of TIFFs as lazy sequences of 2-D frames.

:func:`open_recording` accepts

* a TIFF file (``.tif``/``.tiff``, ``.ome.tif`` included): a single page, a multi-page stack, several
  appended series of one frame shape, an ImageJ hyperstack or an OME-TIFF (first file only: an OME
  dataset split over several files is read one file at a time);
* a folder of such files, read in natural order (``2.tif`` before ``10.tif``; hidden files such as
  ``._01.tif`` and subfolders are ignored). Each file may hold one or more frames.

Axes: every series must end in ``YX`` (one sample per pixel: no RGB). Of the other axes, size-1 axes are
ignored and at most one of ``T`` (time), ``Z`` (planes), ``I``/``Q`` (generic page sequence) may have more
than one entry: it is the frame axis. A channel axis ``C`` with several channels needs ``channel=`` to pick
one. Any other axis (tiles, angles, lifetimes, ...) is refused. All frames must share one shape and pixel
type.

Frames are read one page at a time and returned as fresh arrays ``(H, W)`` in the file's pixel type
(native byte order): contiguous uncompressed data (what tifffile, ImageJ and most acquisition software
write) are read with one positioned read per frame, anything else (compressed, tiled, scattered pages) is
decoded page by page by tifffile. Nothing ever holds the whole stack, so memory stays at a few frames
whatever the file size. File handles are opened lazily in the process that reads (DataLoader workers
each open their own) and are never pickled.

Every problem with the input is a :class:`RecordingError` whose one-line message names the problem and
the fix.
"""

from __future__ import annotations

import bisect
import logging
import math
import operator
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import natsort
import numpy as np
import tifffile
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dstorm3d.errors import UserInputError
from dstorm3d.inference.preprocess import Preprocessing

TIFF_SUFFIXES = (".tif", ".tiff")
#: Axes that may carry the frames (tifffile's axis codes): time, z-planes, generic page sequences.
FRAME_AXES = "TZIQ"
CHANNEL_AXIS = "C"
#: Open files kept per process (a folder of many single-frame files must not exhaust file descriptors).
MAX_OPEN_FILES = 8


class RecordingError(UserInputError):
    """A recording that cannot be read as camera frames; its one-line message names the problem and fix."""


@dataclass(frozen=True)
class FrameSource:
    """Where a frame is stored: its file and the page (IFD, from 0) in that file."""

    path: Path
    page: int

    def __str__(self) -> str:
        return f"{self.path.name}, page {self.page}"


@dataclass(frozen=True)
class _Segment:
    """The frames of one TIFF series: segment frame ``k`` is page ``first_page + k·page_step`` of the series.

    ``file_page0`` is the file page index of the series' first page (for :class:`FrameSource`);
    ``data_offset`` is the byte offset of the series' contiguous uncompressed data, or ``None`` when pages
    must be decoded by tifffile.
    """

    series: int
    first_page: int
    page_step: int
    n_frames: int
    file_page0: int
    data_offset: int | None


@dataclass(frozen=True)
class _FileIndex:
    """Frames of one file: its segments in order, with the file's byte order for raw reads."""

    path: Path
    segments: tuple[_Segment, ...]
    byteorder: str

    @property
    def n_frames(self) -> int:
        return sum(segment.n_frames for segment in self.segments)


def _one_line(error: BaseException, limit: int = 160) -> str:
    """An exception as a short single line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_finite(frame: np.ndarray, index: int, where: str = "") -> None:
    """Raise :class:`RecordingError` if ``frame`` (any shape) holds NaN or inf; ``index`` names the frame.

    Integer frames are always finite and cost nothing. ``where`` (e.g. ``"07.tif, page 0"``) is added to
    the message.
    """
    if not np.issubdtype(frame.dtype, np.floating):
        return
    finite = np.isfinite(frame)
    if finite.all():
        return
    location = f" ({where})" if where else ""
    raise RecordingError(
        f"frame {index}{location} has {finite.size - int(finite.sum())} NaN/inf pixel(s): "
        "repair or drop that frame before inference"
    )


class _TiffErrorLog(logging.Handler):
    """Collects the errors tifffile logs (instead of raising) while a file is indexed."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _tifffile_errors() -> Iterator[_TiffErrorLog]:
    """Capture tifffile's logged errors (broken IFD chains, metadata that does not fit the pages)."""
    logger = logging.getLogger("tifffile")
    handler = _TiffErrorLog()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _frame_layout(
    path: Path, series: tifffile.TiffPageSeries, channel: int | None, axes: str | None = None
) -> tuple[int, int, int]:
    """``(n_frames, first_page, page_step)`` of a series whose pages are the C-order planes of its axes
    (``axes``: the user's names for them, replacing the file's; same length)."""
    shape = tuple(series.shape)
    if axes is not None and len(axes) != len(shape):
        raise RecordingError(
            f"{path.name}: axes={axes} names {len(axes)} axes but the file has {len(shape)} "
            f"({series.axes}, shape {'×'.join(map(str, shape))}): give one letter per axis, e.g. "
            f"axes=T{'YX' if len(shape) == 3 else 'ZYX'}"
        )
    axes = axes or series.axes
    if "S" in axes or series.pages[0] is not None and series.pages[0].samplesperpixel > 1:
        raise RecordingError(
            f"{path.name}: RGB TIFFs are not supported: export a single-channel (grayscale) stack"
        )
    if len(axes) < 2 or axes[-2:] != "YX":
        raise RecordingError(
            f"{path.name}: unsupported axes {axes!r} (frames must end in YX): export a plain TIFF stack"
        )
    plane_axes, plane_shape = axes[:-2], shape[:-2]
    strides = [math.prod(plane_shape[i + 1 :]) for i in range(len(plane_shape))]
    frame_axes = [
        (axis, size, stride)
        for axis, size, stride in zip(plane_axes, plane_shape, strides)
        if size > 1 and axis != CHANNEL_AXIS
    ]
    others = [axis for axis, _, _ in frame_axes if axis not in FRAME_AXES]
    if others:
        raise RecordingError(
            f"{path.name}: unsupported axes {', '.join(others)} in {axes!r} (accepted: "
            f"{', '.join(FRAME_AXES)} for frames, C for channels, YX): export a single "
            "time series"
        )
    if len(frame_axes) > 1:
        sizes = " and ".join(f"{axis}={size}" for axis, size, _ in frame_axes)
        raise RecordingError(
            f"{path.name}: hyperstack has several frame axes ({sizes}): "
            "export a single time series (one z-plane)"
        )
    n_channels = shape[axes.index(CHANNEL_AXIS)] if CHANNEL_AXIS in plane_axes else 1
    if channel is None and n_channels > 1:
        raise RecordingError(
            f"{path.name}: {n_channels} channels found, one is needed: choose it with "
            f"channel=0..{n_channels - 1}, or pass axes={axes.replace(CHANNEL_AXIS, 'T')} if they are "
            "frames (a stack mislabelled as channels)"
        )
    if channel is not None and not 0 <= channel < n_channels:
        raise RecordingError(
            f"{path.name}: channel={channel} asked for but the file has {n_channels} "
            f"channel(s): use channel=0..{n_channels - 1}"
        )
    first_page = (channel or 0) * strides[plane_axes.index(CHANNEL_AXIS)] if n_channels > 1 else 0
    if not frame_axes:
        return 1, first_page, 1
    _, n_frames, page_step = frame_axes[0]
    return n_frames, first_page, page_step


def _index_file(
    path: Path, channel: int | None, allow_float: bool, axes: str | None = None
) -> tuple[_FileIndex, tuple[int, int], np.dtype]:
    """Validate one TIFF file and index its frames; returns the index, frame shape ``(H, W)`` and dtype."""
    with _tifffile_errors() as errors:
        try:
            # _multifile=False: an OME dataset split over several files is read one file at a time
            tif = tifffile.TiffFile(path, _multifile=False)
        except Exception as error:
            raise RecordingError(
                f"{path.name} is not a readable TIFF ({_one_line(error)}): check the file, "
                "or export the recording again as TIFF"
            ) from error
        try:
            return _index_open_file(path, tif, channel, allow_float, errors, axes)
        except RecordingError:
            raise
        except Exception as error:
            raise RecordingError(
                f"{path.name} is not a readable TIFF ({_one_line(error)}): check the file, "
                "or export the recording again as TIFF"
            ) from error
        finally:
            tif.close()


def _index_open_file(
    path: Path,
    tif: tifffile.TiffFile,
    channel: int | None,
    allow_float: bool,
    errors: _TiffErrorLog,
    axes: str | None = None,
) -> tuple[_FileIndex, tuple[int, int], np.dtype]:
    """:func:`_index_file` on an open file; ``errors`` holds what tifffile logged so far."""
    all_series = list(tif.series)
    if errors.messages:
        raise RecordingError(
            f"{path.name} is truncated or damaged (tifffile: {_one_line(errors.messages[0])}"
            "): copy the file again from its source"
        )
    numbered_series = [
        (number, series) for number, series in enumerate(all_series) if math.prod(series.shape) > 0
    ]
    if not numbered_series:
        raise RecordingError(f"{path.name} holds no frames: check the export")
    if tif.is_ome and len(numbered_series) > 1:
        raise RecordingError(
            f"{path.name}: OME-TIFF holds {len(numbered_series)} images (series): export one image per file"
        )

    file_size = os.path.getsize(path)
    segments: list[_Segment] = []
    frame_shape: tuple[int, int] | None = None
    dtype: np.dtype | None = None
    for number, series in numbered_series:
        n_frames, first_page, page_step = _frame_layout(path, series, channel, axes)
        series_shape, series_dtype = tuple(series.shape[-2:]), np.dtype(series.dtype)
        if frame_shape is None:
            frame_shape, dtype = series_shape, series_dtype
            _check_dtype(path, dtype, allow_float)
        elif (series_shape, series_dtype) != (frame_shape, dtype):
            raise RecordingError(
                f"{path.name} mixes frames of {_shape_text(frame_shape)} {dtype} and "
                f"{_shape_text(series_shape)} {series_dtype}: export frames of one shape "
                "and type"
            )
        data_offset = series.dataoffset
        if data_offset is not None:
            series_bytes = math.prod(series.shape) * series_dtype.itemsize
            if data_offset + series_bytes > file_size:
                raise RecordingError(
                    f"{path.name} is truncated ({file_size} bytes, its frames need "
                    f"{data_offset + series_bytes}): copy the file again from its source"
                )
        first = series.pages[0]
        file_page0 = first.index if first is not None else 0
        segments.append(
            _Segment(
                series=number,
                first_page=first_page,
                page_step=page_step,
                n_frames=n_frames,
                file_page0=file_page0,
                data_offset=data_offset,
            )
        )
    if errors.messages:
        raise RecordingError(
            f"{path.name} is truncated or damaged (tifffile: {_one_line(errors.messages[0])}"
            "): copy the file again from its source"
        )
    assert frame_shape is not None and dtype is not None
    return _FileIndex(path=path, segments=tuple(segments), byteorder=tif.byteorder), frame_shape, dtype


def _check_dtype(path: Path, dtype: np.dtype, allow_float: bool) -> None:
    if np.issubdtype(dtype, np.floating):
        if not allow_float:
            raise RecordingError(
                f"{path.name}: float frames found; counts are expected — pass "
                "allow_float=true if the frames are already in counts"
            )
    elif not np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        raise RecordingError(
            f"{path.name}: pixel type {dtype} is not supported: export integer counts (e.g. uint16)"
        )


def _shape_text(shape: tuple[int, int]) -> str:
    return f"{shape[0]}×{shape[1]}"


def _tiff_files(folder: Path) -> list[Path]:
    """The TIFF files directly in ``folder``, in natural order, hidden files left out."""
    files = [
        entry
        for entry in folder.iterdir()
        if entry.is_file() and entry.suffix.lower() in TIFF_SUFFIXES and not entry.name.startswith(".")
    ]
    return natsort.natsorted(files, key=lambda entry: entry.name, alg=natsort.ns.PATH)


class Recording:
    """A lazy, sliceable sequence of 2-D camera frames read page by page from TIFF files.

    Build it with :func:`open_recording`. ``recording[i]`` is frame ``i`` ``(H, W)`` in :attr:`dtype`;
    ``recording[a:b]`` and :meth:`frames` give ``(n, H, W)`` blocks. Use it as a context manager, or call
    :meth:`close`, to release its files; reading after ``close()`` reopens them.
    """

    def __init__(
        self,
        path: Path,
        files: list[_FileIndex],
        shape: tuple[int, int],
        dtype: np.dtype,
        channel: int | None,
    ) -> None:
        self.path = path
        self.channel = channel
        self._files = tuple(files)
        self._shape = shape
        self._dtype = dtype.newbyteorder("=")
        self._frame_starts = [0]
        for file in self._files:
            self._frame_starts.append(self._frame_starts[-1] + file.n_frames)
        self._handles: OrderedDict[tuple[int, bool], Any] = OrderedDict()
        self._pid = os.getpid()

    # ------------------------------------------------------------------------------------------ sequence
    def __len__(self) -> int:
        return self._frame_starts[-1]

    @property
    def shape(self) -> tuple[int, int]:
        """Frame shape ``(H, W)`` in pixels."""
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        """Pixel type of the frames as stored (e.g. uint16), native byte order."""
        return self._dtype

    @property
    def files(self) -> tuple[Path, ...]:
        """The TIFF files, in frame order."""
        return tuple(file.path for file in self._files)

    def __getitem__(self, index: int | slice) -> np.ndarray:
        """Frame ``index`` ``(H, W)``, or the frames of a slice ``(n, H, W)``; negative indices count back."""
        if isinstance(index, slice):
            return self._read_block(range(len(self))[index])
        return self._read(self._check_index(index))

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame_index in range(len(self)):
            yield self._read(frame_index)

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start ≤ i < stop`` as ``(n, H, W)`` (slice rules: clipped to the recording)."""
        return self[start:stop]

    def source_of(self, index: int) -> FrameSource:
        """File and page of frame ``index``."""
        _, file, segment, frame_in_segment = self._locate(self._check_index(index))
        page = segment.first_page + frame_in_segment * segment.page_step
        return FrameSource(path=file.path, page=segment.file_page0 + page)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data description for run records."""
        return {
            "path": str(self.path),
            "n_files": len(self._files),
            "n_frames": len(self),
            "shape": list(self._shape),
            "dtype": self._dtype.name,
            "channel": self.channel,
        }

    def __repr__(self) -> str:
        return (
            f"Recording({str(self.path)!r}, {len(self)} frames of {_shape_text(self._shape)} "
            f"{self._dtype.name}, {len(self._files)} file(s))"
        )

    # ------------------------------------------------------------------------------------------ reading
    def _check_index(self, index: int) -> int:
        frame_index = operator.index(index)
        if frame_index < 0:
            frame_index += len(self)
        if not 0 <= frame_index < len(self):
            raise IndexError(f"frame {index} is out of range for a recording of {len(self)} frames")
        return frame_index

    def _locate(self, frame_index: int) -> tuple[int, _FileIndex, _Segment, int]:
        """``(file number, file, segment, frame within the segment)`` of a frame."""
        file_number = bisect.bisect_right(self._frame_starts, frame_index) - 1
        file = self._files[file_number]
        offset = frame_index - self._frame_starts[file_number]
        for segment in file.segments:
            if offset < segment.n_frames:
                return file_number, file, segment, offset
            offset -= segment.n_frames
        raise AssertionError("frame index table is inconsistent")

    def _read_block(self, indices: range) -> np.ndarray:
        block = np.empty((len(indices), *self._shape), dtype=self._dtype)
        for row, frame_index in enumerate(indices):
            block[row] = self._read(frame_index)
        return block

    def _read(self, frame_index: int) -> np.ndarray:
        file_number, file, segment, frame_in_segment = self._locate(frame_index)
        page = segment.first_page + frame_in_segment * segment.page_step
        try:
            if segment.data_offset is not None:
                frame = self._read_raw(file_number, file, segment.data_offset, page)
            else:
                tif = self._handle(file_number, raw=False)
                frame = tif.asarray(key=page, series=segment.series, maxworkers=1)
                frame = np.asarray(frame).reshape(self._shape)
        except RecordingError:
            raise
        except Exception as error:
            where = FrameSource(file.path, segment.file_page0 + page)
            raise RecordingError(
                f"frame {frame_index} ({where}) could not be read ({_one_line(error)}): "
                "the file may be truncated or damaged — copy it again from its source"
            ) from error
        if frame.dtype != self._dtype:
            frame = frame.astype(self._dtype)
        check_finite(frame, frame_index, str(FrameSource(file.path, segment.file_page0 + page)))
        return frame

    def _read_raw(self, file_number: int, file: _FileIndex, data_offset: int, page: int) -> np.ndarray:
        """One plane of contiguous uncompressed data, read with a single positioned read."""
        stored = self._dtype.newbyteorder(file.byteorder)
        frame = np.empty(self._shape, dtype=stored)
        handle = self._handle(file_number, raw=True)
        handle.seek(data_offset + page * frame.nbytes)
        n_read = handle.readinto(memoryview(frame).cast("B"))
        if n_read != frame.nbytes:
            raise RecordingError(
                f"{file.path.name}, page {page}: only {n_read} of {frame.nbytes} bytes "
                "present, the file is truncated — copy it again from its source"
            )
        return frame

    def _handle(self, file_number: int, raw: bool) -> Any:
        """An open handle for a file in this process: a binary file (``raw``) or a ``TiffFile``."""
        if self._pid != os.getpid():  # forked (DataLoader worker): never share the parent's file offsets
            self.close()  # closes this process's copies of the descriptors only
            self._pid = os.getpid()
        key = (file_number, raw)
        handle = self._handles.get(key)
        if handle is not None:
            self._handles.move_to_end(key)
            return handle
        path = self._files[file_number].path
        handle = open(path, "rb") if raw else tifffile.TiffFile(path, _multifile=False)
        self._handles[key] = handle
        while len(self._handles) > MAX_OPEN_FILES:
            _, oldest = self._handles.popitem(last=False)
            oldest.close()
        return handle

    # ------------------------------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Close the open files (reading again reopens them)."""
        handles, self._handles = self._handles, OrderedDict()
        for handle in handles.values():
            handle.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handles", None):
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()  # open files are never pickled; each process opens its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()


def open_recording(
    path: str | os.PathLike[str],
    *,
    channel: int | None = None,
    allow_float: bool = False,
    min_shape: tuple[int, int] = (1, 1),
    axes: str | None = None,
) -> Recording:
    """Open a TIFF file or a folder of TIFFs as a :class:`Recording` (see the module docstring for layouts).

    Args:
        path: a ``.tif``/``.tiff`` file or a folder of them.
        channel: the channel to read from multi-channel hyperstacks (``C`` axis), from 0.
        allow_float: accept float pixels (they must already be camera counts).
        min_shape: smallest accepted frame ``(H, W)`` in pixels.
        axes: the axes of every file's series as tifffile's letters, replacing what its metadata says
            (e.g. ``"TYX"`` for a stack whose ImageJ header calls its frames channels).

    Only headers are read here; frames are read when indexed. Raises :class:`RecordingError`.
    """
    path = Path(path)
    if not path.exists():
        raise RecordingError(f"no such file or folder: {path}: check the path")
    if path.is_dir():
        files = _tiff_files(path)
        if not files:
            raise RecordingError(
                f"folder {path} holds no .tif/.tiff files: point to a TIFF stack or a folder of TIFF frames"
            )
    else:
        if path.suffix.lower() not in TIFF_SUFFIXES:
            raise RecordingError(
                f"{path.name} is not a TIFF ({path.suffix or 'no suffix'}): export the "
                "recording as a .tif/.tiff stack"
            )
        files = [path]
    if channel is not None and (isinstance(channel, bool) or not isinstance(channel, int) or channel < 0):
        raise RecordingError(f"channel must be a channel number ≥ 0, got {channel!r}: use channel=0, 1, ...")
    if axes is not None:
        axes = str(axes).upper()
        if not axes.endswith("YX") or len(set(axes)) != len(axes) or not set(axes) <= set(f"{FRAME_AXES}CYX"):
            raise RecordingError(
                f"axes={axes} is not a TIFF axes string: use one letter per axis from {FRAME_AXES}, C, "
                "ending in YX, e.g. axes=TYX"
            )

    indices: list[_FileIndex] = []
    first = files[0]
    shape: tuple[int, int] | None = None
    dtype: np.dtype | None = None
    for file in files:
        index, file_shape, file_dtype = _index_file(file, channel, allow_float, axes)
        if shape is None:
            shape, dtype = file_shape, file_dtype
        elif file_shape != shape:
            raise RecordingError(
                f"frames of different shapes: {first.name} has {_shape_text(shape)} px, "
                f"{file.name} has {_shape_text(file_shape)} px: all frames must share one "
                "shape (crop them alike)"
            )
        elif file_dtype != dtype:
            raise RecordingError(
                f"frames of different pixel types: {first.name} is {dtype}, {file.name} is "
                f"{file_dtype}: export all frames with one type"
            )
        indices.append(index)
    assert shape is not None and dtype is not None
    min_height, min_width = min_shape
    if shape[0] < min_height or shape[1] < min_width:
        raise RecordingError(
            f"frames are {_shape_text(shape)} px, smaller than the {min_height}×{min_width} "
            "px minimum: use larger frames (a bigger field of view or crop)"
        )
    return Recording(path, indices, shape, dtype, channel)


def recording_options(cfg: Any) -> dict[str, Any]:
    """:func:`open_recording`'s options from a command's config (keys ``channel``, ``axes``,
    ``allow_float``; missing ones take the defaults)."""
    return {
        "channel": cfg.get("channel"),
        "axes": cfg.get("axes"),
        "allow_float": bool(cfg.get("allow_float", False)),
    }


class RecordingDataset(Dataset):
    """One preprocessed frame per item, for a DataLoader over a recording.

    Items: ``{"frames": float32 tensor (H, W) in photons, "index": int64 tensor ()}`` (the frame's index
    in the recording). Works in DataLoader workers: the recording's files are reopened lazily in each
    process. Frames holding NaN/inf raise :class:`RecordingError` naming the frame.
    """

    def __init__(
        self,
        recording: Recording | str | os.PathLike[str],
        preprocessing: Preprocessing | None = None,
        **open_options: Any,
    ) -> None:
        """``recording``: an open :class:`Recording`, or a path given to :func:`open_recording` with
        ``open_options`` (``channel``, ``allow_float``, ``min_shape``, ``axes``)."""
        if isinstance(recording, Recording):
            if open_options:
                raise TypeError("open options only apply when a path is given, not an open Recording")
            self.recording = recording
        else:
            self.recording = open_recording(recording, **open_options)
        self.preprocessing = preprocessing if preprocessing is not None else Preprocessing()

    def __len__(self) -> int:
        return len(self.recording)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        frame_index = self.recording._check_index(index)
        counts = self.recording[frame_index].astype(np.float32)
        photons = self.preprocessing(counts)
        return {"frames": torch.from_numpy(photons), "index": torch.tensor(frame_index, dtype=torch.int64)}

    def close(self) -> None:
        self.recording.close()
