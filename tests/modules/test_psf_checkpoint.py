"""The PSF model in the LightningModules and their checkpoints: a module renders with its PSF model (pupil
file included: phase, amplitude, blur), checkpoints store it as plain data (``hyper_parameters.psf``,
``torch.load(weights_only=True)``), checkpoints written before the PSF model still load, and PSF design
keeps learning the phase (the stored model holds the learned one)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO_ROOT
from helpers_checkpoints import TINY_MODEL
from helpers_hydra import composed
from omegaconf import OmegaConf

from dstorm3d.modules.checkpoints import load_module
from dstorm3d.modules.localizer import CHECKPOINT_MASK
from dstorm3d.optics.masks import tetrapod_mask
from dstorm3d.optics.psf_model import ScalarPupilPSF, psf_from_dict, save_psf
from dstorm3d.optics.setup import storm_setup
from dstorm3d.optics.zernike import pupil_polar_grid
from dstorm3d.simulation.simulator import batch_generator

DESIGN = [
    "experiment=psf_design_cpu",
    "logger=none",
    "callbacks=none",
    "simulation.frame_shape=[24,24]",
    "optics.pupil_grid=96",
    "model.network.channels=8",
]


def calibration_file(folder: Path) -> tuple[ScalarPupilPSF, Path]:
    """A calibration of the tiny model's optics (STORM on 96 samples, z 1–2 µm): Tetrapod, apodised,
    blurred by 0.8 px."""
    setup = storm_setup(pupil_grid=96, z_range_um=(1.0, 2.0))
    rho, _ = pupil_polar_grid(setup.pupil_grid, setup.pupil_radius_px)
    model = ScalarPupilPSF(setup, tetrapod_mask(setup), np.exp(-0.5 * rho**2), 0.8, label="beads")
    return model, save_psf(folder / "calibration.npz", model)


def build(overrides: list[str], workdir: Path) -> pl.LightningModule:
    import hydra

    torch.manual_seed(0)
    with composed("train.yaml", overrides, workdir) as cfg:
        return hydra.utils.instantiate(cfg.model, _convert_="all")


def save(module: pl.LightningModule, path: Path) -> Path:
    """The module saved as Lightning does (its on_save_checkpoint included)."""
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": pl.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def batch_of(module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """Two emitters in one 24 × 24 frame, each with its own simulation blur."""
    dx = module.optical_setup.pixel_size_um
    return {
        "xyz": torch.tensor([[[8.3 * dx, 10.6 * dx, 1.2], [15.2 * dx, 12.9 * dx, 1.8]]]),
        "photons": torch.tensor([[5000.0, 3000.0]]),
        "valid": torch.ones(1, 2, dtype=torch.bool),
        "blur_sigma": torch.tensor([[0.5, 1.1]]),
        "background": torch.full((1, 24, 24), 10.0),
    }


def test_a_module_trained_from_a_pupil_file_renders_and_stores_its_whole_psf_model(tmp_path):
    """optics.pupil=<file>: the module's PSF model is the file's; its checkpoint holds it as plain data
    (weights_only load), without the file's path in the optics, and reloads to the same frames."""
    model, path = calibration_file(tmp_path)
    module = build([*TINY_MODEL, f"optics.pupil={path}"], tmp_path)
    assert module.psf_model().to_dict() == model.to_dict()
    amplitude = model.pupil_model(torch.float32).amplitude
    assert torch.equal(module.simulator.pupil.amplitude, amplitude)
    assert module.simulator.psf_blur_sigma_px == 0.8 and module.hparams.mask_source == str(path)

    saved = save(module, tmp_path / "module.ckpt")
    raw = torch.load(saved, weights_only=True)
    hparams = raw["hyper_parameters"]
    assert psf_from_dict(hparams["psf"]).to_dict() == model.to_dict()
    assert hparams["optics"] == {**model.setup.to_dict(), "mask": CHECKPOINT_MASK}
    again = load_module(saved)
    assert again.psf_model().to_dict() == model.to_dict()
    batch = batch_of(module)
    with torch.no_grad():
        expected = module.simulator.expected_photons(batch)
        torch.testing.assert_close(again.simulator.expected_photons(batch), expected, rtol=0, atol=0)
        # the PSF's 0.8 px and the batch's blur combine in quadrature: unlike the batch's blur alone
        sharper = module.simulator.expected_photons({**batch, "blur_sigma": batch["blur_sigma"] * 0})
    assert float((sharper - expected).abs().max()) > 0.01 * float(expected.max())


def test_a_checkpoint_written_before_the_psf_model_still_loads(tmp_path):
    """No ``psf`` hyperparameter, ``optics.mask == "checkpoint"``: the scalar pupil of the stored setup with
    the state dict's mask (the shipped models/*.ckpt and the imported logs/authors_*.ckpt are such)."""
    module = build([*TINY_MODEL, "optics.mask=clear"], tmp_path)
    with torch.no_grad():
        module.simulator.pupil.phase_mask.copy_(torch.as_tensor(tetrapod_mask(module.optical_setup)))
    checkpoint = torch.load(save(module, tmp_path / "new.ckpt"), weights_only=True)
    old = copy.deepcopy(checkpoint)
    del old["hyper_parameters"]["psf"]
    old["hyper_parameters"]["optics"] = {**module.hparams.optics, "mask": CHECKPOINT_MASK}
    torch.save(old, tmp_path / "old.ckpt")
    loaded = load_module(tmp_path / "old.ckpt")
    psf = loaded.psf_model()
    np.testing.assert_array_equal(psf.phase, module.phase_mask().double().numpy())
    assert psf.amplitude is None and psf.blur_sigma_px == 0.0 and psf.setup == module.optical_setup
    assert psf.label == "clear"  # the recorded mask source


@pytest.mark.parametrize("path", ["models/storm_tetrapod.ckpt", "logs/authors_storm.ckpt"])
def test_the_shipped_and_imported_checkpoints_load_with_their_masks(path):
    file = REPO_ROOT / path
    if not file.is_file():
        pytest.skip(f"{path} is not in this checkout")
    module = load_module(file)
    psf = module.psf_model()
    assert psf.setup.pupil_grid == 203 and psf.setup.name == "storm_printed"
    assert np.array_equal(psf.phase, module.phase_mask().double().numpy()) and np.abs(psf.phase).max() > 3


@pytest.mark.parametrize("parameterization", ["pixel", "zernike"])
def test_psf_design_learns_the_phase_and_its_checkpoint_holds_the_learned_model(tmp_path, parameterization):
    """The learnable mask still gets gradients through the PSF model's renderer; the stored PSF model is
    the learned phase, and a reloaded module renders the learned frames (bit-identical)."""
    model, path = calibration_file(tmp_path)
    overrides = [
        *DESIGN,
        f"model.mask_learning.parameterization={parameterization}",
        "optics.z_range_um=[1.0,2.0]",
    ]
    module = build([*overrides, f"optics.pupil={path}", "optics.mask=null"], tmp_path)
    module.train()
    batch = batch_of(module)
    frames = module.simulate(batch, batch_generator(torch.device("cpu"), 0, "t", 0))
    frames.sum().backward()
    (parameter,) = module.mask_parameters()
    assert parameter.grad is not None and float(parameter.grad.abs().max()) > 0
    with torch.no_grad():
        parameter.add_(0.3 * torch.sign(parameter.grad))
    learned = module.psf_model()
    assert not np.array_equal(learned.phase, model.phase)
    np.testing.assert_array_equal(learned.amplitude, model.amplitude)
    assert learned.blur_sigma_px == 0.8
    again = load_module(save(module, tmp_path / "design.ckpt"))
    assert again.psf_model().to_dict() == learned.to_dict()
    with torch.no_grad():
        torch.testing.assert_close(
            again.simulator.expected_photons(batch, again.phase_mask()),
            module.simulator.expected_photons(batch, module.phase_mask()),
            rtol=0,
            atol=0,
        )


def test_train_config_refuses_a_mask_file_with_a_pupil_file_before_building_anything(tmp_path):
    from dstorm3d.training import check_settings
    from dstorm3d.utils.cli import UserInputError

    _, path = calibration_file(tmp_path)
    with composed(
        "train.yaml", [*TINY_MODEL, f"optics.pupil={path}", "optics.mask=/x/mask.npy"], tmp_path
    ) as cfg:
        with pytest.raises(UserInputError, match="both give the pupil phase"):
            check_settings(cfg)
        assert OmegaConf.select(cfg, "optics.pupil") == str(path)
