"""Simulated data: a sample depends only on (seed, epoch, index); ranks and epochs differ; frames render."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from dstorm3d.data.simulated import SimulatedDataModule
from dstorm3d.optics.config import setup_from_config
from dstorm3d.optics.psf_model import ScalarPupilPSF
from dstorm3d.simulation.simulator import FrameSimulator, batch_emitters, batch_generator, collate_samples

OPTICS = dict(
    name="storm",
    wavelength_um=0.67,
    na=1.45,
    n_immersion=1.518,
    n_sample=1.33,
    camera_pixel_um=11.0,
    magnification=100.0,
    f4f_mm=100.0,
    mask_pixel_um=30.0,
    nfp_um=1.5,
    z_range_um=[0.0, 4.0],
    pupil_grid=203,
    aperture="water",
    mask="tetrapod",
    mask_variable=None,
    resample_mask=False,
)
SIMULATION = dict(
    frame_shape=[24, 24],
    emitters=dict(
        count_range=[1, 6],
        photons=dict(kind="gamma", shape=3.0, scale=3000.0),
        label_min_photons=6000.0,
        margin_px=4,
    ),
    background=dict(kind="uniform", level=[10.0, 50.0]),
    camera=dict(kind="readout", baseline=[20.0, 40.0], read_noise=[8.0, 12.0]),
    blur_sigma_px=[0.99, 1.01],
    pixel_integration=False,
    render_window=None,
)


def make_datamodule(**kwargs) -> SimulatedDataModule:
    defaults = dict(batch_size=4, train_samples=16, val_samples=8, test_samples=8, seed=7)
    return SimulatedDataModule(OPTICS, SIMULATION, **(defaults | kwargs))


def same_item(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_a_sample_depends_only_on_seed_stream_epoch_and_index():
    dm = make_datamodule()
    first, again = dm.dataset("train", epoch=3), make_datamodule().dataset("train", epoch=3)
    for i in (0, 5, 15):
        assert same_item(first[i], again[i])
    assert same_item(first[5], first[5])  # order of access does not matter
    other_epoch = dm.dataset("train", epoch=4)
    assert not same_item(first[5], other_epoch[5])
    assert not same_item(first[5], first[6])
    assert not same_item(dm.dataset("val")[0], dm.dataset("test")[0])
    assert not same_item(first[0], make_datamodule(seed=8).dataset("train", epoch=3)[0])


def test_ddp_ranks_draw_disjoint_distinct_samples():
    dataset = make_datamodule().dataset("train", epoch=0)
    per_rank = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False)
        loader = DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=collate_samples)
        per_rank.append(torch.cat([b["index"] for b in loader]).tolist())
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(len(dataset)))
    xyz0 = [dataset[i]["xyz"] for i in per_rank[0]]
    xyz1 = [dataset[i]["xyz"] for i in per_rank[1]]
    assert not any(np.array_equal(a, b) for a in xyz0 for b in xyz1)


def test_training_loader_is_fresh_every_epoch_and_validation_fixed():
    class FakeTrainer:
        current_epoch = 0

    dm = make_datamodule()
    dm.trainer = FakeTrainer()
    epoch0 = next(iter(dm.train_dataloader()))
    FakeTrainer.current_epoch = 1
    epoch1 = next(iter(dm.train_dataloader()))
    assert not torch.equal(epoch0["xyz"], epoch1["xyz"])
    val_a, val_b = next(iter(dm.val_dataloader())), next(iter(dm.val_dataloader()))
    assert all(torch.equal(val_a[k], val_b[k]) for k in val_a)


def test_collate_pads_each_item_into_its_row():
    dataset = make_datamodule().dataset("train", epoch=0)
    empty = dict(
        dataset[1],
        xyz=np.zeros((0, 3), np.float32),
        photons=np.zeros(0, np.float32),
        labelled=np.zeros(0, bool),
        blur_sigma=np.zeros(0, np.float32),
        index=np.int64(99),
    )
    items = [dataset[0], empty, dataset[2]]
    batch = collate_samples(items)
    counts = [len(it["photons"]) for it in items]
    m = max(counts)
    assert batch["xyz"].shape == (3, m, 3) and batch["xyz"].dtype == torch.float32
    assert batch["valid"].dtype == torch.bool and batch["labelled"].dtype == torch.bool
    assert batch["background"].shape == (3, 24, 24) and batch["index"].tolist() == [0, 99, 2]
    for i, (item, n) in enumerate(zip(items, counts)):
        assert batch["valid"][i].tolist() == [True] * n + [False] * (m - n)
        for key in ("xyz", "photons", "labelled", "blur_sigma"):
            assert np.array_equal(batch[key][i, :n].numpy(), item[key])
            assert not batch[key][i, n:].any()  # padding is zero / False
        assert np.array_equal(batch["background"][i].numpy(), item["background"])
    nothing = collate_samples([empty])
    assert nothing["xyz"].shape == (1, 0, 3) and nothing["photons"].shape == (1, 0)


def test_collated_batches_render_into_plausible_frames():
    dm = make_datamodule()
    batch = next(iter(DataLoader(dm.dataset("val"), batch_size=4, collate_fn=collate_samples)))
    emitters = batch_emitters(batch)
    assert emitters.valid.any() and (emitters.labelled <= emitters.valid).all()
    dim = emitters.valid & (emitters.photons <= 6000.0)
    assert not (emitters.labelled & dim).any()
    setup = setup_from_config(OPTICS)
    from dstorm3d.optics.masks import tetrapod_mask

    simulator = FrameSimulator(ScalarPupilPSF(setup, tetrapod_mask(setup)), SIMULATION)
    clean = simulator.expected_photons(batch)
    frames = simulator(batch, generator=batch_generator(torch.device("cpu"), 0, "val", 0))
    again = simulator(batch, generator=batch_generator(torch.device("cpu"), 0, "val", 0))
    assert frames.shape == (4, 24, 24) and torch.equal(frames, again)
    # signal: photons inside the frame ≤ emitted; background 10–50 per pixel
    assert float(clean.sum()) <= float(batch["photons"].sum()) + 50 * 24 * 24 * 4
    assert float((frames - clean).mean()) == pytest.approx(30.0, abs=6.0)  # the readout baseline 20–40


def test_frames_larger_than_the_period_need_a_window():
    setup = setup_from_config(OPTICS)
    with pytest.raises(ValueError, match="render_window"):
        FrameSimulator(ScalarPupilPSF(setup), dict(SIMULATION, frame_shape=[332, 492]))
    FrameSimulator(ScalarPupilPSF(setup), dict(SIMULATION, frame_shape=[332, 492], render_window=64))
