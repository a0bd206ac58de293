"""Reading recordings: every accepted TIFF layout, clear errors for bad input, bounded memory, datasets."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import REPO_ROOT, shared_path
from PIL import Image

from dstorm3d.inference.preprocess import Preprocessing
from dstorm3d.inference.recording import (
    FrameSource,
    Recording,
    RecordingDataset,
    RecordingError,
    check_finite,
    open_recording,
)
from dstorm3d.simulation.camera import SCMOS


def distinct_frames(n: int, height: int = 12, width: int = 20, dtype: type = np.uint16) -> np.ndarray:
    """``(n, H, W)`` frames whose every pixel differs (values identify frame, row and column)."""
    return (np.arange(n * height * width) % 60_000).reshape(n, height, width).astype(dtype)


def write_tiff(path: Path, data: object, **options: object) -> None:
    """``tifffile.imwrite`` storing grayscale pages (tifffile would take a leading 3 or 4 for RGB planes)."""
    options.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, data, **options)


def assert_reads_as(recording: Recording, expected: np.ndarray) -> None:
    """Length, shape, dtype and every frame (read one at a time) match ``expected`` ``(n, H, W)``."""
    assert len(recording) == expected.shape[0]
    assert recording.shape == expected.shape[1:]
    assert recording.dtype == expected.dtype
    for index in range(len(recording)):
        frame = recording[index]
        assert frame.shape == expected.shape[1:] and frame.dtype == expected.dtype
        np.testing.assert_array_equal(frame, expected[index], err_msg=f"frame {index}")


# ------------------------------------------------------------------------------------------ accepted layouts
def test_single_page(tmp_path: Path):
    frame = distinct_frames(1)[0]
    write_tiff(tmp_path / "one.tif", frame)
    with open_recording(tmp_path / "one.tif") as recording:
        assert_reads_as(recording, frame[None])
        assert recording.source_of(0) == FrameSource(tmp_path / "one.tif", 0)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_multi_page_stack_page_by_page(tmp_path: Path, compression: str | None):
    frames = distinct_frames(7)
    write_tiff(tmp_path / "stack.tiff", frames, compression=compression)
    with open_recording(tmp_path / "stack.tiff") as recording:
        assert_reads_as(recording, frames)
        np.testing.assert_array_equal(recording[-1], frames[-1])
        np.testing.assert_array_equal(recording[2:5], frames[2:5])
        np.testing.assert_array_equal(recording.frames(5), frames[5:])
        np.testing.assert_array_equal(np.stack(list(recording)), frames)
        assert str(recording.source_of(6)) == "stack.tiff, page 6"
        with pytest.raises(IndexError):
            recording[7]


def test_other_pixel_types_and_byte_order(tmp_path: Path):
    frames8 = distinct_frames(3, dtype=np.uint8)
    write_tiff(tmp_path / "u8.tif", frames8)
    assert_reads_as(open_recording(tmp_path / "u8.tif"), frames8)
    big_endian = distinct_frames(3, dtype=np.int32)
    write_tiff(tmp_path / "be.tif", big_endian, byteorder=">")
    recording = open_recording(tmp_path / "be.tif")
    assert recording.dtype == np.dtype(np.int32)  # native order whatever the file's
    assert_reads_as(recording, big_endian)


def test_float_frames_with_allow_float(tmp_path: Path):
    frames = distinct_frames(3).astype(np.float32) / 4
    write_tiff(tmp_path / "float.tif", frames)
    assert_reads_as(open_recording(tmp_path / "float.tif", allow_float=True), frames)


def test_appended_series_are_frames_in_order(tmp_path: Path):
    frames = distinct_frames(4)
    for frame in frames:  # one shaped series per call, as acquisition scripts write
        write_tiff(tmp_path / "appended.tif", frame, append=True)
    recording = open_recording(tmp_path / "appended.tif")
    assert_reads_as(recording, frames)
    assert recording.source_of(3).page == 3


def test_imagej_hyperstack_time_and_single_channel(tmp_path: Path):
    frames = distinct_frames(5)
    write_tiff(tmp_path / "ij.tif", frames[:, None, None], imagej=True, metadata={"axes": "TZCYX"})
    assert_reads_as(open_recording(tmp_path / "ij.tif"), frames)


def test_imagej_hyperstack_channel_choice(tmp_path: Path):
    data = distinct_frames(5 * 3).reshape(5, 3, 12, 20)  # T, C, Y, X
    write_tiff(tmp_path / "ijc.tif", data, imagej=True, metadata={"axes": "TCYX"})
    with pytest.raises(RecordingError, match=r"3 channels found.*channel=0\.\.2"):
        open_recording(tmp_path / "ijc.tif")
    recording = open_recording(tmp_path / "ijc.tif", channel=1)
    assert_reads_as(recording, data[:, 1])
    assert recording.source_of(2).page == 2 * 3 + 1
    with pytest.raises(RecordingError, match="channel=3 asked for"):
        open_recording(tmp_path / "ijc.tif", channel=3)


def test_axes_override_reads_frames_labelled_as_channels(tmp_path: Path):
    """The SMLM Challenge 2016's frames TIFF calls its 64 frames channels (ImageJ ``channels=64``)."""
    frames = distinct_frames(6)
    write_tiff(tmp_path / "c.tif", frames, imagej=True, metadata={"axes": "CYX"})
    with pytest.raises(RecordingError, match=r"6 channels found.*or pass axes=TYX if they are frames"):
        open_recording(tmp_path / "c.tif")
    assert_reads_as(open_recording(tmp_path / "c.tif", axes="tyx"), frames)
    with pytest.raises(RecordingError, match=r"axes=TZYX names 4 axes but the file has 3 \(CYX"):
        open_recording(tmp_path / "c.tif", axes="TZYX")
    for bad in ("TXY", "TTYX", "SYX"):
        with pytest.raises(RecordingError, match=f"axes={bad} is not a TIFF axes string"):
            open_recording(tmp_path / "c.tif", axes=bad)


def test_hyperstack_z_planes_as_frames_and_time_with_z_refused(tmp_path: Path):
    planes = distinct_frames(6)
    write_tiff(tmp_path / "z.tif", planes, imagej=True, metadata={"axes": "ZYX"})
    assert_reads_as(open_recording(tmp_path / "z.tif"), planes)
    write_tiff(
        tmp_path / "tz.tif", distinct_frames(6).reshape(3, 2, 12, 20), imagej=True, metadata={"axes": "TZYX"}
    )
    with pytest.raises(RecordingError, match=r"several frame axes \(T=3 and Z=2\)"):
        open_recording(tmp_path / "tz.tif")


def test_ome_tiff(tmp_path: Path):
    frames = distinct_frames(4)
    write_tiff(tmp_path / "movie.ome.tif", frames, ome=True, metadata={"axes": "TYX"})
    assert_reads_as(open_recording(tmp_path / "movie.ome.tif"), frames)
    channels = distinct_frames(8).reshape(4, 2, 12, 20)
    write_tiff(tmp_path / "two.ome.tif", channels, ome=True, metadata={"axes": "TCYX"})
    assert_reads_as(open_recording(tmp_path / "two.ome.tif", channel=1), channels[:, 1])


def test_folder_natural_order_multi_page_files(tmp_path: Path):
    frames = distinct_frames(6)
    write_tiff(tmp_path / "10.tif", frames[3:])  # 3 frames, natural order puts it last
    write_tiff(tmp_path / "2.tif", frames[1:3])  # 2 frames
    write_tiff(tmp_path / "1.TIFF", frames[0])  # 1 frame, upper-case suffix
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "._2.tif").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork: ignored
    (tmp_path / "sub").mkdir()
    write_tiff(tmp_path / "sub" / "0.tif", frames[0])  # subfolders are not read
    recording = open_recording(tmp_path)
    assert [path.name for path in recording.files] == ["1.TIFF", "2.tif", "10.tif"]
    assert_reads_as(recording, frames)
    assert str(recording.source_of(4)) == "10.tif, page 1"
    np.testing.assert_array_equal(recording[1:5], frames[1:5])  # a block across files


def test_real_mito_frame(tmp_path: Path):
    path = shared_path("experimental", "mito_tetrapod", "01.tif")
    with open_recording(path) as recording:
        assert len(recording) == 1 and recording.shape == (332, 492) and recording.dtype == np.uint16
        np.testing.assert_array_equal(recording[0], tifffile.imread(path))
        assert 30 < recording[0].mean() < 80  # minimum-subtracted counts, mean ≈ 50
    folder = open_recording(path.parent)
    assert len(folder) == 25 and folder.source_of(24).path.name == "25.tif"


# ------------------------------------------------------------------------------------------ bad input
def test_missing_path(tmp_path: Path):
    with pytest.raises(RecordingError, match="no such file or folder"):
        open_recording(tmp_path / "absent.tif")


def test_png_renamed_tif(tmp_path: Path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "frame.png")
    (tmp_path / "frame.tif").write_bytes((tmp_path / "frame.png").read_bytes())
    with pytest.raises(RecordingError, match="frame.tif is not a readable TIFF"):
        open_recording(tmp_path / "frame.tif")
    with pytest.raises(RecordingError, match=r"frame.png is not a TIFF \(.png\)"):
        open_recording(tmp_path / "frame.png")


def test_text_file(tmp_path: Path):
    (tmp_path / "notes.tif").write_text("frame 1: 12 molecules\n")
    with pytest.raises(RecordingError, match="not a readable TIFF"):
        open_recording(tmp_path / "notes.tif")


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_stack(tmp_path: Path, compression: str | None):
    path = tmp_path / "cut.tif"
    write_tiff(path, distinct_frames(20, 32, 32), compression=compression)
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(RecordingError, match="cut.tif is truncated"):
        open_recording(path)


def test_truncated_data_detected_by_size(tmp_path: Path):
    """A contiguous stack whose IFDs all survive but whose pixel data is cut short."""
    path = tmp_path / "short.tif"
    write_tiff(path, distinct_frames(1, 32, 32))
    os.truncate(path, os.path.getsize(path) - 100)
    with pytest.raises(RecordingError, match=r"short.tif is truncated \(\d+ bytes, its frames need \d+\)"):
        open_recording(path)


def test_damaged_page_names_the_frame(tmp_path: Path):
    frames = distinct_frames(5, 32, 32)
    path = tmp_path / "damaged.tif"
    write_tiff(path, frames, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        start, size = tif.pages[3].dataoffsets[0], tif.pages[3].databytecounts[0]
    content = bytearray(path.read_bytes())
    content[start : start + size] = b"\xff" * size
    path.write_bytes(bytes(content))
    recording = open_recording(path)
    np.testing.assert_array_equal(recording[2], frames[2])
    with pytest.raises(RecordingError, match=r"frame 3 \(damaged.tif, page 3\) could not be read"):
        recording[3]


def test_rgb(tmp_path: Path):
    write_tiff(tmp_path / "rgb.tif", np.zeros((8, 10, 3), np.uint8), photometric="rgb")
    expected = r"RGB TIFFs are not supported: export a single-channel \(grayscale\) stack"
    with pytest.raises(RecordingError, match=expected):
        open_recording(tmp_path / "rgb.tif")


def test_float_without_allow_float(tmp_path: Path):
    write_tiff(tmp_path / "float.tif", np.zeros((2, 8, 10), np.float32))
    expected = (
        "float frames found; counts are expected — pass allow_float=true if the frames are already in counts"
    )
    with pytest.raises(RecordingError, match=expected):
        open_recording(tmp_path / "float.tif")


def test_empty_folder_and_empty_stack(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no frames here")
    with pytest.raises(RecordingError, match="holds no .tif/.tiff files"):
        open_recording(tmp_path / "empty")
    with pytest.warns(UserWarning):
        write_tiff(tmp_path / "nothing.tif", np.zeros((0, 8, 10), np.uint16))
    with pytest.raises(RecordingError, match="nothing.tif holds no frames"):
        open_recording(tmp_path / "nothing.tif")


def test_mixed_shapes(tmp_path: Path):
    write_tiff(tmp_path / "1.tif", np.zeros((16, 16), np.uint16))
    write_tiff(tmp_path / "2.tif", np.zeros((16, 20), np.uint16))
    with pytest.raises(RecordingError, match="different shapes: 1.tif has 16×16 px, 2.tif has 16×20"):
        open_recording(tmp_path)
    write_tiff(tmp_path / "mixed.tif", np.zeros((16, 16), np.uint16))
    write_tiff(tmp_path / "mixed.tif", np.zeros((8, 8), np.uint16), append=True)
    with pytest.raises(RecordingError, match="mixed.tif mixes frames of 16×16 uint16 and 8×8 uint16"):
        open_recording(tmp_path / "mixed.tif")


def test_nan_frame_named_when_read(tmp_path: Path):
    frames = np.ones((4, 8, 10), np.float32)
    frames[2, 3, 4] = np.nan
    frames[2, 0, 0] = np.inf
    write_tiff(tmp_path / "nan.tif", frames)
    recording = open_recording(tmp_path / "nan.tif", allow_float=True)  # opening reads no pixels
    recording[1]
    with pytest.raises(RecordingError, match=r"frame 2 \(nan.tif, page 2\) has 2 NaN/inf pixel\(s\)"):
        recording[2]
    with pytest.raises(RecordingError, match="frame 2"):
        RecordingDataset(recording)[2]
    with pytest.raises(RecordingError, match="frame 7 has 1 NaN/inf"):
        check_finite(np.array([[0.0, np.nan]]), 7)
    check_finite(np.zeros((2, 2), np.uint16), 0)


def test_frames_below_minimum_size(tmp_path: Path):
    write_tiff(tmp_path / "small.tif", np.zeros((3, 16, 24), np.uint16))
    assert open_recording(tmp_path / "small.tif", min_shape=(16, 24)).shape == (16, 24)
    with pytest.raises(RecordingError, match="frames are 16×24 px, smaller than the 32×32 px minimum"):
        open_recording(tmp_path / "small.tif", min_shape=(32, 32))


def test_errors_are_one_line_value_errors(tmp_path: Path):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\x00" * 4)  # TIFF header pointing to no IFD
    with pytest.raises(ValueError) as caught:
        open_recording(tmp_path / "bad.tif")
    assert isinstance(caught.value, RecordingError) and "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------------ dataset
def test_dataset_items_preprocessed_and_picklable(tmp_path: Path):
    frames = distinct_frames(5)
    write_tiff(tmp_path / "stack.tif", frames)
    camera = SCMOS(offset_adu=100.0, gain_adu_per_e=2.0, read_var_adu2=0.0, qe=1.0)
    preprocessing = Preprocessing(camera=camera)
    dataset = RecordingDataset(tmp_path / "stack.tif", preprocessing)
    item = dataset[3]
    assert item["frames"].dtype == torch.float32 and item["frames"].shape == (12, 20)
    assert item["index"].dtype == torch.int64 and int(item["index"]) == 3
    expected = np.clip((frames[3].astype(np.float32) - 100) / 2, 0, None)
    np.testing.assert_allclose(item["frames"].numpy(), expected)
    assert int(dataset[-1]["index"]) == 4
    clone = pickle.loads(pickle.dumps(dataset))  # open handles are dropped, reopened on demand
    torch.testing.assert_close(clone[3]["frames"], item["frames"])


def test_dataset_in_dataloader_workers(tmp_path: Path):
    frames = distinct_frames(9)
    write_tiff(tmp_path / "5.tif", frames[:4])
    write_tiff(tmp_path / "12.tif", frames[4:], compression="zlib")
    dataset = RecordingDataset(tmp_path)
    dataset[0], dataset[8]  # the parent has both files open before the workers start
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    batches = list(loader)
    indices = torch.cat([batch["index"] for batch in batches])
    assert indices.tolist() == list(range(9))
    torch.testing.assert_close(
        torch.cat([batch["frames"] for batch in batches]), torch.from_numpy(frames.astype(np.float32))
    )


# ------------------------------------------------------------------------------------------ bounded memory
_MEMORY_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from dstorm3d.inference.recording import open_recording

    def status_kib(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

    before_kib = status_kib("VmRSS")  # imports done, nothing opened yet
    try:  # reset the peak (VmHWM) so that the import's transient peak does not count
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        peak_reset = True
    except OSError:
        peak_reset = False
    recording = open_recording(sys.argv[1])
    sampled_peak_kib, values = before_kib, []
    for index in range(len(recording)):
        values.append(int(recording[index][0, 0]))
        if index % 50 == 0:
            sampled_peak_kib = max(sampled_peak_kib, status_kib("VmRSS"))
    block = recording.frames(0, 16)
    peak_kib = max(sampled_peak_kib, status_kib("VmRSS"), status_kib("VmHWM") if peak_reset else 0)
    print(json.dumps({"before_kib": before_kib, "peak_kib": peak_kib, "values": values,
                      "block_ok": bool((block[:, 0, 0] == np.arange(16)).all())}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to measure memory")
def test_reading_a_large_stack_keeps_memory_bounded(tmp_path: Path):
    """Iterate over a 262 MB stack in a fresh process: its resident memory may grow by at most 1/8 of the
    file. Loading the stack, or memory-mapping it whole and keeping the touched pages, grows it by the
    file size and fails."""
    n_frames, height, width = 2000, 256, 256
    path = tmp_path / "large.tif"
    frame_values = (np.full((height, width), index, np.uint16) for index in range(n_frames))
    write_tiff(path, frame_values, shape=(n_frames, height, width), dtype=np.uint16)  # one at a time
    file_kib = os.path.getsize(path) / 1024
    assert file_kib > 250_000

    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(path)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    print(
        f"resident memory {report['before_kib'] / 1024:.0f} MiB → peak {report['peak_kib'] / 1024:.0f} MiB "
        f"while reading a {file_kib / 1024:.0f} MiB stack"
    )
    assert report["values"] == list(range(n_frames)) and report["block_ok"]
    growth_kib = report["peak_kib"] - report["before_kib"]
    assert growth_kib < file_kib / 8, f"reading grew resident memory by {growth_kib / 1024:.0f} MiB"
