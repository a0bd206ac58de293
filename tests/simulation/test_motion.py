"""Moving emitters (dstorm3d.simulation.motion): reflecting walls, Brownian steps of the asked D, immobile
emitters, settings; and ``python -m dstorm3d.simulate`` with moving emitters end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dstorm3d.errors import UserInputError
from dstorm3d.simulation.motion import MotionSettings, emitter_trajectories, reflect_into
from dstorm3d.utils.paths import REPO_ROOT

LOW, HIGH = np.array([0.0, 0.0, 1.0]), np.array([5.0, 4.0, 3.0])


def test_reflect_into_mirrors_at_the_walls_and_pins_a_flat_range():
    low, high = np.array([0.0, 0.0, 2.0]), np.array([1.0, 1.0, 2.0])
    values = np.array([[0.3, 1.2, 5.0], [-0.3, 2.5, -1.0], [3.4, -1.75, 2.0]])
    folded = reflect_into(values, low, high)
    # 1.2 → 0.8, −0.3 → 0.3, 2.5 → 0.5 (two crossings), 3.4 → 0.6, −1.75 → 0.25; z pinned at 2
    np.testing.assert_allclose(folded, [[0.3, 0.8, 2.0], [0.3, 0.5, 2.0], [0.6, 0.25, 2.0]])


def test_without_motion_every_frame_is_the_start_and_the_random_stream_is_untouched():
    rng = np.random.default_rng(0)
    start = rng.uniform(LOW, HIGH, size=(20, 3))
    state = rng.bit_generator.state
    frames = list(emitter_trajectories(rng, start, 5, MotionSettings(0.0, 0.0, 0.1), LOW, HIGH))
    assert len(frames) == 5 and all(np.array_equal(f, start) for f in frames)
    assert rng.bit_generator.state == state


def test_brownian_steps_have_the_asked_d_and_immobile_emitters_stay_put():
    far_low, far_high = np.zeros(3), np.full(3, 1000.0)  # walls too far away to matter
    rng = np.random.default_rng(1)
    start = rng.uniform(far_low, far_high, size=(2000, 3))
    motion = MotionSettings(diffusion_um2_per_s=0.02, immobile_fraction=0.3, frame_interval_s=0.05)
    path = np.stack(list(emitter_trajectories(rng, start, 11, motion, far_low, far_high)))  # (11, 2000, 3)
    moved = np.any(path != path[0], axis=(0, 2))
    assert (~moved).sum() == motion.immobile_count(2000) == 600
    squared_steps = np.sum(np.diff(path[:, moved], axis=0) ** 2, axis=2)  # µm²
    # 6·D·Δt = 0.006 µm²; 14,000 steps: standard error 0.7 %; measured −0.96 % (seeds 0–3: −1.1 … +0.3 %)
    assert squared_steps.mean() == pytest.approx(6 * 0.02 * 0.05, rel=0.03)
    rerun = np.stack(
        list(emitter_trajectories(np.random.default_rng(5), start, 3, motion, far_low, far_high))
    )
    again = np.stack(
        list(emitter_trajectories(np.random.default_rng(5), start, 3, motion, far_low, far_high))
    )
    np.testing.assert_array_equal(rerun, again)


def test_the_walls_keep_fast_emitters_inside_the_volume():
    rng = np.random.default_rng(2)
    start = rng.uniform(LOW, HIGH, size=(500, 3))
    fast = MotionSettings(diffusion_um2_per_s=2.0, immobile_fraction=0.0, frame_interval_s=0.1)  # σ 0.63 µm
    path = np.stack(list(emitter_trajectories(rng, start, 50, fast, LOW, HIGH)))
    assert np.all((path >= LOW) & (path <= HIGH))
    # reflected, not clipped: nobody sits on a wall, and the emitters still fill the box evenly (uniform z
    # quartiles 1.5 and 2.5 µm; measured 1.52 and 2.48 µm)
    assert not np.any((path[1:] == LOW) | (path[1:] == HIGH))
    np.testing.assert_allclose(np.percentile(path[-1, :, 2], [25, 75]), [1.5, 2.5], atol=0.15)


@pytest.mark.parametrize(
    "config",
    [
        {"diffusion_um2_per_s": -0.1},
        {"immobile_fraction": 1.5},
        {"frame_interval_s": 0},
        {"diffusion_um2_per_s": "fast"},
        {"speed": 1.0},
    ],
)
def test_bad_motion_settings_are_user_errors(config):
    with pytest.raises(UserInputError, match="motion"):
        MotionSettings.from_config(config)


def test_motion_settings_defaults_keep_emitters_fixed():
    assert MotionSettings.from_config(None) == MotionSettings() and not MotionSettings().moves
    assert not MotionSettings.from_config({"diffusion_um2_per_s": 0.1, "immobile_fraction": 1.0}).moves
    assert MotionSettings(0.005, 0.0, 0.1).step_sigma_um == pytest.approx(0.001**0.5)


# ---------------------------------------------------------------------------------------- end to end
def test_simulate_writes_moving_emitters_whose_ids_persist_and_whose_steps_match_d(tmp_path):
    """60 emitters always ON in a 48 × 40 px (5.3 × 4.4 µm) frame over 40 frames, D = 0.01 µm²/s at 10 Hz,
    15 of them immobile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            "DSTORM3D_LOG_DIR": str(tmp_path / "logs"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        }
    )
    args = [
        "frames=40",
        "frame_shape=[48,40]",
        "structure=random",
        "emitters=60",
        "blinking.duty_cycle=1",
        "render_window_px=48",
        "motion.diffusion_um2_per_s=0.01",
        "motion.immobile_fraction=0.25",
        "motion.frame_interval_s=0.1",
        "seed=3",
        "out=sim",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "dstorm3d.simulate", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "45 emitters diffuse with D = 0.01 µm²/s" in result.stdout
    truth = pd.read_csv(tmp_path / "sim" / "ground_truth.csv")
    assert len(truth) == 60 * 40
    per_frame = truth.groupby("frame")["emitter_id"].apply(lambda ids: sorted(ids))
    assert all(ids == list(range(1, 61)) for ids in per_frame)  # every emitter, once, in every frame
    xyz = truth.sort_values(["emitter_id", "frame"])[["x [nm]", "y [nm]", "z [nm]"]].to_numpy()
    steps = np.diff(xyz.reshape(60, 40, 3), axis=1)  # (emitter, step, 3) nm
    squared = np.sum(steps**2, axis=2)
    immobile = np.all(squared == 0, axis=1)
    assert immobile.sum() == 15
    # 6·D·Δt = 6,000 nm²; 45 × 39 steps: standard error 2 %, the walls ~ −1 %; measured 5,731 nm² (−4.5 %;
    # seeds 3–6: −4.5 … −0.1 %)
    assert squared[~immobile].mean() == pytest.approx(6 * 0.01 * 0.1 * 1e6, rel=0.10)
    assert np.all((truth["z [nm]"] >= 0) & (truth["z [nm]"] <= 4000))
    assert np.all((truth["x [nm]"] >= 0) & (truth["x [nm]"] <= 40 * 110))
    record = json.loads((tmp_path / "sim" / "simulation.json").read_text())
    assert record["derived"]["motion"]["mobile_emitters"] == 45
    assert record["derived"]["motion"]["mean_squared_step_nm2"] == pytest.approx(6000.0)
