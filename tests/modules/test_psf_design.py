"""PSF design (dstorm3d/modules/psf_design.py): a frozen mask is the localizer, gradients reach the mask,
the learned mask exports bit-exactly and feeds a localizer, W&B offline media, identical masks under DDP.

Modules are built from the real Hydra configs (``experiment=psf_design_cpu``) shrunk to 24×24 frames,
8 channels and a few steps; the CLI tests run ``train.py`` in a subprocess (never DDP inside pytest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers_hydra import composed
from omegaconf import OmegaConf

from dstorm3d.callbacks.mask_export import LearnedMaskExport
from dstorm3d.data.simulated import SimulatedDataModule
from dstorm3d.modules.localizer import LocalizerModule
from dstorm3d.modules.psf_design import PSFDesignModule
from dstorm3d.optics.masks import aperture_support, read_mask_file
from dstorm3d.optics.psf_model import load_psf
from dstorm3d.simulation.simulator import batch_generator
from dstorm3d.utils.paths import REPO_ROOT

TINY = [
    "simulation.frame_shape=[24,24]",
    "model.network.channels=8",
    "data.batch_size=2",
    "data.train_samples=8",
    "data.val_samples=4",
    "data.test_samples=4",
    "data.num_workers=0",
]


# ---------------------------------------------------------------------------------------- helpers
def design_config(tmp_path: Path, overrides: list[str]) -> tuple[dict, SimulatedDataModule]:
    """The model kwargs (plain, resolved) and the datamodule of a small ``experiment=psf_design_cpu``."""
    with composed(
        "train.yaml",
        ["experiment=psf_design_cpu", "logger=none", "callbacks=none", *TINY, *overrides],
        tmp_path / "config",
    ) as cfg:
        model = OmegaConf.to_container(cfg.model, resolve=True)
        data = OmegaConf.to_container(cfg.data, resolve=True)
    model.pop("_target_")
    data.pop("_target_")
    return model, SimulatedDataModule(**data)


def first_batch(datamodule: SimulatedDataModule) -> dict[str, torch.Tensor]:
    return next(iter(datamodule._loader(datamodule.dataset("train"))))


def step_loss(module: pl.LightningModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``training_step`` outside a trainer (its ``self.log`` calls only warn)."""
    module.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module.training_step(batch, 0)


def the_optimizer(configured) -> torch.optim.Optimizer:
    return configured if isinstance(configured, torch.optim.Optimizer) else configured["optimizer"]


def groups_by_name(optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    return {group["name"]: group for group in optimizer.param_groups}


def fit(module: pl.LightningModule, datamodule: SimulatedDataModule, steps: int, callbacks=()) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps,
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        reload_dataloaders_every_n_epochs=1,
        callbacks=list(callbacks),
    )
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == steps
    return trainer


def run_cli(args: list[str], run_dir: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """``train.py`` in a subprocess; no ``WANDB_*`` variables and no ``~/.netrc`` credentials, so W&B must
    choose offline by itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "DSTORM3D_LOG_DIR": str(run_dir.parent),
            "NETRC": str(run_dir.parent / "no-netrc"),
        }
    )
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=run_dir.parent,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


# ---------------------------------------------------------------------------------------- 1. frozen mask
@pytest.mark.parametrize("parameterization", ["pixel", "zernike"])
def test_frozen_mask_gives_the_localizer_loss_and_gets_no_optimizer_group(parameterization, tmp_path):
    kwargs, datamodule = design_config(
        tmp_path,
        [
            "optics.mask=tetrapod",
            f"model.mask_learning.parameterization={parameterization}",
            "model.mask_learning.freeze=true",
            "model.mask_learning.differentiable_noise=false",
        ],
    )
    design = PSFDesignModule(**kwargs)
    localizer = LocalizerModule(**{k: v for k, v in kwargs.items() if k != "mask_learning"})
    localizer.net.load_state_dict(design.net.state_dict())
    assert torch.equal(design.phase_mask(), localizer.phase_mask())
    assert design.phase_mask().abs().max() > 1.0  # the Tetrapod, not a clear pupil

    batch = first_batch(datamodule)
    loss_design, loss_localizer = step_loss(design, batch), step_loss(localizer, batch)
    assert torch.isfinite(loss_design)
    assert torch.equal(loss_design, loss_localizer), (float(loss_design), float(loss_localizer))

    loss_design.backward()
    for p in design.mask_parameters():
        assert not p.requires_grad and p.grad is None
    assert design.simulator.pupil.phase_mask.grad is None
    assert any(p.grad is not None for p in design.net.parameters())
    trainable = {id(p) for p in design.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in design.net.parameters()}

    optimizer = the_optimizer(design.configure_optimizers())
    assert list(groups_by_name(optimizer)) == ["network"]
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in [*design.mask_parameters(), design.simulator.pupil.phase_mask]}


# ---------------------------------------------------------------------------------------- 2. gradients
def test_pixel_mask_gradient_is_nonzero_inside_the_aperture_only(tmp_path):
    kwargs, datamodule = design_config(tmp_path, ["model.mask_learning.parameterization=pixel"])
    design = PSFDesignModule(**kwargs)
    batch = first_batch(datamodule)
    step_loss(design, batch).backward()
    grad = design.simulator.pupil.phase_mask.grad
    assert grad is not None and torch.isfinite(grad).all()
    inside = torch.as_tensor(aperture_support(design.optical_setup))
    assert (grad[inside] != 0).float().mean() > 0.9, "the gradient must reach (nearly) every aperture sample"
    assert torch.all(grad[~inside] == 0)

    # exact Poisson noise cuts the path: differentiable_noise is what lets gradients reach the mask
    kwargs["mask_learning"] = {**kwargs["mask_learning"], "differentiable_noise": False}
    exact = PSFDesignModule(**kwargs)
    step_loss(exact, batch).backward()
    assert exact.simulator.pupil.phase_mask.grad is None or not exact.simulator.pupil.phase_mask.grad.any()


def test_zernike_gradient_reaches_the_coefficients_only(tmp_path):
    kwargs, datamodule = design_config(
        tmp_path, ["model.mask_learning.parameterization=zernike", "model.mask_learning.zernike_terms=15"]
    )
    design = PSFDesignModule(**kwargs)
    assert design.zernike_coefficients.shape == (14,)
    step_loss(design, first_batch(datamodule)).backward()
    grad = design.zernike_coefficients.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0
    assert design.simulator.pupil.phase_mask.grad is None  # the initial mask stays fixed


@pytest.mark.parametrize("parameterization", ["pixel", "zernike"])
def test_optimizer_steps_change_the_mask_with_its_own_learning_rate(parameterization, tmp_path):
    mask_lr, net_lr = 0.05, 1.0e-4
    kwargs, datamodule = design_config(
        tmp_path,
        [
            f"model.mask_learning.parameterization={parameterization}",
            f"model.mask_learning.lr={mask_lr}",
            f"model.optimizer.lr={net_lr}",
        ],
    )
    design = PSFDesignModule(**kwargs)
    groups = groups_by_name(the_optimizer(design.configure_optimizers()))
    assert set(groups) == {"network", "mask"}
    assert groups["mask"]["lr"] == mask_lr and groups["network"]["lr"] == net_lr
    assert [id(p) for p in groups["mask"]["params"]] == [id(p) for p in design.mask_parameters()]
    assert {id(p) for p in groups["network"]["params"]} == {id(p) for p in design.net.parameters()}

    start_mask = design.phase_mask().detach().clone()
    (start_parameter,) = [p.detach().clone() for p in design.mask_parameters()]
    start_net = [p.detach().clone() for p in design.net.parameters()]
    trainer = fit(design, datamodule, steps=3)
    assert {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups} == {
        "network": net_lr,
        "mask": mask_lr,
    }

    mask = design.phase_mask().detach()
    inside = torch.as_tensor(aperture_support(design.optical_setup))
    assert torch.isfinite(mask).all() and torch.all(mask[~inside] == 0)
    assert (mask - start_mask).abs().max() > 1e-3
    # Adam moves a parameter by at most ~3.2·lr a step: a step above 3 steps at the network's rate means
    # the mask used its own learning rate
    change = (design.mask_parameters()[0].detach() - start_parameter).abs()
    assert 3 * 3.2 * net_lr < change.max() <= 3 * 3.2 * mask_lr
    if parameterization == "pixel":
        assert (change[inside] > 0).float().mean() > 0.5
    assert any(not torch.equal(a, b) for a, b in zip(start_net, design.net.parameters()))


# ---------------------------------------------------------------------------------------- 3. export
def test_learned_mask_export_reloads_bit_identically_and_feeds_a_localizer(tmp_path):
    kwargs, datamodule = design_config(tmp_path, ["model.mask_learning.lr=0.05"])
    design = PSFDesignModule(**kwargs)
    run = tmp_path / "run"
    run.mkdir()
    fit(design, datamodule, steps=2, callbacks=[LearnedMaskExport(run)])

    learned = design.phase_mask().detach().double().numpy()
    assert learned.dtype == np.float64 and np.abs(learned).max() > 0  # it moved from the clear start
    assert np.array_equal(learned, design.learned_mask())
    for suffix in (".npy", ".tif", ".mat"):
        loaded = read_mask_file(run / f"learned_mask{suffix}")
        assert loaded.dtype == np.float64 and loaded.shape == learned.shape
        assert loaded.tobytes() == learned.tobytes(), suffix
    # stored as float64, not merely read back as float64
    import tifffile
    from scipy.io import loadmat

    assert np.load(run / "learned_mask.npy").dtype == np.float64
    assert tifffile.imread(run / "learned_mask.tif").dtype == np.float64
    assert loadmat(run / "learned_mask.mat")["phase_mask"].dtype == np.float64

    record = json.loads((run / "learned_mask.json").read_text())
    assert record["optical_setup"] == json.loads(json.dumps(design.optical_setup.to_dict()))
    assert record["mask_learning"]["parameterization"] == "pixel" and record["mask_learning"]["lr"] == 0.05
    assert record["initial_mask"] == "clear"
    assert record["global_step"] == 2 and record["world_size"] == 1
    assert record["ranks_max_abs_difference_rad"] == 0.0
    assert record["files"] == ["learned_mask.npy", "learned_mask.tif", "learned_mask.mat", "learned_mask.npz"]
    learned_psf, metadata = load_psf(run / "learned_mask.npz")  # the whole PSF model, for optics.pupil=
    assert np.array_equal(learned_psf.phase, np.load(run / "learned_mask.npy"))
    assert learned_psf.setup == design.optical_setup and metadata["global_step"] == 2

    # the paper's step 2: a localizer trained with the learned mask (optics.mask=<run>/learned_mask.npy)
    with composed(
        "train.yaml",
        [
            "experiment=learned_psf_localizer",
            "optics=storm",
            "simulation=quickstart",
            "model/head=offsets",
            "logger=none",
            "callbacks=none",
            *TINY,
            f"optics.mask={run / 'learned_mask.npy'}",
        ],
        tmp_path / "localizer",
    ) as cfg:
        import hydra

        localizer = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert isinstance(localizer, LocalizerModule) and not isinstance(localizer, PSFDesignModule)
    assert np.array_equal(localizer.phase_mask().double().numpy(), learned)
    batch = first_batch(datamodule)
    design.eval(), localizer.eval()
    with torch.no_grad():
        frames = [
            m.simulate(batch, batch_generator(torch.device("cpu"), 7, "check", 0))
            for m in (design, localizer)
        ]
    assert torch.equal(*frames), "the localizer must render the frames the designed mask rendered"


# ---------------------------------------------------------------------------------------- 4. W&B media
@pytest.mark.slow
def test_cli_logs_the_evolving_mask_to_wandb_offline_and_to_files(tmp_path):
    run = tmp_path / "run"
    run_cli(
        [
            "experiment=psf_design_cpu",
            *TINY,
            "logger=default",
            "callbacks.phase_mask_logger.every_n_steps=2",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=1",
            "trainer.num_sanity_val_steps=0",
        ],
        run,
    )
    log = (run / "psf_design_cpu.log").read_text()
    assert "W&B runs offline: no W&B API key" in log  # the automatic choice, not a WANDB_MODE we set

    latest = run / "wandb" / "latest-run"
    assert latest.resolve().name.startswith("offline-run-")
    media = latest / "files" / "media"

    def distinct(paths: list[Path]) -> int:
        return len({p.read_bytes() for p in paths})

    # start (step 0), steps 2 and 4, and the end (step 4 again): 4 entries, at least 3 different masks
    for pattern in (
        "images/psf/phase_mask_*.png",
        "images/psf/zstack_montage_*.png",
        "videos/psf/zstack_animation_*.gif",
    ):
        files = sorted(media.glob(pattern))
        assert len(files) >= 4, (pattern, [p.name for p in media.rglob("*")])
        assert distinct(files) >= 3, f"{pattern}: the logged mask does not evolve"
    from PIL import Image

    with Image.open(next(media.glob("videos/psf/zstack_animation_*.gif"))) as gif:
        assert gif.n_frames == 9  # one frame per z slice (callbacks.phase_mask_logger.z_slices)

    psf = run / "psf"
    steps = [0, 2, 4]
    for step in steps:
        for name in (
            "phase_mask_{}.png",
            "psf_montage_{}.png",
            "psf_zstack_{}.gif",
            "psf_zstack_{}.tif",
            "phase_mask_{}.npy",
        ):
            assert (psf / name.format(f"step{step:07d}")).is_file(), name.format(step)
    masks = [np.load(psf / f"phase_mask_step{s:07d}.npy") for s in steps]
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])

    for suffix in (".npy", ".tif", ".mat", ".json"):
        assert (run / f"learned_mask{suffix}").is_file()
    assert np.array_equal(read_mask_file(run / "learned_mask.npy"), masks[-1])  # the final mask, both ways
    assert json.loads((run / "learned_mask.json").read_text())["global_step"] == 4


# ---------------------------------------------------------------------------------------- 5. DDP
@pytest.mark.slow
def test_two_process_cpu_ddp_keeps_the_learned_mask_identical_on_both_ranks(tmp_path):
    run = tmp_path / "ddp"
    run_cli(
        [
            "experiment=psf_design_cpu",
            *TINY,
            "data.train_samples=12",
            "logger=csv",
            "test=false",
            "trainer.devices=2",
            "++trainer.strategy=ddp",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            "trainer.limit_val_batches=1",
            "trainer.num_sanity_val_steps=0",
            "callbacks.phase_mask_logger.every_n_steps=100",
        ],
        run,
    )
    record = json.loads((run / "learned_mask.json").read_text())
    assert record["world_size"] == 2
    assert record["ranks_max_abs_difference_rad"] == 0.0
    assert record["global_step"] == 3  # 12 frames / 2 ranks / batch 2

    start = np.load(run / "psf" / "phase_mask_step0000000.npy")
    learned = read_mask_file(run / "learned_mask.npy")
    assert np.abs(learned - start).max() > 1e-3, "identical on both ranks but never trained"
    assert np.array_equal(learned, np.load(run / "psf" / "phase_mask_step0000003.npy"))
