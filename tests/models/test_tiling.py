"""Tiled inference equals whole-frame inference on frames larger than the tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_hydra import composed

from dstorm3d.models import tiling
from dstorm3d.models.tiling import localize_frames, required_head_margin, required_margin, tiles


def small_module(tmp_path, head: str, trunk: str):
    import hydra

    sizes = ["model.head.depth_slices=11"] if head == "volume" else []
    with composed(
        "train.yaml",
        [
            "experiment=quickstart",
            f"model/head={head}",
            "model.network.channels=8",
            f"model.network.trunk={trunk}",
            *sizes,
        ],
        tmp_path,
    ) as cfg:
        torch.manual_seed(0)
        module = hydra.utils.instantiate(cfg.model, _convert_="all")
    return module.eval()


def sorted_rows(found) -> list[np.ndarray]:
    rows = []
    for b in range(found.batch_size):
        keep = found.valid[b]
        table = torch.cat([found.xyz[b][keep], found.score[b][keep, None]], dim=1).double().numpy()
        key = np.round(table, 3)  # order by position to 1 nm: ties within float rounding keep a stable order
        rows.append(table[np.lexsort(key.T[::-1])])
    return rows


def assert_same_localizations(a, b, atol: float = 2e-4) -> None:
    """Frame by frame, the same localizations (sorted rows of position and score) within ``atol``."""
    for rows_a, rows_b in zip(sorted_rows(a), sorted_rows(b)):
        assert rows_a.shape == rows_b.shape
        np.testing.assert_allclose(rows_a, rows_b, rtol=0, atol=atol)


def test_tiles_cover_the_frame_once():
    covered = np.zeros((70, 90), dtype=int)
    for t in tiles((70, 90), 32, 10, alignment=4):
        covered[t.r0 : t.r1, t.c0 : t.c1] += 1
        assert t.ir0 % 4 == 0 and t.ic0 % 4 == 0 and t.ir0 <= t.r0 and t.ir1 >= t.r1
    assert (covered == 1).all()


@pytest.mark.parametrize("head, trunk", [("offsets", "paper"), ("volume", "paper"), ("offsets", "unet")])
def test_tiled_equals_whole_frame(tmp_path, head, trunk):
    module = small_module(tmp_path, head, trunk)
    frames = torch.rand(2, 70, 90) * 300 + 50
    threshold = 0.09 if head == "offsets" else 0.002 * module.readout.output_scale
    with torch.no_grad():
        whole = localize_frames(module, frames, tile=None, threshold=threshold)
        tiled = localize_frames(module, frames, tile=32, threshold=threshold)
    assert int(whole.valid.sum()) > 5  # something to compare
    assert_same_localizations(whole, tiled)


@pytest.mark.parametrize("head", ["volume", "offsets"])
@pytest.mark.parametrize("tile", [None, 48])
def test_head_tiles_equal_whole_frame(tmp_path, head, tile):
    """The trunk on the whole frame (or outer tile), the head on 16-px tiles of its features."""
    module = small_module(tmp_path, head, "paper")
    frames = torch.rand(2, 70, 90) * 300 + 50
    threshold = 0.09 if head == "offsets" else 0.002 * module.readout.output_scale
    with torch.no_grad():
        whole = localize_frames(module, frames, tile=None, threshold=threshold)
        split = localize_frames(module, frames, tile=tile, threshold=threshold, head_tile=16)
    assert int(whole.valid.sum()) > 5
    assert_same_localizations(whole, split)


def test_head_tiles_without_their_margin_change_results(tmp_path, monkeypatch):
    module = small_module(tmp_path, "volume", "paper")
    frames = torch.rand(1, 70, 90) * 300 + 50
    threshold = 0.002 * module.readout.output_scale
    assert required_head_margin(module.net) < required_margin(module.net)
    with torch.no_grad():
        whole = localize_frames(module, frames, threshold=threshold)
        monkeypatch.setattr(tiling, "required_head_margin", lambda net: 0)
        cut = localize_frames(module, frames, threshold=threshold, head_tile=16)
    a, b = sorted_rows(whole)[0], sorted_rows(cut)[0]
    assert a.shape != b.shape or not np.allclose(a, b, atol=2e-4)


def test_channels_last_network_gives_the_same_localizations(tmp_path):
    """infer.py puts the network in channels-last memory format on CPUs; the results must not change."""
    module = small_module(tmp_path, "volume", "paper")
    frames = torch.rand(2, 70, 90) * 300 + 50
    threshold = 0.002 * module.readout.output_scale
    with torch.no_grad():
        plain = localize_frames(module, frames, tile=32, threshold=threshold)
        module.net.to(memory_format=torch.channels_last)
        channels_last = localize_frames(module, frames, tile=32, threshold=threshold)
    assert int(plain.valid.sum()) > 5
    assert_same_localizations(plain, channels_last)


def test_too_little_context_changes_results(tmp_path):
    """The margin matters: with none, tiles see zero padding where the frame has signal."""
    module = small_module(tmp_path, "offsets", "paper")
    frames = torch.rand(1, 70, 90) * 300 + 50
    with torch.no_grad():
        whole = localize_frames(module, frames, tile=None, threshold=0.09)
        cut = localize_frames(module, frames, tile=32, margin=0, threshold=0.09)
    assert required_margin(module.net) > 2
    a, b = sorted_rows(whole)[0], sorted_rows(cut)[0]
    assert a.shape != b.shape or not np.allclose(a, b, atol=2e-4)


def test_frames_too_large_for_one_pass_are_refused_unless_processed_in_pieces(tmp_path):
    from dstorm3d.inference.run import check_applicable, resolve_tile
    from dstorm3d.utils.cli import UserInputError

    module = small_module(tmp_path, "volume", "paper")  # D = 11 slices, 4× upsampling
    huge = (4096, 4096)  # 16384² × 11 voxels > 2e9 in one pass
    with pytest.raises(UserInputError, match="tile=<px>"):
        check_applicable(module, huge)
    check_applicable(module, huge, tile=256)
    check_applicable(module, huge, head_tile=64)
    assert resolve_tile("head_tile", "auto", "CPUAccelerator", {True: 64, False: None}) == 64
    assert resolve_tile("head_tile", "auto", "CUDAAccelerator", {True: 64, False: None}) is None
    with pytest.raises(UserInputError, match="head_tile must be"):
        resolve_tile("head_tile", 3, "CPUAccelerator", {True: 64, False: None})
