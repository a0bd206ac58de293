"""Every TIFF the project writes opens in Fiji with its physical calibration, and every PNG figure carries
its legend, colour bars with units and a scale bar in µm.

The files come from the real code paths on tiny inputs: the simulate command's writer, ``optics.show``'s
outputs, the PSF and examples callbacks, the phase-mask export and ``infer`` itself (a freshly initialised
tiny checkpoint). TIFFs are read back with tifffile: ImageJ metadata, resolution tags, axes, the JSON Info.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tifffile
from helpers_checkpoints import FRAME_PX, save_tiny_checkpoint
from helpers_hydra import composed
from matplotlib.text import Text
from omegaconf import OmegaConf, open_dict

from dstorm3d.utils.tiff import (
    ImageJStackWriter,
    read_tiff_calibration,
    read_tiff_info,
    write_imagej_tiff,
)
from dstorm3d.visualization import SCALE_BAR_GID

STORM_PIXEL_UM = 0.11  # 11 µm camera pixels / 100×


def config(name: str, overrides: list[str], folder: Path) -> dict[str, Any]:
    """A composed config as the app sees it (no ``hydra`` node)."""
    with composed(name, overrides, folder) as cfg:
        with open_dict(cfg):
            cfg.pop("hydra")
        return OmegaConf.to_container(cfg, resolve=True)


def assert_calibrated(
    path: Path, axes: str, pixel_um: float | None, z_step_um: float | None = None
) -> dict[str, Any]:
    """Check a TIFF's ImageJ calibration as Fiji reads it (and tifffile's axes); return its JSON info."""
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej, f"{path.name} is not an ImageJ TIFF"
        meta = tif.imagej_metadata
        x_res, y_res = tif.pages.first.resolution
        assert tif.pages.first.resolutionunit == tifffile.RESUNIT.NONE  # ImageJ: the unit is in `unit=`
    calibration = read_tiff_calibration(path)
    assert calibration.axes == axes, path.name
    assert x_res == pytest.approx(y_res)
    if pixel_um is None:
        assert meta["unit"] == "pixel" and calibration.pixel_size == pytest.approx(1.0)
    else:
        assert meta["unit"] == "micron", path.name
        assert calibration.pixel_size == pytest.approx(pixel_um, rel=1e-6), path.name
    if "T" in axes:
        assert meta["frames"] == calibration.shape[axes.index("T")]
    if z_step_um is not None:
        assert meta["slices"] == calibration.shape[axes.index("Z")]
        assert calibration.z_step_um == pytest.approx(z_step_um, rel=1e-6)
    info = read_tiff_info(path)
    assert info, f"{path.name} lost its JSON info"
    return info


# ---------------------------------------------------------------------------------------- figures
def texts(figure: Any) -> list[str]:
    return [t.get_text() for t in figure.findobj(Text) if t.get_text()]


def scale_bar_labels(figure: Any) -> list[str]:
    bars = figure.findobj(lambda artist: artist.get_gid() == SCALE_BAR_GID)
    labels = [t.get_text() for bar in bars for t in bar.findobj(Text)]
    assert labels and all(re.fullmatch(r"\d+(\.\d+)? (µm|nm)", label) for label in labels), labels
    return labels


def colour_bar_labels(figure: Any) -> list[str]:
    return [ax.get_ylabel() for ax in figure.axes if getattr(ax, "_colorbar", None) is not None]


@pytest.fixture
def captured_figures(monkeypatch) -> list[Any]:
    """Figures the callbacks turn into RGB (``figure_rgb``), kept for inspection."""
    import dstorm3d.callbacks.examples as examples
    import dstorm3d.callbacks.psf as psf
    from dstorm3d.visualization import figure_rgb

    figures: list[Any] = []

    def capture(figure: Any) -> np.ndarray:
        figures.append(figure)
        return figure_rgb(figure)

    monkeypatch.setattr(examples, "figure_rgb", capture)
    monkeypatch.setattr(psf, "figure_rgb", capture)
    return figures


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calibration_ckpt")
    return save_tiny_checkpoint(folder / "tiny.ckpt", ["model/head=offsets"], folder)


# ---------------------------------------------------------------------------------------- the helper
def test_the_helper_writes_every_layout_fiji_opens_and_refuses_what_imagej_cannot(tmp_path):
    rng = np.random.default_rng(0)
    planes = rng.random((3, 6, 8)).astype(np.float32)
    write_imagej_tiff(tmp_path / "z.tif", planes, 0.1, "ZYX", z_step_um=0.25, z_first_um=-0.5, info={"a": 1})
    assert assert_calibrated(tmp_path / "z.tif", "ZYX", 0.1, z_step_um=0.25) == {"a": 1}
    assert read_tiff_calibration(tmp_path / "z.tif").z_first_um == pytest.approx(-0.5)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "z.tif"), planes)
    with pytest.raises(FileExistsError):
        write_imagej_tiff(tmp_path / "z.tif", planes, 0.1, "ZYX")

    movie = rng.integers(0, 60000, (4, 6, 8)).astype(np.uint16)
    write_imagej_tiff(tmp_path / "t.tif", movie, 0.16, "TYX", frame_interval_s=0.03, info={"b": 2})
    assert read_tiff_calibration(tmp_path / "t.tif").frame_interval_s == pytest.approx(0.03)
    with ImageJStackWriter(tmp_path / "paged.tif", movie.shape, np.uint16, 0.16, info={"b": 2}) as writer:
        for frame in movie:
            writer.write(frame)
    assert assert_calibrated(tmp_path / "paged.tif", "TYX", 0.16) == {"b": 2}
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "paged.tif"), movie)
    with pytest.raises(ValueError, match="2 of 4 planes"):
        with ImageJStackWriter(tmp_path / "short.tif", movie.shape, np.uint16, 0.16) as writer:
            writer.write(movie[0])
            writer.write(movie[1])

    bad = [
        (rng.random((6, 8)).astype(np.float16), "YX", "ImageJ cannot open"),
        (movie, "YX", "do not match"),
        (movie, "YTX", "must end in YX"),
        (movie[None], "ZTYX", "ImageJ's order"),
        (np.zeros((6, 8, 3), np.float32), "YXS", "RGB image must be uint8"),
    ]
    for array, axes, message in bad:
        with pytest.raises(ValueError, match=message):
            write_imagej_tiff(tmp_path / "bad.tif", array, 0.1, axes)
    assert not (tmp_path / "bad.tif").exists()


# ---------------------------------------------------------------------------------------- simulate
def test_simulated_recording_is_a_time_series_in_microns(tmp_path):
    from dstorm3d.inference.recording import open_recording
    from dstorm3d.simulate import RECORDING, plan_simulation, write_recording

    overrides = ["frames=3", "frame_shape=[24,32]", "emitters=50", "render_window_px=24", "seed=1"]
    settings = config("simulate.yaml", overrides, tmp_path)
    plan = plan_simulation(settings)
    write_recording(settings, plan, tmp_path / "sim", overwrite=False)
    path = tmp_path / "sim" / RECORDING
    info = assert_calibrated(path, "TYX", STORM_PIXEL_UM)
    assert info["pixel_size_um"] == pytest.approx(STORM_PIXEL_UM) and info["seed"] == 1
    assert info["optical_setup"]["name"] == "storm"
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 3 and tif.series[0].dtype == np.uint16
        stack = tif.asarray()
    with open_recording(path) as recording:  # infer still reads it, page by page
        assert len(recording) == 3
        np.testing.assert_array_equal(recording[2], stack[2])


# ---------------------------------------------------------------------------------------- optics
def test_show_writes_a_calibrated_psf_zstack_and_annotated_figures(tmp_path):
    from dstorm3d.optics.show import (
        ShowSettings,
        compute_view,
        crlb_figure,
        montage_figure,
        phase_mask_figure,
        write_outputs,
    )

    cfg = config("show.yaml", ["optics=storm"], tmp_path)
    for shared in (False, True):
        settings = ShowSettings.from_config(
            {
                **cfg["show"],
                "z_slices": 3,
                "window_px": 24,
                "crlb_z_points": 3,
                "crlb_window_px": 32,
                "shared_colour_scale": shared,
            }
        )
        view = compute_view(cfg["optics"], settings)
        montage = montage_figure(view)
        assert scale_bar_labels(montage)
        assert all(f"z = {z:.2f} µm" in " ".join(texts(montage)) for z in view.z_um)
        (bar,) = colour_bar_labels(montage)
        assert "photons" in bar and ("slice's peak" in bar) != shared
    assert colour_bar_labels(phase_mask_figure(view)) == ["wrapped phase (rad)"]
    crlb = crlb_figure(view)
    assert crlb.axes[0].get_legend() is not None and crlb.axes[0].get_ylabel() == "CRLB (nm)"
    assert crlb.axes[0].get_xlabel().endswith("(µm)")

    write_outputs(view, tmp_path / "show")
    info = assert_calibrated(tmp_path / "show" / "psf_zstack.tif", "ZYX", STORM_PIXEL_UM, z_step_um=2.0)
    np.testing.assert_allclose(info["z_um"], [0.0, 2.0, 4.0])
    assert read_tiff_calibration(tmp_path / "show" / "psf_zstack.tif").z_first_um == pytest.approx(0.0)
    assert info["optical_setup"]["name"] == "storm" and info["mask"]["name"] == "tetrapod"


def test_phase_mask_tiff_keeps_float64_with_the_mask_plane_pixel(tmp_path):
    from dstorm3d.optics.masks import mask_sample_um, read_mask_file, save_phase_mask, tetrapod_mask
    from dstorm3d.optics.setup import storm_setup

    setup = storm_setup()
    mask = tetrapod_mask(setup)
    save_phase_mask(mask, tmp_path / "with_setup.tif", setup=setup)
    info = assert_calibrated(tmp_path / "with_setup.tif", "YX", mask_sample_um(setup))
    assert mask_sample_um(setup) == pytest.approx(30.0, rel=1e-3)  # about one SLM pixel: N is natural
    assert info["unit"] == "rad" and info["optical_setup"] == setup.to_dict()
    np.testing.assert_array_equal(read_mask_file(tmp_path / "with_setup.tif"), mask)  # bit-exact float64

    save_phase_mask(mask, tmp_path / "bare.tif")
    assert assert_calibrated(tmp_path / "bare.tif", "YX", None)["unit"] == "rad"


# ---------------------------------------------------------------------------------------- training
def test_psf_callback_writes_a_calibrated_zstack_and_annotated_figures(
    tmp_path, tiny_checkpoint, captured_figures
):
    from dstorm3d.callbacks.psf import PhaseMaskLogger
    from dstorm3d.modules.checkpoints import load_module

    module = load_module(tiny_checkpoint)
    logger = PhaseMaskLogger(z_slices=3, window=24, output_dir=str(tmp_path / "psf"))
    logger.log_mask(SimpleNamespace(global_step=7, loggers=[]), module)
    setup = module.optical_setup
    info = assert_calibrated(
        tmp_path / "psf" / "psf_zstack_step0000007.tif", "ZYX", setup.pixel_size_um, z_step_um=0.5
    )
    assert info["z_um"] == pytest.approx([1.0, 1.5, 2.0]) and info["global_step"] == 7
    assert read_tiff_calibration(tmp_path / "psf" / "psf_zstack_step0000007.tif").z_first_um == pytest.approx(
        1.0
    )
    mask_figure, montage = captured_figures
    assert colour_bar_labels(mask_figure) == ["wrapped phase (rad)"]
    assert scale_bar_labels(montage) and "z = 1.50 µm" in " ".join(texts(montage))
    assert len(colour_bar_labels(montage)) == 1
    for name in ("phase_mask_step0000007.png", "psf_montage_step0000007.png"):
        assert (tmp_path / "psf" / name).is_file()


def test_examples_callback_draws_a_legend_a_colour_bar_and_scale_bars(tmp_path, captured_figures):
    import torch

    from dstorm3d.callbacks.examples import PredictionExamples
    from dstorm3d.emitters import Emitters

    truth = Emitters.from_lists([np.array([[1.0, 1.2, 1.5]]), np.zeros((0, 3))])
    found = Emitters.from_lists([np.array([[1.05, 1.2, 1.4]]), np.array([[2.0, 0.5, 1.0]])])
    module = SimpleNamespace(
        examples={
            "frames": torch.rand(2, 32, 32) * 100,
            "target": truth,
            "predictions": found,
            "pixel_size_um": STORM_PIXEL_UM,
        }
    )
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=2, global_step=10, loggers=[])
    PredictionExamples(output_dir=str(tmp_path)).on_validation_epoch_end(trainer, module)
    assert (tmp_path / "examples_epoch002.png").is_file()
    (figure,) = captured_figures
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["ground truth", "prediction"]
    assert colour_bar_labels(figure) == ["camera counts"]
    assert len(scale_bar_labels(figure)) == 2  # one per frame
    assert "epoch 2: 1 true, 1 found" in texts(figure)


# ---------------------------------------------------------------------------------------- infer
def test_infer_writes_calibrated_renders_and_annotated_figures(tmp_path, tiny_checkpoint, monkeypatch):
    import dstorm3d.inference.run as run
    from dstorm3d.inference.run import infer

    figures: dict[str, Any] = {}
    save_figure = run.save_figure

    def keep(figure: Any, path: Path, **options: Any) -> Path:
        figures[Path(path).name] = figure
        return save_figure(figure, path, **options)

    monkeypatch.setattr(run, "save_figure", keep)
    frames = np.random.default_rng(1).poisson(40.0, (2, FRAME_PX, FRAME_PX)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rec.tif", frames, photometric="minisblack")
    out = tmp_path / "out"
    overrides = [
        f"ckpt={tiny_checkpoint}",
        f"recording={tmp_path / 'rec.tif'}",
        f"out={out}",
        "num_workers=0",
        "overlay_frames=1",
        "trainer.accelerator=cpu",
        "render_pixel_nm=25",
    ]
    with composed("infer.yaml", overrides, tmp_path) as cfg:
        with open_dict(cfg):
            cfg.pop("hydra")
        infer(cfg)

    info = assert_calibrated(out / "render.tif", "YXS", 0.025)
    assert info["pixel_nm"] == 25.0 and info["z_range_nm"] == [1000.0, 2000.0]
    assert tifffile.imread(out / "render.tif").dtype == np.uint8
    info = assert_calibrated(out / "render_counts_zmean.tif", "CYX", 0.025)
    assert read_tiff_calibration(out / "render_counts_zmean.tif").labels == tuple(info["channels"])
    with tifffile.TiffFile(out / "render_counts_zmean.tif") as tif:
        assert tif.series[0].dtype == np.float32 and tif.series[0].shape[0] == 2

    render = figures["render.png"]
    assert scale_bar_labels(render) and colour_bar_labels(render)[0].startswith("mean z (nm)")
    overlay = figures["overlay_frame0001.png"]
    titles = [ax.get_title() for ax in overlay.axes if ax.get_title()]
    assert titles == ["frame", "model (re-rendered)", "residual (frame − model)"]
    assert len(colour_bar_labels(overlay)) == 3 and all("photons" in c for c in colour_bar_labels(overlay))
    assert len(scale_bar_labels(overlay)) == 3
    assert {p.name for p in out.glob("*.png")} == {"render.png", "overlay_frame0001.png"}
