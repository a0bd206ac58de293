"""Every command ends a bad command line the same way: one ``error:`` line on stderr, exit code 2, even where
Hydra itself rejects the line while composing the config (an unknown key, a missing config option, a
malformed override)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dstorm3d.utils.cli import composition_message
from dstorm3d.utils.paths import REPO_ROOT

COMMANDS = {
    "train.py": [str(REPO_ROOT / "train.py")],
    "infer.py": [str(REPO_ROOT / "infer.py"), "ckpt=a.ckpt", "data=b.tif"],
    "evaluate.py": [str(REPO_ROOT / "evaluate.py")],
    "simulate": ["-m", "dstorm3d.simulate"],
    "import_weights": ["-m", "dstorm3d.import_weights"],
    "optics.show": ["-m", "dstorm3d.optics.show"],
    "score": ["-m", "dstorm3d.score", "locs=a.csv", "truth=b.csv"],
    "uncertainty": ["-m", "dstorm3d.uncertainty", "ckpt=a.ckpt"],
    "view": ["-m", "dstorm3d.view", "locs=a.csv"],
    "analyze": ["-m", "dstorm3d.analyze", "locs=a.csv"],
    "estimate": ["-m", "dstorm3d.estimate", "data=a.tif"],
    "calibrate": ["-m", "dstorm3d.calibrate", "beads=a.tif"],
}
BAD_LINES = {
    "unknown key": (["no_such_key=1"], "Could not override 'no_such_key'"),
    "malformed override": (["batch_size=[1"], "no viable alternative"),
}


def run(command: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_hydra_composition_errors_are_one_line_with_exit_code_2(name, case, tmp_path):
    extra, expected = BAD_LINES[case]
    result = run([*COMMANDS[name], *extra], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # refused before Hydra made a run folder


@pytest.mark.slow
def test_a_missing_experiment_names_the_available_ones(tmp_path):
    result = run([str(REPO_ROOT / "train.py"), "experiment=no_such_experiment"], tmp_path)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, lines
    assert (
        "experiment/no_such_experiment" in lines[0]
        and "quickstart" in lines[0]
        and "storm_offsets" in lines[0]
    )


def test_composition_message_joins_lines_and_drops_the_search_path():
    error = Exception(
        "In 'train': Could not find 'experiment/x'\n\nAvailable options in 'experiment':\n"
        "\ta\n\tb\nConfig search path:\n\tprovider=hydra, path=pkg://hydra.conf"
    )
    assert composition_message(error) == (
        "In 'train': Could not find 'experiment/x'; Available options in 'experiment': a, b"
    )
    assert composition_message(Exception("Could not override 'k'.\nTo append use +k=1")) == (
        "Could not override 'k'. To append use +k=1"
    )
