"""infer.py through the real CLI on bad input: one ``error:`` line naming the frame and the cause, exit 2,
nothing left in ``out`` that looks like a result — also when the bad frame is read in a DataLoader worker."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
from helpers_checkpoints import FRAME_PX, save_tiny_checkpoint

from dstorm3d.utils.cli import one_line
from dstorm3d.utils.paths import REPO_ROOT


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("infer_cli")
    return save_tiny_checkpoint(folder / "tiny.ckpt", ["model/head=offsets"], folder)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_nan_frame_is_named_even_from_a_dataloader_worker(checkpoint, tmp_path, workers):
    frames = np.random.default_rng(0).uniform(20, 60, (4, FRAME_PX, FRAME_PX)).astype(np.float32)
    frames[2, 3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", frames, photometric="minisblack")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "infer.py"), f"ckpt={checkpoint}",
                             f"data={tmp_path / 'nan.tif'}", "allow_float=true", f"num_workers={workers}",
                             "batch_size=1", f"out={out}", f"hydra.run.dir={tmp_path / 'hydra'}"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "frame 2 (nan.tif, page 2) has 1 NaN/inf pixel(s)" in errors[0], errors
    assert "DataLoader worker" not in errors[0]
    assert not (out / "localizations.csv").exists() and not (out / "summary.json").exists()


def test_one_line_unwraps_a_dataloader_worker_error():
    class RecordingError(ValueError):
        pass

    wrapped = RecordingError("Caught RecordingError in DataLoader worker process 1.\nOriginal Traceback (most "
                             "recent call last):\n  File \"x.py\", line 3, in f\n    raise ...\n"
                             "RecordingError: frame 7 has 1 NaN/inf pixel(s)\n")
    assert one_line(wrapped) == "frame 7 has 1 NaN/inf pixel(s)"
    assert one_line(ValueError("first line\nsecond")) == "first line"
    assert one_line(ValueError("")) == "ValueError"


@pytest.mark.slow
@pytest.mark.parametrize("setting, key", [
    ("batch_size=0", "batch_size=0"), ("num_workers=-1", "num_workers=-1"),
    ("preprocessing.adu_per_photon=0", "preprocessing.adu_per_photon"),
    ("preprocessing.baseline=abc", "preprocessing.baseline"), ("render_pixel_nm=0", "render_pixel_nm=0"),
    ("margin=-3", "margin=-3"), ("threshold=-1", "threshold=-1"), ("threads=0", "threads"),
    ("out={file}/inside", "out="),
])
def test_bad_settings_stop_with_one_line_before_any_work(checkpoint, tmp_path, setting, key):
    frames = np.random.default_rng(0).uniform(20, 60, (2, FRAME_PX, FRAME_PX)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "ok.tif", frames, photometric="minisblack")
    (tmp_path / "a_file").write_text("not a folder")
    setting = setting.format(file=tmp_path / "a_file")
    out = tmp_path / "out"
    args = [f"ckpt={checkpoint}", f"data={tmp_path / 'ok.tif'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    args += [setting] if setting.startswith("out=") else [f"out={out}", setting]
    result = subprocess.run([sys.executable, str(REPO_ROOT / "infer.py"), *args], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and key in lines[-1], lines[-3:]
    assert sum(line.startswith("error: ") for line in lines) == 1 and "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing written, nothing half-written


def test_writable_folder_refuses_a_folder_that_cannot_be_made_or_is_full(tmp_path):
    from dstorm3d.errors import UserInputError
    from dstorm3d.utils.validate import writable_folder

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="out=.*cannot write there"):
        writable_folder("out", tmp_path / "file" / "inside")
    with pytest.raises(UserInputError, match="MB free on its disk"):
        writable_folder("out", tmp_path / "ok", min_free_bytes=1 << 62)
    assert writable_folder("out", tmp_path / "ok2").is_dir()
