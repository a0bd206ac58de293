"""The real training CLI in subprocesses: W&B offline media, DDP on CPU, resuming from last.ckpt."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dstorm3d.utils.paths import REPO_ROOT

TINY = [
    "debug=default",
    "simulation.frame_shape=[24,24]",
    "model.network.channels=8",
    "model.head.depth_slices=11",
    "data.batch_size=2",
    "data.val_samples=4",
    "data.test_samples=4",
    "trainer.limit_train_batches=3",
]


def run_train(args: list[str], run_dir: Path, env: dict[str, str] | None = None, timeout: int = 600):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    environment.update({"PYTHONUNBUFFERED": "1", "DSTORM3D_LOG_DIR": str(run_dir.parent)} | (env or {}))
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        cwd=run_dir.parent,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    """Rows of every CSV log of the run folder (a resumed run logs into csv/resumed_N/)."""
    rows = []
    for path in sorted((run_dir / "csv").rglob("metrics.csv")):
        with open(path) as fh:
            rows.extend(csv.DictReader(fh))
    return rows


@pytest.mark.slow
def test_wandb_runs_offline_without_a_key_and_gets_the_media(tmp_path):
    run = tmp_path / "run"
    result = run_train([*TINY, "logger=default", "trainer.max_epochs=1"], run, env={"WANDB_API_KEY": ""})
    media = run / "wandb" / "latest-run" / "files" / "media" / "images"
    assert list(media.glob("psf/phase_mask_*.png")), "phase mask image missing"
    assert list(media.glob("psf/zstack_montage_*.png")), "PSF montage missing"
    assert list(media.glob("val/examples_*.png")), "validation examples missing"
    assert list((run / "psf").glob("psf_zstack_*.tif")) and list((run / "examples").glob("*.png"))
    (offline,) = run.glob("wandb/offline-run-*")
    assert (
        f"W&B offline run: {offline}" in result.stdout
        and f"upload it with: wandb sync {offline}" in result.stdout
    )


@pytest.mark.slow
def test_two_process_cpu_ddp_run_completes(tmp_path):
    run = tmp_path / "ddp"
    run_train(
        [
            *TINY,
            "trainer.devices=2",
            "trainer.strategy=ddp",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            "data.val_samples=8",
            "data.test_samples=8",
        ],
        run,
    )
    assert (run / "checkpoints" / "last.ckpt").is_file()
    tested = [float(r["test/jaccard"]) for r in metric_rows(run) if r.get("test/jaccard")]
    assert len(tested) == 1 and 0.0 <= tested[0] <= 1.0  # one test row, logged once from the two ranks


@pytest.mark.slow
def test_train_prints_where_its_results_are_and_links_the_best_checkpoint(tmp_path):
    run = tmp_path / "where"
    result = run_train([*TINY, "trainer.max_epochs=2", "test=false"], run)
    lines = [line for line in result.stdout.splitlines() if ": " in line]
    assert f"run folder: {run}" in lines
    best = run / "checkpoints" / "best.ckpt"
    assert best.is_symlink() and best.resolve().parent == (run / "checkpoints").resolve()
    assert best.resolve().name.startswith("epoch_") and best.resolve().is_file()
    assert f"best checkpoint: {best} -> {best.resolve().name}" in lines
    assert f"last checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in lines
    assert torch.load(best, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_training_resumes_from_last_checkpoint(tmp_path):
    run = tmp_path / "resume"
    run_train([*TINY, "trainer.max_epochs=1", "test=false"], run)
    last = run / "checkpoints" / "last.ckpt"
    first = torch.load(last, map_location="cpu", weights_only=True)
    assert first["epoch"] == 0 and first["global_step"] == 3
    run_train([*TINY, "trainer.max_epochs=2", f"ckpt_path={last}", "test=false"], run)
    second = torch.load(last, map_location="cpu", weights_only=True)
    # Continued, not restarted: 3 more steps on top of the first run's 3. (A last.ckpt written when fit
    # ends records the finished epoch count, 2; one written at the end of epoch 1 records 1.)
    assert second["global_step"] == 6 and second["epoch"] in (1, 2)
    epochs = {r["epoch"] for r in metric_rows(run) if r.get("val/loss")}
    assert {"0", "1"} <= epochs
    assert (run / "csv" / "metrics.csv").is_file() and (run / "csv" / "resumed_1" / "metrics.csv").is_file()


def test_checkpoint_alone_rebuilds_a_localizer(tmp_path):
    from helpers_hydra import composed

    from dstorm3d.modules.localizer import LocalizerModule
    from dstorm3d.training import train

    with composed(
        "train.yaml",
        [*TINY, "logger=csv", "trainer.max_epochs=1", "test=false", "optics.mask=tetrapod"],
        tmp_path,
    ) as cfg:
        train(cfg)
    path = tmp_path / "checkpoints" / "last.ckpt"
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert raw["hyper_parameters"]["optics"]["mask"] == "checkpoint"
    model = LocalizerModule.load_from_checkpoint(path, map_location="cpu")
    from dstorm3d.optics.masks import tetrapod_mask

    assert torch.allclose(
        model.phase_mask().double(), torch.as_tensor(tetrapod_mask(model.optical_setup)), atol=1e-6
    )
    frames = torch.rand(2, 24, 24) * 100
    localizations = model.localize(frames)
    assert localizations.batch_size == 2


@pytest.mark.parametrize(
    "setting, message",
    [
        ("data.batch_size=0", "data.batch_size=0: must be a whole number ≥ 1"),
        ("data.train_samples=0", "data.train_samples=0: must be a whole number ≥ 1"),
        ("model.optimizer.lr=abc", "model.optimizer.lr='abc': must be a number > 0"),
        ("ckpt_path=/nowhere/last.ckpt", "ckpt_path=/nowhere/last.ckpt: checkpoint to resume from not found"),
        ("threads=0", "threads must be a whole number ≥ 1"),
    ],
)
def test_bad_training_settings_are_refused_before_anything_is_built(tmp_path, setting, message):
    from helpers_hydra import composed

    from dstorm3d.errors import UserInputError
    from dstorm3d.training import train

    with composed("train.yaml", [*TINY, "logger=csv", setting], tmp_path) as cfg:
        with pytest.raises(UserInputError, match=re.escape(message)):
            train(cfg)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "csv").exists()


@pytest.mark.slow
def test_seeded_cpu_runs_with_the_same_threads_are_bit_identical(tmp_path):
    """The same seed and the same number of CPU threads give the same weights, bit for bit. (A different
    thread count changes the order of float sums inside torch's kernels: measured, 76 of 93 tensors then
    differ after 30 quickstart steps, and the runs drift apart.)"""
    weights = []
    for name in ("a", "b"):
        run = tmp_path / name
        run_train([*TINY, "trainer.max_epochs=2", "threads=1", "seed=3"], run)
        state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        weights.append(state["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in weights[0].values() if v.is_floating_point())
