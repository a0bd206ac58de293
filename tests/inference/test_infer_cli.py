"""infer.py through the real CLI on bad input: one ``error:`` line naming the frame and the cause, exit 2,
nothing left in ``out`` that looks like a result — also when the bad frame is read in a DataLoader worker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

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
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "infer.py"),
            f"ckpt={checkpoint}",
            f"data={tmp_path / 'nan.tif'}",
            "allow_float=true",
            f"num_workers={workers}",
            "batch_size=1",
            f"out={out}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "frame 2 (nan.tif, page 2) has 1 NaN/inf pixel(s)" in errors[0], errors
    assert "DataLoader worker" not in errors[0]
    assert not (out / "localizations.csv").exists() and not (out / "summary.json").exists()


def test_one_line_unwraps_a_dataloader_worker_error():
    class RecordingError(ValueError):
        pass

    wrapped = RecordingError(
        "Caught RecordingError in DataLoader worker process 1.\nOriginal Traceback (most "
        'recent call last):\n  File "x.py", line 3, in f\n    raise ...\n'
        "RecordingError: frame 7 has 1 NaN/inf pixel(s)\n"
    )
    assert one_line(wrapped) == "frame 7 has 1 NaN/inf pixel(s)"
    assert one_line(ValueError("first line\nsecond")) == "first line"
    assert one_line(ValueError("")) == "ValueError"


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting, key",
    [
        ("batch_size=0", "batch_size=0"),
        ("num_workers=-1", "num_workers=-1"),
        ("+preprocessing.adu_per_photon=0", "preprocessing.adu_per_photon is gone"),
        ("preprocessing.subtract_minimum=abc", "preprocessing.subtract_minimum"),
        ("camera.kind=ccd", "camera.kind must be one of"),
        ("camera=nope", "camera"),
        ("render_pixel_nm=0", "render_pixel_nm=0"),
        ("margin=-3", "margin=-3"),
        ("threshold=-1", "threshold=-1"),
        ("threads=0", "threads"),
        ("out={file}/inside", "out="),
    ],
)
def test_bad_settings_stop_with_one_line_before_any_work(checkpoint, tmp_path, setting, key):
    frames = np.random.default_rng(0).uniform(20, 60, (2, FRAME_PX, FRAME_PX)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "ok.tif", frames, photometric="minisblack")
    (tmp_path / "a_file").write_text("not a folder")
    setting = setting.format(file=tmp_path / "a_file")
    out = tmp_path / "out"
    args = [f"ckpt={checkpoint}", f"data={tmp_path / 'ok.tif'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    args += [setting] if setting.startswith("out=") else [f"out={out}", setting]
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "infer.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
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


def infer_command(checkpoint, data, out, tmp_path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO_ROOT / "infer.py"),
        f"ckpt={checkpoint}",
        f"data={data}",
        f"out={out}",
        "num_workers=0",
        "overlay_frames=0",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        *extra,
    ]


def recording(tmp_path, frames: int):
    path = tmp_path / f"rec{frames}.tif"
    data = np.random.default_rng(1).poisson(40.0, (frames, FRAME_PX, FRAME_PX)).astype(np.uint16)
    tifffile.imwrite(path, data, photometric="minisblack")
    return path


@pytest.mark.slow
def test_two_concurrent_runs_on_one_out_leave_one_complete_output_and_one_clear_refusal(checkpoint, tmp_path):
    data, out = recording(tmp_path, 300), tmp_path / "out"
    runs = [
        subprocess.Popen(
            infer_command(checkpoint, data, out, tmp_path / f"h{i}", "batch_size=1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for i in (0, 1)
    ]
    results = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [r[2][-1500:] for r in results]
    refusal = next(err for code, _, err in results if code == 2).strip().splitlines()[-1]
    assert refusal.startswith("error: ") and ("is in use by another run" in refusal or "exists" in refusal), (
        refusal
    )
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "localizations.csv") as handle:
        rows = sum(1 for _ in handle) - 1
    assert summary["frames"] == 300 and summary["localizations"] == rows  # complete and consistent
    assert not list(out.glob(".*"))  # no part file, no lock left


@pytest.mark.slow
def test_a_run_killed_midway_leaves_nothing_that_looks_complete_and_the_rerun_takes_over(
    checkpoint, tmp_path
):
    data, out = recording(tmp_path, 2000), tmp_path / "out"
    run = subprocess.Popen(
        infer_command(checkpoint, data, out, tmp_path, "batch_size=1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 240
    while not list(out.glob(".localizations.rank*.part.csv")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run.poll() is None, "the run ended before it could be killed"
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    assert not (out / "localizations.csv").exists() and not (out / "summary.json").exists()
    assert (out / ".dstorm3d.lock").read_text() == str(run.pid)  # stale: its process is gone
    small = recording(tmp_path, 3)
    result = subprocess.run(
        infer_command(checkpoint, small, out, tmp_path / "again"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-1500:]
    assert json.loads((out / "summary.json").read_text())["frames"] == 3
    assert not (out / ".dstorm3d.lock").exists()


def test_a_live_lock_is_refused_and_released_after_use(tmp_path):
    from dstorm3d.errors import UserInputError
    from dstorm3d.utils.files import FolderLock

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".dstorm3d.lock").write_text(str(holder.pid))
        with pytest.raises(UserInputError, match=rf"is in use by another run \(process {holder.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(tmp_path) as lock:  # the holder is gone: its lock is stale and taken over
        assert lock.path.read_text() == str(os.getpid())
    assert not (tmp_path / ".dstorm3d.lock").exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("hyper_parameters", "incomplete dstorm3d checkpoint (no hyper_parameters)"),
        ("half_state", "cannot be loaded as a LocalizerModule"),
    ],
)
def test_a_damaged_checkpoint_is_one_line(checkpoint, tmp_path, damage, message):
    import torch

    from dstorm3d.errors import UserInputError
    from dstorm3d.modules.checkpoints import load_module

    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if damage == "hyper_parameters":
        raw.pop("hyper_parameters")
    else:
        keys = sorted(raw["state_dict"])
        raw["state_dict"] = {k: raw["state_dict"][k] for k in keys[: len(keys) // 2]}
    torch.save(raw, tmp_path / "damaged.ckpt")
    with pytest.raises(UserInputError, match=re.escape(message)):
        load_module(tmp_path / "damaged.ckpt")
