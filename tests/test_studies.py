"""studies/fixed_sets.py on a tiny untrained checkpoint: the table, the JSON, determinism, bad input."""

from __future__ import annotations

import importlib.util
import json

import pytest
from helpers_checkpoints import save_tiny_checkpoint

from dstorm3d.utils.paths import REPO_ROOT


def fixed_sets_module():
    spec = importlib.util.spec_from_file_location("fixed_sets", REPO_ROOT / "studies" / "fixed_sets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fixed_sets")
    return save_tiny_checkpoint(folder / "tiny.ckpt", ["model/head=offsets"], folder)


def test_scores_are_written_and_repeat_exactly(checkpoint, tmp_path, capsys):
    fixed_sets = fixed_sets_module()
    args = [str(checkpoint), "--sets", "1-3", "5", "--frames", "8", "--batch-size", "4", "--threads", "1"]
    assert fixed_sets.main([*args, "--out", str(tmp_path / "a.json")]) == 0
    assert "| 1-3 |" in capsys.readouterr().out
    fixed_sets.main([*args, "--blur", "0.5", "1.0", "--out", str(tmp_path / "b.json")])
    fixed_sets.main([*args, "--out", str(tmp_path / "c.json")])
    first, blurred, again = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "abc")
    assert set(first["sets"]) == {"1-3", "5"}
    assert first["sets"] == again["sets"]  # the same frames and noise every run
    assert blurred["blur_sigma_px"] == [0.5, 1.0]
    assert blurred["sets"]["1-3"]["loss"] != first["sets"]["1-3"]["loss"]  # other frames, other loss
    for scores in first["sets"].values():
        assert 0.0 <= scores["jaccard"] <= 1.0 and 0.0 <= scores["recall"] <= 1.0


def test_existing_output_and_bad_blur_are_refused(checkpoint, tmp_path):
    fixed_sets = fixed_sets_module()
    out = tmp_path / "scores.json"
    out.write_text("keep")
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        fixed_sets.main([str(checkpoint), "--frames", "4", "--out", str(out)])
    assert out.read_text() == "keep"
    with pytest.raises(SystemExit, match="--blur takes"):
        fixed_sets.main([str(checkpoint), "--frames", "4", "--blur", "wide"])
    with pytest.raises(SystemExit, match="checkpoint not found"):
        fixed_sets.main([str(tmp_path / "missing.ckpt")])
