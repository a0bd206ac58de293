"""``python -m dstorm3d.import_weights`` for both of the authors' released networks (presets storm and
telomere_learned): the CLI alone imports them, the imported networks reproduce the authors' own
localizations of their real frames (through infer.py for the telomere snapshot, paper Fig. 5), and options
that do not fit the weights are refused at import time, not discovered as an empty output."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import shared_path
from helpers_hydra import composed

from dstorm3d.import_weights import import_weights, read_reference
from dstorm3d.inference.outputs import read_localizations
from dstorm3d.metrics.matching import tolerance_agreement
from dstorm3d.utils.cli import UserInputError
from dstorm3d.utils.paths import REPO_ROOT


def run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )


@pytest.mark.slow
def test_telomere_network_imports_through_the_cli_and_infer_reproduces_the_authors_66(tmp_path):
    snapshot = shared_path("experimental", "telomeres_learned", "telomeres1.tif")
    ckpt = tmp_path / "telomere.ckpt"
    result = run(
        "-m",
        "dstorm3d.import_weights",
        "preset=telomere_learned",
        f"out={ckpt}",
        f"hydra.run.dir={tmp_path / 'import'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    check = torch.load(ckpt, map_location="cpu", weights_only=True)["dstorm3d"]["reference_check"]
    assert check["authors"] == 66 and check["reproduced"] == 66 and check["extra"] == 0  # measured: 66 / 0

    out = tmp_path / "out"
    result = run(
        "infer.py",
        f"ckpt={ckpt}",
        f"data={snapshot}",
        f"out={out}",
        "num_workers=0",
        "overlay_frames=1",
        f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = result.stdout + result.stderr
    assert "💡 Tip" not in printed and "LeafSpec" not in printed  # no third-party noise
    assert "66 localizations in 1 frames (" in printed and "0.0 frames/s" not in printed
    table = read_localizations(out / "localizations.csv")
    ours = np.stack([table["x"], table["y"], table["z"]], axis=1)
    theirs = read_reference(shared_path("reference", "telomeres1_learned.csv"), 1)
    reproduced, extra = tolerance_agreement(ours, theirs, 2.0)
    assert len(theirs) == 66
    assert reproduced >= 0.98 * len(theirs) and extra <= 0.02 * len(theirs), (reproduced, extra, len(ours))
    assert table["z"].min() >= 2000.0 and table["z"].max() <= 6000.0  # z above the coverslip, 2–6 µm
    for name in ("render.png", "render.tif", "overlay_frame0001.png", "summary.json"):
        assert (out / name).is_file(), name


@pytest.mark.slow
def test_storm_network_imports_through_the_cli_with_its_reference_check(tmp_path):
    shared_path("pretrained", "deepstorm3d_tetrapod_storm_weights.pkl")
    ckpt = tmp_path / "storm.ckpt"
    result = run("-m", "dstorm3d.import_weights", f"out={ckpt}", f"hydra.run.dir={tmp_path / 'import'}")
    assert result.returncode == 0, result.stderr[-2000:]
    check = torch.load(ckpt, map_location="cpu", weights_only=True)["dstorm3d"]["reference_check"]
    assert check["authors"] == 10 and check["reproduced"] == 10 and check["extra"] == 0  # measured: 10 / 0
    result = run("-m", "dstorm3d.import_weights", f"out={ckpt}", f"hydra.run.dir={tmp_path / 'again'}")
    assert result.returncode == 2 and "exists" in result.stderr.strip().splitlines()[-1]


def import_with(overrides: list[str], tmp_path) -> None:
    with composed(
        "import_weights.yaml", ["preset=telomere_learned", f"out={tmp_path / 'x.ckpt'}", *overrides], tmp_path
    ) as cfg:
        import_weights(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("network.dilations=[1,1,2,4,8,16]", "reproduces 0 of the authors' 66"),  # the STORM net's dilations
        ("normalization.kind=scale", "reproduces 0 of the authors' 66"),
        ("head.depth_slices=121", "D = 81 z slices but the built net has D = 121: set head.depth_slices"),
        ("head.upsampling=1", "set head.upsampling"),
        ("+head.dilations=[1,1]", "head: unknown option(s) ['dilations']"),
        ("+normalization.divisor=250", "apply to kind=scale only"),
    ],
)
def test_options_that_do_not_fit_the_weights_are_refused_at_import(tmp_path, override, message):
    shared_path("pretrained", "deepstorm3d_learned_telomere_weights.pkl")
    with pytest.raises(UserInputError, match=re.escape(message)):
        import_with([override], tmp_path)
    assert not (tmp_path / "x.ckpt").exists()
