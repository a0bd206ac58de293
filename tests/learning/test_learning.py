"""Learning tests: small models trained from scratch on CPU must reach scores only a network that learned
can reach, on a fixed held-out set of frames (budgets in steps, not wall time: 2 shared cores vary).

Thresholds are set well above what an untrained network or a trivial predictor scores (Jaccard ≈ 0)
and below the measured values, which are recorded in the issue notes and the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers_hydra import composed

from dstorm3d.data.simulated import SimulatedDataModule
from dstorm3d.metrics.localization import JaccardRMSE
from dstorm3d.simulation.simulator import batch_emitters, batch_generator
from dstorm3d.utils.paths import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.learning]


def train_and_score(
    overrides: list[str],
    steps: int,
    tmp_path,
    held_out: int = 128,
    checkpoint: Path | None = None,
    experiment: str = "quickstart",
    trained: list | None = None,
) -> dict[str, float]:
    """Train ``steps`` optimizer steps (validation calibrates the threshold), then score a held-out set;
    ``checkpoint``: also save the trained model there; ``trained``: a list the model is appended to."""
    with composed(
        "train.yaml", [f"experiment={experiment}", "logger=none", "callbacks=none", *overrides], tmp_path
    ) as cfg:
        import hydra

        pl.seed_everything(0, workers=True)
        datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
        model = hydra.utils.instantiate(cfg.model, _convert_="all")
    trainer = pl.Trainer(
        max_steps=steps,
        max_epochs=10_000,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        reload_dataloaders_every_n_epochs=1,
        deterministic=False,
    )
    trainer.fit(model, datamodule=datamodule)
    if checkpoint is not None:
        trainer.save_checkpoint(checkpoint, weights_only=False)
    if trained is not None:
        trained.append(model)
    model.eval()
    test = SimulatedDataModule(
        datamodule.optics, datamodule.simulation, batch_size=32, test_samples=held_out, seed=2024
    )
    metric = JaccardRMSE(threshold_nm=150.0)
    # matched on lateral distance alone (the axial limit spans any axial range): the axial RMSE then
    # measures the z estimates themselves, not what the 150 nm ball lets through
    lateral_only = JaccardRMSE(lateral_threshold_nm=150.0, axial_threshold_nm=1e5)
    with torch.no_grad():
        for batch in test.test_dataloader():
            frames = model.simulate(
                batch, batch_generator(torch.device("cpu"), 2024, "held-out", int(batch["index"][0]))
            )
            found = model.readout.decode(model(frames), float(model.threshold))
            metric.update(found, batch_emitters(batch))
            lateral_only.update(found, batch_emitters(batch))
    scores = {k: float(v) for k, v in metric.compute().items()}
    scores["z_rmse_nm"] = float(lateral_only.compute()["rmse_ax_nm"])
    print(
        "held-out scores",
        {k: round(scores[k], 3) for k in ("jaccard", "rmse_lat_nm", "rmse_ax_nm", "z_rmse_nm")},
    )
    return scores


# Axial RMSE of matches made by chance inside the 150 nm matching ball is R/√5 = 67 nm: a ceiling above it
# cannot fail. The end-to-end recording below measures 57 nm.
AXIAL_CEILING_NM = 66.0


@pytest.fixture(scope="module")
def offsets_model(tmp_path_factory) -> tuple[dict[str, float], Path]:
    """The quickstart configuration (offsets head) trained 750 steps: held-out scores and a checkpoint."""
    folder = tmp_path_factory.mktemp("offsets")
    checkpoint = folder / "quickstart_750.ckpt"
    scores = train_and_score(
        ["model/head=offsets", "data.train_samples=4000", "data.val_samples=128"],
        steps=750,
        tmp_path=folder,
        checkpoint=checkpoint,
    )
    return scores, checkpoint


def test_offsets_head_learns_from_scratch(offsets_model):
    """The quickstart network (24-channel U-Net, Adam 4e-3 with a cosine schedule over the 750 steps):
    measured Jaccard 0.41, RMSE 46.6 nm lateral (short runs move by a few hundredths with the arithmetic,
    so the floors leave room). Matched inside the 150 nm ball, chance alone gives 95 nm lateral RMSE; the
    z estimates are scored on matches made by lateral distance alone: measured 113 nm, where a network
    without z skill gives ~1,150 nm (a constant z over the 4 µm range)."""
    scores, _ = offsets_model
    assert scores["jaccard"] >= 0.30
    assert scores["rmse_lat_nm"] <= 65.0 and scores["z_rmse_nm"] <= 150.0


def test_volume_head_learns_from_scratch(tmp_path):
    """The paper's dilated trunk and head with D = 41 slices on a 2× finer lateral grid (one upsampling stage:
    55 × 55 × 98 nm voxels), 32 channels, Adam 1e-3 at a constant rate, 1,500 steps of batch 4 (~3.5 min on
    2 cores)."""
    scores = train_and_score(
        [
            "model/head=volume",
            "model.network.trunk=paper",
            "model.scheduler.kind=none",
            "model.optimizer.lr=1e-3",
            "model.head.depth_slices=41",
            "model.head.upsampling=1",
            "data.batch_size=4",
            "data.train_samples=4000",
            "data.val_samples=64",
            "model.network.channels=32",
            "model.head.output_scale=800.0",
        ],
        steps=1500,
        tmp_path=tmp_path,
    )
    # measured 0.134 (RMSE 53 / 63 nm) with 2 threads, the same with the previous release's code: the
    # earlier floor of 0.15 came from a run with other float arithmetic; untrained ≈ 0
    assert scores["jaccard"] >= 0.10
    assert np.isfinite(scores["rmse_lat_nm"]) and scores["rmse_lat_nm"] <= 70.0


PSF_DESIGN_DECODER = [
    "model.network.trunk=unet",
    "model.network.channels=24",
    "model.optimizer.lr=4e-3",
    "data.train_samples=3200",
    "data.val_samples=128",
]


def test_learned_mask_beats_the_clear_pupil(tmp_path):
    """The PSF design's benefit (paper Fig. 4, laptop scale; studies/psf_design_cpu.sh is the full study):
    ``experiment=psf_design_cpu`` from the clear pupil, 300 steps learning the mask with the decoder, against
    the same 300 steps, seeds and decoder with the mask frozen. On 256 held-out frames the jointly learned
    system finds far more emitters, and the learned mask's lateral precision bound is a fraction of the
    clear pupil's (whose defocused PSF spreads over many pixels)."""
    from dstorm3d.optics.crlb import crlb
    from dstorm3d.optics.masks import clear_mask
    from dstorm3d.optics.pupil import PupilModel

    trained: list = []
    runs = {}
    for name, freeze in (("learned", "false"), ("clear", "true")):
        runs[name] = train_and_score(
            [*PSF_DESIGN_DECODER, f"model.mask_learning.freeze={freeze}"],
            300,
            tmp_path / name,
            held_out=256,
            experiment="psf_design_cpu",
            trained=trained,
        )
    setup = trained[0].optical_setup
    z = np.linspace(setup.z_range_um[0], setup.z_range_um[1], 9)
    lateral = {}
    for name, mask in (("learned", trained[0].learned_mask()), ("clear", clear_mask(setup))):
        bound = crlb(PupilModel(setup, mask, dtype=torch.float64), z, photons=20000.0, background=100.0)
        lateral[name] = float(np.median(bound["x_nm"]))
    print("PSF design", {k: round(v["jaccard"], 3) for k, v in runs.items()}, "lateral CRLB (nm)", lateral)
    # measured: Jaccard 0.175 against 0.063, lateral bound 3.4 against 11.0 nm (2 threads); an earlier
    # trial with 400 steps on 1 thread gave 0.116 against 0.073 (thread counts change torch's float sums)
    assert runs["learned"]["jaccard"] >= runs["clear"]["jaccard"] + 0.04
    assert lateral["learned"] <= 0.5 * lateral["clear"]


def run_cli(args: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"DSTORM3D_LOG_DIR": str(cwd)}
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_trained_checkpoint_localizes_a_simulated_recording_through_the_clis(offsets_model, tmp_path):
    """The Quickstart's last steps on a reduced budget: checkpoint → ``python -m dstorm3d.simulate ckpt=``
    (a 64×64 recording from the checkpoint's own training distribution, at the sparse end of its density
    range) → ``infer.py`` → ``python -m dstorm3d.score`` against ground_truth.csv."""
    _, checkpoint = offsets_model
    run_cli(
        [
            "-m",
            "dstorm3d.simulate",
            f"ckpt={checkpoint}",
            "frames=24",
            "frame_shape=[64,64]",
            "seed=7",
            "blinking.density_per_um2=0.08",
            "out=sim",
        ],
        tmp_path,
    )
    run_cli(
        [
            str(REPO_ROOT / "infer.py"),
            f"ckpt={checkpoint}",
            "data=sim/recording.tif",
            "out=found",
            "trainer.accelerator=cpu",
            "num_workers=0",
        ],
        tmp_path,
    )
    run_cli(
        ["-m", "dstorm3d.score", "locs=found/localizations.csv", "truth=sim/ground_truth.csv", "out=score"],
        tmp_path,
    )
    scores = json.loads((tmp_path / "score" / "score.json").read_text())
    print("end-to-end scores", {k: scores[k] for k in ("jaccard", "rmse_lat_nm", "rmse_ax_nm", "tp", "fn")})
    assert scores["tp"] + scores["fn"] >= 3 * 24
    assert scores["jaccard"] >= 0.55  # measured 0.70 (RMSE 40 / 57 nm, 76 of 99 found); untrained ≈ 0
    assert scores["rmse_lat_nm"] <= 55.0 and scores["rmse_ax_nm"] <= AXIAL_CEILING_NM
