"""``infer(cfg)``: localize a recording with a trained checkpoint — the body of ``infer.py``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from dstorm3d.inference.outputs import (
    existing_outputs,
    merge_parts,
    overlay_figure,
    per_frame_counts,
    read_localizations,
    render_figure,
    save_json,
    super_resolution_render,
)
from dstorm3d.inference.preprocess import Preprocessing
from dstorm3d.inference.recording import RecordingDataset, RecordingError, open_recording, recording_options
from dstorm3d.inference.writer import LocalizationWriter
from dstorm3d.models.tiling import required_head_margin, required_margin
from dstorm3d.modules.checkpoints import load_module, read_checkpoint_kind
from dstorm3d.simulation.camera import Camera, camera_from_config
from dstorm3d.utils.cli import UserInputError, one_line, set_threads
from dstorm3d.utils.files import FolderLock
from dstorm3d.utils.rates import rate_text
from dstorm3d.utils.tiff import write_imagej_tiff
from dstorm3d.utils.validate import integer, number, writable_folder
from dstorm3d.visualization import save_figure

log = logging.getLogger(__name__)

OUTPUT_FILES = ("localizations.csv", "render.png", "render.tif", "render_counts_zmean.tif", "summary.json")
MIN_FRAME_PX = 8
# ``auto`` tiles (camera pixels) {on a CPU: ..., elsewhere: ...}: on CPUs the head on cache-sized 64-px tiles
# and large outer tiles (their context costs time; the head tiles already bound the memory); on GPUs the
# head whole. The choice is measured by benchmarks/inference.py (results in benchmarks/results/).
AUTO_TILE = {True: 1024, False: 256}
AUTO_HEAD_TILE = {True: 64, False: None}


def default_precision() -> str:
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def check_applicable(
    module: Any, shape: tuple[int, int], tile: int | None = None, head_tile: int | None = None
) -> None:
    """Refuse recordings the checkpoint cannot localize, or whose pieces (frames, tiles or head tiles,
    with their context) would make a volume too large for one pass."""
    height, width = shape
    if min(height, width) < MIN_FRAME_PX:
        raise UserInputError(
            f"frames of {height}×{width} px are too small for this network: need at least "
            f"{MIN_FRAME_PX}×{MIN_FRAME_PX} px"
        )
    piece = (height, width)  # the largest input the head sees at once, camera pixels with context
    for size, margin in ((tile, required_margin), (head_tile, required_head_margin)):
        if size is not None:
            reach = size + 2 * margin(module.net)
            piece = (min(piece[0], reach), min(piece[1], reach))
    factor = (
        2 ** int(module.hparams.head.get("upsampling", 0)) if module.hparams.head["kind"] == "volume" else 1
    )
    if (
        factor > 1
        and (piece[0] * factor * piece[1] * factor * int(module.hparams.head.get("depth_slices", 1))) > 2e9
    ):
        raise UserInputError(
            f"a {height}×{width} frame makes a volume too large for one pass: set tile=<px> "
            "(e.g. tile=256) or head_tile=<px> so frames are processed in pieces"
        )


def compatibility_warnings(module: Any, recording: Any, dataset: Any) -> list[str]:
    """Log and return warnings where the recording is unlike the checkpoint's training frames (its metadata,
    frame size, background level and PSF brightness; :mod:`dstorm3d.inference.compatibility`)."""
    from dstorm3d.inference.compatibility import (
        compare_with_training,
        metadata_warnings,
        recording_statistics,
        training_statistics,
        units,
    )

    found = metadata_warnings(module, list(recording.files), recording.shape)
    unit, slack = units(module)
    check = compare_with_training(
        recording_statistics(module, dataset), training_statistics(module), unit=unit, slack=slack
    )
    found += check.warnings()
    for line in found:
        log.warning(line)
    return found


def overlay_frames(
    module: Any,
    recording: Any,
    preprocessing: Preprocessing,
    table: dict[str, np.ndarray],
    count: int,
    folder: Path,
) -> list[str]:
    """Re-render the first ``count`` frames from their localizations with the physical model (the
    checkpoint's PSF model, its blur combined with a 1-pixel one): each localization's brightness and a
    background level are fitted to the frame (non-negative least squares)."""
    from scipy.optimize import nnls

    from dstorm3d.optics.psf_model import total_blur_px
    from dstorm3d.optics.render import render_frames

    names = []
    pupil = module.simulator.pupil
    blur = total_blur_px(module.psf.blur_sigma_px, 1.0)
    setup = module.optical_setup
    window = min(setup.pupil_grid, 96)
    for index in range(min(count, len(recording))):
        frame = preprocessing(recording[index].astype(np.float32)).astype(np.float64)
        here = table["frame"] == index + 1
        xyz = torch.tensor(
            np.stack([table["x"][here], table["y"][here], table["z"][here]], axis=1) / 1e3,
            dtype=torch.float32,
        ).reshape(-1, 3)
        columns = []
        with torch.no_grad():
            for i in range(xyz.shape[0]):
                psf = render_frames(
                    pupil.cpu(),
                    xyz[i : i + 1],
                    torch.ones(1),
                    torch.zeros(1, dtype=torch.long),
                    1,
                    frame.shape,
                    window=window,
                    blur_sigma_px=blur,
                )
                columns.append(psf[0].double().numpy().ravel())
        design = np.stack([*columns, np.ones(frame.size)], axis=1)
        weights, _ = nnls(design, frame.ravel(), maxiter=20 * design.shape[1])
        rendered = (design @ weights).reshape(frame.shape)
        name = f"overlay_frame{index + 1:04d}.png"
        title = f"frame {index + 1}: {xyz.shape[0]} localizations"
        save_figure(overlay_figure(frame, rendered, setup.pixel_size_um, title), folder / name)
        names.append(name)
    return names


def use_channels_last(setting: str | bool, accelerator: str) -> bool:
    """``channels_last`` setting: true/false, or ``auto`` = on CPUs only (where oneDNN's convolutions
    gain from it; on GPUs it did not help: benchmarks/results/inference_*channels_last*.md)."""
    if isinstance(setting, bool):
        return setting
    if str(setting).lower() != "auto":
        raise UserInputError(f"channels_last must be auto, true or false, got {setting!r}")
    return accelerator == "CPUAccelerator"


def resolve_tile(name: str, setting: Any, accelerator: str, auto: dict[bool, int | None]) -> int | None:
    """A ``tile`` or ``head_tile`` setting: pixels, null (off), or ``auto`` = ``auto[on a CPU]``."""
    if setting is None:
        return None
    if str(setting).lower() == "auto":
        return auto[accelerator == "CPUAccelerator"]
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 8:
        raise UserInputError(f"{name} must be auto, null or a number of pixels ≥ 8, got {setting!r}")
    return int(setting)


def check_settings(cfg: DictConfig) -> Preprocessing:
    """Every setting of ``infer.py`` checked before a model loads or a frame is read (one-line errors);
    returns the camera preprocessing."""
    integer("batch_size", cfg.batch_size, minimum=1, example=4)
    integer("num_workers", cfg.num_workers, minimum=0, example=2)
    integer("overlay_frames", cfg.overlay_frames, minimum=0, example=3)
    number("render_pixel_nm", cfg.render_pixel_nm, above=0.0, example=20)
    integer("margin", cfg.margin, minimum=0, allow_none=True, example=40)
    number("threshold", cfg.threshold, minimum=0.0, allow_none=True, example=0.5)
    set_threads(cfg.get("threads"))
    settings = OmegaConf.to_container(cfg.preprocessing, resolve=True)
    camera = cfg.get("camera")
    camera = OmegaConf.to_container(camera, resolve=True) if isinstance(camera, DictConfig) else camera
    return Preprocessing.from_dict({**settings, "camera": camera})


def training_camera(module: Any) -> Camera | None:
    """The camera a checkpoint's network was trained on (its simulation's camera), or ``None``."""
    config = dict(module.hparams.get("simulation", {}) or {}).get("camera")
    return None if not config else camera_from_config(dict(config))


def refuse_existing_outputs(cfg: DictConfig, out: Path) -> None:
    existing = existing_outputs(out, OUTPUT_FILES) + sorted(out.glob("overlay_frame*.png"))
    if existing and not cfg.overwrite:
        raise UserInputError(f"{existing[0]} exists: pass overwrite=true or choose another out=<folder>")


def is_launched_rank() -> bool:
    """A DDP process started by rank 0's launcher (rank 0 holds the output lock for all of them)."""
    return any(int(os.environ.get(name, "0") or 0) > 0 for name in ("LOCAL_RANK", "NODE_RANK"))


def infer(cfg: DictConfig) -> dict[str, Any]:
    """Localize ``cfg.recording`` (``data=`` on the command line) with ``cfg.ckpt``; returns the summary
    written to ``summary.json``. One run at a time per ``out`` folder (:class:`FolderLock`); on any error
    the hidden part files are removed, so nothing in ``out`` looks like a result."""
    out = Path(cfg.out)
    refuse_existing_outputs(cfg, out)
    preprocessing = check_settings(cfg)
    writable_folder("out", out)
    if is_launched_rank():
        return localize_recording(cfg, out, preprocessing)
    with FolderLock(out):
        refuse_existing_outputs(cfg, out)  # again, now that no other run can be writing here
        try:
            return localize_recording(cfg, out, preprocessing)
        except BaseException:
            for part in out.glob(".localizations.rank*.part.csv"):
                part.unlink(missing_ok=True)
            raise


def localize_recording(cfg: DictConfig, out: Path, preprocessing: Preprocessing) -> dict[str, Any]:
    """The work of :func:`infer` once its settings and its output folder are checked and claimed."""
    read_checkpoint_kind(cfg.ckpt)
    try:
        recording = open_recording(cfg.recording, **recording_options(cfg))
    except RecordingError as exc:
        raise UserInputError(str(exc)) from None
    module = load_module(cfg.ckpt)
    preprocessing = preprocessing.with_target(training_camera(module))

    dataset = RecordingDataset(cfg.recording, preprocessing, **recording_options(cfg))
    loader = DataLoader(
        dataset, batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers), shuffle=False
    )
    writer = LocalizationWriter(out)
    from pytorch_lightning.callbacks import RichProgressBar

    precision = cfg.trainer.get("precision") or default_precision()
    trainer = hydra.utils.instantiate(
        cfg.trainer, precision=precision, callbacks=[writer, RichProgressBar()], _convert_="all"
    )
    accelerator = type(trainer.accelerator).__name__
    channels_last = use_channels_last(cfg.get("channels_last", False), accelerator)
    tile = resolve_tile("tile", cfg.tile, accelerator, AUTO_TILE)
    head_tile = resolve_tile("head_tile", cfg.get("head_tile", "auto"), accelerator, AUTO_HEAD_TILE)
    check_applicable(module, recording.shape, tile, head_tile)
    if cfg.margin is not None and tile is not None and int(cfg.margin) < required_margin(module.net):
        log.warning(
            "margin=%d is less than this network's reach of %d px: tiled results will differ from "
            "whole-frame ones (margin=null uses the reach)",
            int(cfg.margin),
            required_margin(module.net),
        )
    warnings = compatibility_warnings(module, recording, dataset)
    module.predict_settings = {
        "tile": tile,
        "margin": cfg.margin,
        "threshold": cfg.threshold,
        "head_tile": head_tile,
    }
    if channels_last:
        module.net.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    try:
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    except RecordingError as exc:
        writer.on_predict_end(trainer, module)
        raise UserInputError(one_line(exc)) from None  # from a DataLoader worker too: the frame and the cause
    trainer.strategy.barrier()
    elapsed = time.perf_counter() - start
    if not trainer.is_global_zero:
        return {}

    head = module.hparams.head["kind"]
    unit = "photon" if head == "offsets" else "au"
    n_locs = merge_parts(
        out,
        trainer.world_size,
        out / "localizations.csv",
        unit,
        overwrite=True,
        uncertainties=head == "offsets",
    )
    table = read_localizations(out / "localizations.csv")
    setup = module.optical_setup
    height, width = recording.shape
    field_nm = (width * setup.pixel_size_um * 1e3, height * setup.pixel_size_um * 1e3)
    z_range_nm = (setup.z_range_um[0] * 1e3, setup.z_range_um[1] * 1e3)
    rgb, counts, mean_z = super_resolution_render(
        table["x"], table["y"], table["z"], field_nm, float(cfg.render_pixel_nm), z_range_nm
    )
    overwrite = True  # every output was checked for at the start
    pixel_nm = float(cfg.render_pixel_nm)
    save_figure(render_figure(rgb, pixel_nm, z_range_nm), out / "render.png", overwrite=overwrite)
    info = {
        "pixel_nm": pixel_nm,
        "colour": "hue = mean z (turbo), brightness = localizations per pixel",
        "z_range_nm": list(z_range_nm),
        "localizations": "localizations.csv",
        "checkpoint": str(cfg.ckpt),
        "data": str(cfg.recording),
    }
    write_imagej_tiff(out / "render.tif", rgb, pixel_nm / 1e3, "YXS", info=info, overwrite=overwrite)
    channels = ["localizations per pixel", "mean z (nm)"]
    write_imagej_tiff(
        out / "render_counts_zmean.tif",
        np.stack([counts, mean_z]).astype(np.float32),
        pixel_nm / 1e3,
        "CYX",
        info={**info, "channels": channels},
        labels=channels,
        overwrite=overwrite,
    )
    overlays = overlay_frames(module, recording, preprocessing, table, int(cfg.overlay_frames), out)
    for stale in sorted(out.glob("overlay_frame*.png")):  # an earlier run's (overwrite=true): not this run's
        if stale.name not in overlays:
            stale.unlink()

    frames = per_frame_counts(table["frame"], len(recording))
    summary = {
        "checkpoint": str(cfg.ckpt),
        "data": str(cfg.recording),
        "frames": len(recording),
        "frame_shape": [height, width],
        "localizations": n_locs,
        "localizations_per_frame": {
            "mean": float(frames.mean()),
            "median": float(np.median(frames)),
            "min": int(frames.min()),
            "max": int(frames.max()),
        },
        "seconds": round(elapsed, 3),
        "frames_per_second": float(f"{len(recording) / max(elapsed, 1e-9):.4g}"),
        "devices": trainer.world_size,
        "accelerator": type(trainer.accelerator).__name__,
        "precision": precision,
        "head": head,
        "uncertainty_scale": (module.hparams.head.get("postprocess") or {}).get("uncertainty_scale"),
        "threshold": float(cfg.threshold) if cfg.threshold is not None else float(module.threshold),
        "tile": tile,
        "margin": cfg.margin if cfg.margin is not None else required_margin(module.net),
        "channels_last": channels_last,
        "head_tile": head_tile,
        "preprocessing": preprocessing.to_dict(),
        "normalization": module.normalization.to_dict(),
        "optical_setup": setup.to_dict(),
        "psf_model": module.psf_model().describe(),
        "outputs": [*OUTPUT_FILES, *overlays],
        "warnings": warnings,
    }
    save_json(summary, out / "summary.json", overwrite=overwrite)
    log.info(
        "%d localizations in %d frames (%s) → %s",
        n_locs,
        len(recording),
        rate_text(len(recording), elapsed),
        out,
    )
    return summary
