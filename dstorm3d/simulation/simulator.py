"""Simulated training data: emitter-list samples (CPU, per index) and frames rendered on the device.

A sample depends only on ``(seed, stream, epoch, index)``: its emitters, their blur and the frame's
background are drawn from ``numpy.random.default_rng([seed, stream, epoch, index])``. Frames are
rendered from a batch of samples by :class:`FrameSimulator` on whatever device the batch is on, with
camera noise from a ``torch.Generator`` seeded per batch (see :func:`batch_generator`).

The ``simulation`` config (plain data, stored in checkpoints)::

    frame_shape: [H, W]                 # pixels
    emitters: {...}                     # EmitterSampler fields: count_range or density_per_um2, photons,
                                        # label_min_photons, min_distance_um, margin_px, max_emitters
    background: {kind: ..., ...}        # dstorm3d.simulation.background (photons/px)
    camera: {kind: ..., ...}            # dstorm3d.simulation.camera
    blur_sigma_px: [lo, hi] | null      # per-emitter Gaussian blur σ, uniform in [lo, hi] (pixels); it
                                        # combines with the PSF model's own blur σ_psf in quadrature:
                                        # each emitter is blurred by √(σ_psf² + σ²)
    pixel_integration: false            # average intensity over the pixel area
    render_window: null | P             # null: exact whole-frame rendering; P: P×P window per emitter
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from dstorm3d.emitters import Emitters
from dstorm3d.optics.psf_model import PSFModel, total_blur_px
from dstorm3d.optics.render import render_frames
from dstorm3d.optics.setup import OpticalSetup
from dstorm3d.simulation.background import BackgroundModel, background_from_config
from dstorm3d.simulation.camera import camera_from_config
from dstorm3d.simulation.sampling import EmitterSampler

STREAMS = {"train": 0, "val": 1, "test": 2}
SIMULATION_KEYS = (
    "frame_shape",
    "emitters",
    "background",
    "camera",
    "blur_sigma_px",
    "pixel_integration",
    "render_window",
)


def check_simulation_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate keys of a ``simulation`` config and return it as a plain dict."""
    config = dict(config)
    unknown = set(config) - set(SIMULATION_KEYS)
    if unknown:
        raise ValueError(f"unknown simulation key(s) {sorted(unknown)}; known: {list(SIMULATION_KEYS)}")
    if "frame_shape" not in config:
        raise ValueError("simulation.frame_shape is required, e.g. [121, 121]")
    return config


def emitter_sampler(simulation: Mapping[str, Any], setup: OpticalSetup) -> EmitterSampler:
    """The :class:`EmitterSampler` of a simulation config for an optical setup."""
    return EmitterSampler.from_setup(
        setup, tuple(simulation["frame_shape"]), **dict(simulation.get("emitters") or {})
    )


def stream_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def batch_generator(device: torch.device, *parts: int | str) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``parts`` (camera noise of one batch)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(stream_seed(*parts))
    return generator


class EmitterDataset(Dataset):
    """Map-style data set of simulated frames' emitter lists; sample ``i`` depends only on
    ``(seed, stream, epoch, i)``.

    Each item is a dict of numpy arrays: ``xyz (n, 3)`` µm, ``photons (n,)``, ``labelled (n,)`` bool,
    ``blur_sigma (n,)`` pixels (absent without blur), ``background (H, W)`` photons/px, ``index ()``.
    """

    def __init__(
        self,
        sampler: EmitterSampler,
        background: BackgroundModel,
        size: int,
        seed: int,
        stream: str = "train",
        epoch: int = 0,
        blur_sigma_px: Sequence[float] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a simulated data set needs at least one sample, got size={size}")
        self.sampler, self.background = sampler, background
        self.size, self.seed, self.stream, self.epoch = int(size), int(seed), stream, int(epoch)
        self.blur = None if blur_sigma_px is None else (float(blur_sigma_px[0]), float(blur_sigma_px[1]))

    def __len__(self) -> int:
        return self.size

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, STREAMS[self.stream], self.epoch, int(index)])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = self.rng(index)
        sample = self.sampler.sample(rng)
        n = len(sample["photons"])
        item = {
            "xyz": sample["xyz"].astype(np.float32),
            "photons": sample["photons"].astype(np.float32),
            "labelled": sample["labelled"].astype(bool),
            "index": np.int64(index),
        }
        if self.blur is not None:
            item["blur_sigma"] = rng.uniform(self.blur[0], self.blur[1], n).astype(np.float32)
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        item["background"] = self.background(1, self.sampler.frame_shape, generator=generator)[0].numpy()
        return item


def collate_samples(items: Sequence[Mapping[str, np.ndarray]]) -> dict[str, Tensor]:
    """Pad a list of :class:`EmitterDataset` items into a batch of tensors.

    Keys: ``xyz (B, M, 3)``, ``photons (B, M)``, ``valid (B, M)``, ``labelled (B, M)``,
    ``blur_sigma (B, M)`` (if any), ``background (B, H, W)``, ``index (B,)``. The padding is done in
    numpy and each key becomes a tensor once (this runs in the DataLoader workers, per batch).
    """
    counts = np.array([len(it["photons"]) for it in items], dtype=np.int64)
    b, m = len(items), int(counts.max(initial=0))
    valid = np.arange(m) < counts[:, None]  # (B, M): item i fills its first counts[i] slots
    has_blur = "blur_sigma" in items[0]

    def padded(key: str, dtype: type, trailing: tuple[int, ...] = ()) -> Tensor:
        out = np.zeros((b, m, *trailing), dtype=dtype)
        if m:
            out[valid] = np.concatenate([it[key] for it in items]).reshape(-1, *trailing)
        return torch.from_numpy(out)

    batch = {
        "xyz": padded("xyz", np.float32, (3,)),
        "photons": padded("photons", np.float32),
        "valid": torch.from_numpy(valid),
        "labelled": padded("labelled", np.bool_),
        "background": torch.from_numpy(
            np.stack([it["background"] for it in items]).astype(np.float32, copy=False)
        ),
        "index": torch.from_numpy(np.array([int(it["index"]) for it in items], dtype=np.int64)),
    }
    if has_blur:
        batch["blur_sigma"] = padded("blur_sigma", np.float32)
    return batch


def batch_emitters(batch: Mapping[str, Tensor]) -> Emitters:
    """The ground truth of a collated batch."""
    return Emitters(batch["xyz"], batch["photons"], batch["valid"], batch["labelled"])


class FrameSimulator(nn.Module):
    """Renders collated batches into camera frames on the batch's device.

    Holds the PSF model's pupil renderer (:meth:`PSFModel.pupil_model`: its mask a buffer, or a learnable
    parameter for PSF design; its pupil amplitude) and the camera model. Every emitter is blurred by the
    PSF model's σ and the batch's per-emitter σ combined in quadrature (:func:`total_blur_px`). ``forward``
    returns frames in camera counts ``(B, H, W)``.
    """

    def __init__(
        self,
        psf: PSFModel,
        simulation: Mapping[str, Any],
        learnable_mask: bool = False,
    ) -> None:
        super().__init__()
        simulation = check_simulation_config(simulation)
        setup = psf.setup
        self.setup = setup
        self.psf_blur_sigma_px = float(psf.blur_sigma_px)
        self.pupil = psf.pupil_model(torch.float32, learnable=learnable_mask)
        self.frame_shape = (int(simulation["frame_shape"][0]), int(simulation["frame_shape"][1]))
        self.camera = camera_from_config(simulation.get("camera") or {"kind": "ideal"})
        self.render_window = simulation.get("render_window")
        self.pixel_integration = bool(simulation.get("pixel_integration", False))
        if self.render_window is None and max(self.frame_shape) > setup.pupil_grid:
            raise ValueError(
                f"simulation.frame_shape {list(self.frame_shape)} exceeds the DFT period of "
                f"{setup.pupil_grid} px: set simulation.render_window to at most {setup.pupil_grid}"
            )

    def expected_photons(self, batch: Mapping[str, Tensor], phase_mask: Tensor | None = None) -> Tensor:
        """Noise-free image ``(B, H, W)``: rendered emitters + background, photons per pixel."""
        valid = batch["valid"]
        xyz = batch["xyz"][valid].to(self.pupil.kappa.dtype)
        photons = batch["photons"][valid]
        frames = torch.arange(valid.shape[0], device=valid.device).unsqueeze(1).expand_as(valid)[valid]
        blur = batch["blur_sigma"][valid] if "blur_sigma" in batch else None
        blur = total_blur_px(self.psf_blur_sigma_px, blur)
        signal = render_frames(
            self.pupil,
            xyz,
            photons,
            frames,
            valid.shape[0],
            self.frame_shape,
            window=self.render_window,
            blur_sigma_px=blur,
            pixel_integration=self.pixel_integration,
            phase_mask=phase_mask,
        )
        return signal + batch["background"].to(signal.dtype)

    def forward(
        self,
        batch: Mapping[str, Tensor],
        generator: torch.Generator | None = None,
        differentiable: bool = False,
        phase_mask: Tensor | None = None,
    ) -> Tensor:
        mu = self.expected_photons(batch, phase_mask)
        return self.camera.sample(mu, generator=generator, differentiable=differentiable)


def simulation_parts(
    simulation: Mapping[str, Any], setup: OpticalSetup
) -> tuple[EmitterSampler, BackgroundModel]:
    """The sampler and background model of a simulation config."""
    simulation = check_simulation_config(simulation)
    sampler = emitter_sampler(simulation, setup)
    background = background_from_config(simulation.get("background") or {"kind": "none"})
    return sampler, background
