"""The paper's density benchmark (Fig. 2, Fig. 4d–f) for any trained checkpoint(s): ``python evaluate.py``.

For every checkpoint, test sets of ``frames`` frames are simulated per density and condition (photons,
background, camera), the network localizes them, and (optionally) the classical baseline — matching
pursuit (MP) with the same physical model — runs on the same frames. Scores are pooled over the frames of
a point (as :class:`~dstorm3d.metrics.localization.JaccardRMSE`); their standard deviations are those of
the per-frame values (:func:`~dstorm3d.metrics.localization.per_frame_scores`). RMSE is also binned by the
true depth and set beside the Cramér–Rao bound of the same setup (:func:`~dstorm3d.optics.crlb.crlb`).

Test sets, exactly:

* Densities are given as ``counts``: emitters per reference field of ``reference_field_px``² pixels (the
  paper's 121 × 121 px ≈ 13.3 × 13.3 µm² at 110 nm). The density is ``count / (reference_field_px·Δx)²``
  emitters/µm². A checkpoint trained on other frames (e.g. the 32 × 32 quickstart) is evaluated on its own
  frame size with the same densities: a frame of H × W px expects ``c = count·H·W/reference_field_px²``
  emitters, and each frame holds ⌊c⌋ or ⌊c⌋ + 1 of them (the latter with probability c − ⌊c⌋), so the mean
  density is kept exactly; the realised mean is reported as ``emitters_per_frame``.
* Frame ``i`` of a point with ``count`` draws its emitters from ``numpy.random.default_rng([seed, count,
  i])`` and its camera noise from a ``torch.Generator`` seeded by ``(seed, condition, count, i)``. So a
  frame depends on nothing else — not the batch size, not the number of frames, not the other points —
  the emitter positions are the same in every condition, and checkpoints with the same frame size and
  axial range see the same emitters (with the same noise streams). Checkpoints that also share the
  physics (PSF model, blur, rendering) share the very same frames, which are simulated once.
* The PSF is each checkpoint's PSF model (its setup with ``optics`` changes, its current phase mask, its
  pupil amplitude and blur), or with ``optics.pupil=<file.npz>`` the model of that calibration file (the
  microscope the network is tested on; its pixel size must be the checkpoint's). Test frames, matching
  pursuit and the CRLB use it; the network stays as trained.
* Frames are rendered one at a time on the CPU in float32 (deterministic); the network (and MP) run on
  ``device``. On a GPU, cuDNN may pick other convolution algorithms for other batch sizes; on the CPU the
  results are bitwise independent of ``batch_size``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dstorm3d.emitters import Emitters
from dstorm3d.metrics.localization import JaccardRMSE, per_frame_scores
from dstorm3d.metrics.matching import ALPHA_AXIAL, ALPHA_LATERAL, efficiency, match_frame
from dstorm3d.optics.crlb import crlb
from dstorm3d.optics.psf_model import PSF_FILE_SUFFIX, PSFModel, load_psf, total_blur_px
from dstorm3d.optics.pupil import PupilModel
from dstorm3d.optics.setup import OpticalSetup
from dstorm3d.simulation.background import background_from_config
from dstorm3d.simulation.camera import ReadoutCamera, camera_from_config
from dstorm3d.simulation.sampling import EmitterSampler
from dstorm3d.simulation.simulator import FrameSimulator, batch_emitters, collate_samples, stream_seed
from dstorm3d.utils.cli import UserInputError
from dstorm3d.utils.validate import existing_file, is_number, number

log = logging.getLogger(__name__)

NETWORK, BASELINE = "network", "matching_pursuit"
#: EmitterSampler fields a user may set through ``emitters``; the sweep sets counts and photons itself.
EMITTER_OPTIONS = (
    "z_range_um",
    "label_min_photons",
    "min_distance_um",
    "margin_px",
    "max_emitters",
    "max_tries",
)
#: Scores of a point, each reported pooled over its frames and as the standard deviation over frames.
SCORES = (
    "jaccard",
    "precision",
    "recall",
    "rmse_lat_nm",
    "rmse_ax_nm",
    "rmse_3d_nm",
    "efficiency_lat",
    "efficiency_ax",
    "efficiency_3d",
)
ROW_COLUMNS = (
    "label",
    "method",
    "checkpoint",
    "test_set",
    "condition",
    "photons",
    "background_per_px",
    "count_per_field",
    "density_per_um2",
    "frame_height",
    "frame_width",
    "expected_per_frame",
    "emitters_per_frame",
    "frames",
    *[name for score in SCORES for name in (score, f"{score}_std")],
    "tp",
    "fp",
    "fn",
    "bias_x_nm",
    "bias_y_nm",
    "bias_z_nm",
)
Z_COLUMNS = (
    "label",
    "method",
    "test_set",
    "condition",
    "count_per_field",
    "density_per_um2",
    "z_low_um",
    "z_high_um",
    "z_um",
    "truths",
    "pairs",
    "recall",
    "rmse_lat_nm",
    "rmse_ax_nm",
    "crlb_lat_nm",
    "crlb_ax_nm",
)


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Condition:
    """Imaging condition of a test set: signal photons per emitter, background (photons/px), camera."""

    name: str
    photons: dict[str, Any]
    background: dict[str, Any]
    camera: dict[str, Any]

    @classmethod
    def from_config(cls, data: Mapping[str, Any], camera: Mapping[str, Any], index: int) -> Condition:
        """``{name, photons: number | {kind, ...}, background: number | [lo, hi] | {kind, ...}, camera?}``."""
        data = dict(data)
        unknown = set(data) - {"name", "photons", "background", "camera"}
        if unknown or "photons" not in data or "background" not in data:
            raise UserInputError(
                f"conditions[{index}] needs photons and background (and optionally name, camera), "
                f"got keys {sorted(data)}"
            )
        photons = data["photons"]
        photons = {"kind": "fixed", "value": float(photons)} if is_number(photons) else dict(photons)
        background = data["background"]
        if is_number(background) or isinstance(background, (list, tuple)):
            background = {"kind": "uniform", "level": background}
        name = str(
            data.get("name") or f"{_number(_mean_photons(photons))}ph_{_number(background.get('level'))}bg"
        )
        condition = cls(name, photons, dict(background), dict(data.get("camera") or camera))
        try:  # validate now, with one line for the user
            EmitterSampler(
                frame_shape=(4, 4),
                pixel_size_um=0.1,
                z_range_um=(0.0, 1.0),
                count_range=(0, 0),
                photons=condition.photons,
            )
            background_from_config(condition.background)
            camera_from_config(condition.camera)
        except (ValueError, TypeError) as exc:
            raise UserInputError(f"condition {name!r}: {exc}") from None
        return condition

    @property
    def mean_photons(self) -> float:
        return _mean_photons(self.photons)

    @property
    def mean_background(self) -> float | None:
        """Mean background (photons/px) of a uniform (or absent) background, else ``None`` (no CRLB)."""
        if self.background.get("kind") == "none":
            return 0.0
        if self.background.get("kind") != "uniform":
            return None
        level = self.background["level"]
        return float(np.mean(level)) if isinstance(level, (list, tuple)) else float(level)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "photons": self.photons,
            "background": self.background,
            "camera": self.camera,
            "mean_photons": self.mean_photons,
            "mean_background_per_px": self.mean_background,
        }


def _number(value: Any) -> str:
    return f"{value:g}" if is_number(value) else str(value)


def _mean_photons(spec: Mapping[str, Any]) -> float:
    kind = spec.get("kind")
    if kind == "fixed":
        return float(spec["value"])
    if kind == "uniform":
        return 0.5 * (float(spec["low"]) + float(spec["high"]))
    if kind == "gamma":
        return float(spec["shape"]) * float(spec["scale"])
    raise UserInputError(f"photons.kind must be fixed, uniform or gamma, got {kind!r}")


@dataclass(frozen=True)
class BaselineOptions:
    """Matching pursuit (:func:`~dstorm3d.evaluation.fitting.matching_pursuit`) settings.

    ``max_emitters`` per frame = ⌈``max_emitters_factor`` × the most emitters in any frame of the point⌉ +
    ``extra_emitters``: a cap only; MP stops on its likelihood-ratio threshold. ``batch_frames`` frames go
    through MP together (a fixed split, independent of ``batch_size``).
    """

    enabled: bool = True
    max_frames: int | None = None
    max_count: int | None = None
    window: int = 31
    z_step_um: float = 0.1
    search_z_step_um: float = 0.2
    min_log_likelihood_ratio: float = 50.0
    refit: bool = True
    max_iterations: int = 50
    max_emitters_factor: float = 1.5
    extra_emitters: int = 3
    batch_frames: int = 8


@dataclass(frozen=True)
class SweepSettings:
    """What the sweep simulates and how it scores (see ``configs/evaluate.yaml``)."""

    counts: tuple[int, ...]
    frames: int
    seed: int
    reference_field_px: int
    conditions: tuple[Condition, ...]
    frame_shape: tuple[int, int] | None = None
    blur_sigma_px: Any = "checkpoint"
    optics_changes: Mapping[str, Any] = field(default_factory=dict)
    pupil: str | None = None
    emitters: Mapping[str, Any] = field(default_factory=dict)
    matching_nm: float = 150.0
    z_bins: int = 8
    batch_size: int = 8
    tile: int | None = None
    threshold: float | None = None
    device: str = "cpu"
    crlb_window: int | None = None
    baseline: BaselineOptions = field(default_factory=BaselineOptions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": list(self.counts),
            "frames": self.frames,
            "seed": self.seed,
            "reference_field_px": self.reference_field_px,
            "conditions": [c.to_dict() for c in self.conditions],
            "frame_shape": None if self.frame_shape is None else list(self.frame_shape),
            "blur_sigma_px": self.blur_sigma_px,
            "optics": {**dict(self.optics_changes), **({"pupil": self.pupil} if self.pupil else {})},
            "emitters": dict(self.emitters),
            "matching_nm": self.matching_nm,
            "z_bins": self.z_bins,
            "batch_size": self.batch_size,
            "tile": self.tile,
            "threshold": self.threshold,
            "device": self.device,
            "crlb_window": self.crlb_window,
            "baseline": {k: getattr(self.baseline, k) for k in self.baseline.__dataclass_fields__},
        }


# ---------------------------------------------------------------------------------------------- physics
@dataclass(frozen=True, eq=False)
class Physics:
    """What turns emitter lists into expected images for one checkpoint: PSF model, frame, blur."""

    psf: PSFModel
    frame_shape: tuple[int, int]
    blur_sigma_px: tuple[float, float] | None  # the test sets' per-emitter blur (beyond the PSF's own)
    pixel_integration: bool
    render_window: int | None

    @property
    def setup(self) -> OpticalSetup:
        return self.psf.setup

    @property
    def phase_mask(self) -> Tensor:
        """``(N, N)`` pupil phase (rad), float32, CPU."""
        return torch.as_tensor(self.psf.phase, dtype=torch.float32)

    @cached_property
    def key(self) -> str:
        """12 hex digits identifying the frames this physics renders (shared by identical checkpoints)."""
        digest = hashlib.blake2b(digest_size=6)
        description = {
            "setup": self.setup.to_dict(),
            "frame_shape": list(self.frame_shape),
            "blur_sigma_px": self.blur_sigma_px,
            "pixel_integration": self.pixel_integration,
            "render_window": self.render_window,
        }
        amplitude = getattr(self.psf, "amplitude", None)
        if self.psf.blur_sigma_px:  # (absent for models without these: their keys stay as they were)
            description["psf_blur_sigma_px"] = self.psf.blur_sigma_px
        digest.update(json.dumps(description, sort_keys=True).encode())
        digest.update(self.phase_mask.numpy().astype(np.float32).tobytes())
        if amplitude is not None:
            digest.update(np.asarray(amplitude, dtype=np.float32).tobytes())
        return digest.hexdigest()

    @property
    def blur_centre_px(self) -> float | None:
        """The one blur σ (pixels) MP and the CRLB model: the middle of the test sets' range, combined in
        quadrature with the PSF model's own blur (``None``: no blur)."""
        centre = None if self.blur_sigma_px is None else 0.5 * (self.blur_sigma_px[0] + self.blur_sigma_px[1])
        return total_blur_px(self.psf.blur_sigma_px, centre)

    def simulator(self, camera: Mapping[str, Any]) -> FrameSimulator:
        simulation = {
            "frame_shape": list(self.frame_shape),
            "camera": dict(camera),
            "pixel_integration": self.pixel_integration,
            "render_window": self.render_window,
        }
        return FrameSimulator(self.psf, simulation)

    def pupil(self, dtype: torch.dtype = torch.float64) -> PupilModel:
        """The PSF model's pupil renderer (its blur: :attr:`blur_centre_px`)."""
        return self.psf.pupil_model(dtype)

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "setup": self.setup.to_dict(),
            "psf": self.psf.describe(),
            "frame_shape": list(self.frame_shape),
            "blur_sigma_px": None if self.blur_sigma_px is None else list(self.blur_sigma_px),
            "pixel_integration": self.pixel_integration,
            "render_window": self.render_window,
        }


def _blur_range(value: Any) -> tuple[float, float] | None:
    """``None``, a σ (pixels) or a ``[lo, hi]`` range → ``(lo, hi)`` or ``None``."""
    if value is None:
        return None
    pair = [value, value] if is_number(value) else list(value) if isinstance(value, (list, tuple)) else []
    if len(pair) != 2 or not all(is_number(v) for v in pair) or not 0 <= pair[0] <= pair[1]:
        raise UserInputError(
            f"blur_sigma_px must be checkpoint, null, a number or [lo, hi] with 0 ≤ lo ≤ hi "
            f"(pixels), got {value!r}"
        )
    return float(pair[0]), float(pair[1])


def checkpoint_physics(module: Any, settings: SweepSettings) -> Physics:
    """The physics of a checkpoint's test sets: its PSF model (``module.psf_model()``, learned masks
    included; or the model of ``settings.pupil``, see :func:`file_psf`) with ``settings.optics_changes``
    to its setup, its training frame size (121 × 121 when unknown) unless ``settings.frame_shape`` is given,
    and its simulation's blur unless overridden."""
    simulation = dict(module.hparams.simulation)
    psf = module.psf_model() if settings.pupil is None else file_psf(settings.pupil, module.optical_setup)
    setup = psf.setup
    if settings.optics_changes:
        changes = {
            k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in settings.optics_changes.items()
        }
        if "pupil_grid" in changes and int(changes["pupil_grid"]) != setup.pupil_grid:
            raise UserInputError(
                "optics.pupil_grid cannot change: the PSF model's pupil phase is drawn for "
                f"{setup.pupil_grid}² pupil samples"
            )
        try:
            setup = setup.replace(**changes)
        except TypeError as exc:
            raise UserInputError(f"optics: {exc}") from None
    frame_shape = settings.frame_shape or tuple(int(v) for v in simulation.get("frame_shape") or (121, 121))
    blur = (
        simulation.get("blur_sigma_px") if settings.blur_sigma_px == "checkpoint" else settings.blur_sigma_px
    )
    render_window = simulation.get("render_window")
    pixel_integration = bool(simulation.get("pixel_integration", False))
    filtering = blur is not None or pixel_integration or psf.blur_sigma_px > 0
    if render_window is None and max(frame_shape) + (16 if filtering else 0) > setup.pupil_grid:
        render_window = setup.pupil_grid  # one whole DFT period around each emitter: nothing is dropped
    # the phase in float32, as the simulator renders it (test sets shared by bit-identical models)
    phase = np.asarray(psf.phase, dtype=np.float32).astype(np.float64)
    return Physics(
        psf.replace(setup=setup, phase=phase),
        (int(frame_shape[0]), int(frame_shape[1])),
        _blur_range(blur),
        pixel_integration,
        None if render_window is None else int(render_window),
    )


def file_psf(path: str, trained: OpticalSetup) -> PSFModel:
    """The PSF model of a calibration file, tested with a network trained for ``trained``: the file's
    setup with the trained axial range; a pixel size other than the trained one is refused (the network's
    pixel grid is fixed)."""
    psf, _ = load_psf(path)
    pixel, ours = psf.setup.pixel_size_um, trained.pixel_size_um
    if abs(pixel - ours) > 1e-6 * ours:
        raise UserInputError(
            f"optics.pupil={path} has {pixel * 1e3:.2f} nm pixels at the sample, the checkpoint was trained "
            f"for {ours * 1e3:.2f} nm: test a checkpoint trained for this camera"
        )
    return psf.replace(setup=psf.setup.replace(z_range_um=trained.z_range_um))


# ---------------------------------------------------------------------------------------------- test sets
@dataclass
class TestSet:
    """Frames of one density point: camera counts (what the network sees), photons (what MP fits) and the
    ground truth, all on the CPU."""

    __test__ = False  # not a pytest class
    frames: Tensor  # (n, H, W) camera counts
    photons: Tensor  # (n, H, W) the same frames in photons (the camera's expectation inverse)
    truth: Emitters  # (n, M) µm
    count: int
    expected_per_frame: float

    @property
    def emitters_per_frame(self) -> float:
        return float(self.truth.counts(labelled_only=True).double().mean())


def reference_area_um2(settings: SweepSettings, pixel_size_um: float) -> float:
    return (settings.reference_field_px * pixel_size_um) ** 2


def emitter_rng(seed: int, count: int, index: int) -> np.random.Generator:
    """The generator of frame ``index``'s emitters at ``count`` (the same in every condition)."""
    return np.random.default_rng([int(seed), int(count), int(index)])


def noise_generator(seed: int, condition: str, count: int, index: int) -> torch.Generator:
    """The CPU generator of frame ``index``'s camera noise."""
    return torch.Generator().manual_seed(stream_seed("evaluate", seed, condition, count, index))


def build_test_set(
    physics: Physics, condition: Condition, count: int, settings: SweepSettings, frames: int | None = None
) -> TestSet:
    """The ``frames`` (default ``settings.frames``) frames of one point (see the module docstring)."""
    height, width = physics.frame_shape
    expected = count * height * width / settings.reference_field_px**2
    whole = math.floor(expected)
    options = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in settings.emitters.items()}
    try:
        sampler = EmitterSampler.from_setup(
            physics.setup, physics.frame_shape, count_range=(0, 0), photons=condition.photons, **options
        )
        background = background_from_config(condition.background)
        simulator = physics.simulator(condition.camera)
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"test set {condition.name}: {str(exc).splitlines()[0]}") from None
    items = []
    for index in range(settings.frames if frames is None else frames):
        rng = emitter_rng(settings.seed, count, index)
        n = whole + int(rng.random() < expected - whole)
        sample = replace(sampler, count_range=(n, n)).sample(rng)
        item = {
            "xyz": sample["xyz"].astype(np.float32),
            "photons": sample["photons"].astype(np.float32),
            "labelled": sample["labelled"].astype(bool),
            "index": np.int64(index),
        }
        if physics.blur_sigma_px is not None:
            item["blur_sigma"] = rng.uniform(*physics.blur_sigma_px, len(sample["photons"])).astype(
                np.float32
            )
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        item["background"] = background(1, physics.frame_shape, generator=generator)[0].numpy()
        items.append(item)
    rendered = []
    with torch.no_grad():
        for index, item in enumerate(items):
            batch = collate_samples([item])
            # an empty frame is its background (render_frames cannot filter zero emitters)
            mu = simulator.expected_photons(batch) if len(item["photons"]) else batch["background"]
            rendered.append(
                simulator.camera.sample(
                    mu, generator=noise_generator(settings.seed, condition.name, count, index)
                )[0]
            )
    counts = torch.stack(rendered)
    photons = simulator.camera.to_photons(counts).to(torch.float32)
    return TestSet(counts, photons, batch_emitters(collate_samples(items)), count, expected)


# ---------------------------------------------------------------------------------------------- localizers
def localize_with_network(
    module: Any,
    frames: Tensor,
    batch_size: int,
    device: torch.device,
    tile: int | None = None,
    threshold: float | None = None,
) -> Emitters:
    """The network's localizations (CPU) in ``frames`` (camera counts), ``batch_size`` frames at a time."""
    from dstorm3d.models.tiling import localize_frames

    found = []
    with torch.inference_mode():
        for start in range(0, frames.shape[0], batch_size):
            batch = frames[start : start + batch_size].to(device)
            found.append(localize_frames(module, batch, tile=tile, threshold=threshold).to("cpu"))
    return Emitters.cat(found)


def localize_with_baseline(
    pupil: PupilModel, zstack: Any, test_set: TestSet, frames: int, options: BaselineOptions, physics: Physics
) -> Emitters:
    """Matching pursuit on the first ``frames`` frames (photons), in fixed chunks of ``batch_frames``."""
    from dstorm3d.evaluation.fitting import matching_pursuit

    most = int(test_set.truth.counts().max()) if test_set.truth.batch_size else 0
    max_emitters = int(math.ceil(options.max_emitters_factor * most)) + int(options.extra_emitters)
    device = pupil.kappa.device
    found = []
    for start in range(0, frames, options.batch_frames):
        chunk = test_set.photons[start : min(frames, start + options.batch_frames)].to(device, torch.float64)
        result = matching_pursuit(
            pupil,
            chunk,
            max_emitters,
            window=options.window,
            min_log_likelihood_ratio=options.min_log_likelihood_ratio,
            refit=options.refit,
            max_iterations=options.max_iterations,
            blur_sigma_px=physics.blur_centre_px,
            pixel_integration=physics.pixel_integration,
            zstack=zstack,
        )
        found.append(result.to("cpu", torch.float32))
    return Emitters.cat(found)


# ---------------------------------------------------------------------------------------------- scores
def _spread(values: np.ndarray) -> float:
    """Sample standard deviation of the finite values (NaN with fewer than two)."""
    finite = values[np.isfinite(values)]
    return float(np.std(finite, ddof=1)) if len(finite) >= 2 else float("nan")


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.full(len(numerator), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def score_point(pred: Emitters, truth: Emitters, matching_nm: float) -> dict[str, float]:
    """Pooled scores (Jaccard, precision, recall as fractions; RMSE and bias in nm; efficiencies in %) and
    ``<score>_std``, the standard deviation of the per-frame values."""
    metric = JaccardRMSE(threshold_nm=matching_nm)
    metric.update(pred, truth)
    pooled = {k: float(v) for k, v in metric.compute().items()}
    frame = per_frame_scores(pred, truth, threshold_nm=matching_nm)
    percent = 100.0 * frame.jaccard
    per_frame = {
        "jaccard": frame.jaccard,
        "precision": _ratio(frame.tp, frame.tp + frame.fp),
        "recall": _ratio(frame.tp, frame.tp + frame.fn),
        "rmse_lat_nm": frame.rmse_lat_nm,
        "rmse_ax_nm": frame.rmse_ax_nm,
        "rmse_3d_nm": frame.rmse_3d_nm,
        "efficiency_lat": efficiency(percent, frame.rmse_lat_nm, ALPHA_LATERAL),
        "efficiency_ax": efficiency(percent, frame.rmse_ax_nm, ALPHA_AXIAL),
    }
    per_frame["efficiency_3d"] = 0.5 * (per_frame["efficiency_lat"] + per_frame["efficiency_ax"])
    scores: dict[str, float] = {}
    for name in SCORES:
        scores[name] = pooled[name]
        scores[f"{name}_std"] = _spread(np.asarray(per_frame[name], dtype=np.float64))
    for name in ("tp", "fp", "fn"):
        scores[name] = int(pooled[name])
    for name in ("bias_x_nm", "bias_y_nm", "bias_z_nm"):
        scores[name] = pooled[name]
    return scores


def z_edges(settings: SweepSettings, setup: OpticalSetup) -> np.ndarray:
    """Edges (µm) of the depth bins over the test sets' axial range."""
    z_range = settings.emitters.get("z_range_um") or setup.z_range_um
    return np.linspace(float(z_range[0]), float(z_range[1]), settings.z_bins + 1)


def score_by_depth(
    pred: Emitters, truth: Emitters, matching_nm: float, edges: np.ndarray
) -> list[dict[str, float]]:
    """Per depth bin of the true z: truths, matched pairs, recall and RMSE lateral/axial (nm)."""
    preds, truths = pred.per_frame(), truth.per_frame(labelled_only=True)
    dim = (truth.valid & ~truth.labelled).cpu()
    xyz = truth.xyz.detach().cpu().double()
    true_z, pair_z, squared_lat, squared_ax = [], [], [], []
    for index, (p, g) in enumerate(zip(preds, truths)):
        unlabelled = xyz[index][dim[index]].numpy()
        match = match_frame(
            p, g, threshold_nm=matching_nm, unlabelled_xyz_um=unlabelled if len(unlabelled) else None
        )
        true_z.append(g[:, 2])
        pair_z.append(g[match.gt_idx, 2])
        squared_lat.append(match.dx_nm**2 + match.dy_nm**2)
        squared_ax.append(match.dz_nm**2)
    true_z, pair_z = np.concatenate(true_z), np.concatenate(pair_z)
    squared_lat, squared_ax = np.concatenate(squared_lat), np.concatenate(squared_ax)
    rows = []
    for low, high in zip(edges[:-1], edges[1:]):
        last = high == edges[-1]
        in_truth = (true_z >= low) & ((true_z <= high) if last else (true_z < high))
        in_pairs = (pair_z >= low) & ((pair_z <= high) if last else (pair_z < high))
        pairs = int(in_pairs.sum())
        rows.append(
            {
                "z_low_um": float(low),
                "z_high_um": float(high),
                "z_um": float(0.5 * (low + high)),
                "truths": int(in_truth.sum()),
                "pairs": pairs,
                "recall": pairs / int(in_truth.sum()) if in_truth.any() else float("nan"),
                "rmse_lat_nm": float(np.sqrt(squared_lat[in_pairs].mean())) if pairs else float("nan"),
                "rmse_ax_nm": float(np.sqrt(squared_ax[in_pairs].mean())) if pairs else float("nan"),
            }
        )
    return rows


def read_noise_variance(camera: Mapping[str, Any]) -> float:
    """Mean Gaussian read-noise variance (counts² = photons² for the readout camera, where one count is one
    photon) of a camera config; 0 for the other cameras (the EMCCD's excess noise is the bound's ×2)."""
    if camera.get("kind") != "readout":
        return 0.0
    sigma = camera.get("read_noise", ReadoutCamera.read_noise)
    if is_number(sigma):
        return float(sigma) ** 2
    values = np.asarray(sigma, dtype=np.float64)
    if values.shape == (2,):  # a range: E[σ²] for σ uniform in [lo, hi]
        lo, hi = values
        return float((lo * lo + lo * hi + hi * hi) / 3.0)
    return float(np.mean(values**2))


def depth_bounds(
    pupil: PupilModel, physics: Physics, condition: Condition, z_um: np.ndarray, window: int | None
) -> dict[str, np.ndarray] | None:
    """CRLB (nm) at depths ``z_um`` for the condition's mean photons and background: ``x_nm``, ``y_nm``,
    ``z_nm``, ``lat_nm`` = √(σx² + σy²) (comparable with RMSE_lat), ``ax_nm``; ``None`` without a uniform
    background. A readout camera's Gaussian read noise of variance σ² enters as σ² photons of extra Poisson
    background per pixel (the usual approximation of Poisson + Gaussian noise, as for sCMOS cameras)."""
    background = condition.mean_background
    if background is None:
        return None
    background += read_noise_variance(condition.camera)
    emccd = condition.camera.get("kind") == "emccd"
    bound = crlb(
        pupil,
        z_um,
        condition.mean_photons,
        background,
        window=window,
        emccd=emccd,
        blur_sigma_px=physics.blur_centre_px,
        pixel_integration=physics.pixel_integration,
    )
    return {**bound, "lat_nm": np.hypot(bound["x_nm"], bound["y_nm"]), "ax_nm": bound["z_nm"]}


# ---------------------------------------------------------------------------------------------- the sweep
@dataclass
class Evaluated:
    """One loaded checkpoint and what the sweep knows about it."""

    label: str
    path: str
    module: Any
    physics: Physics

    def describe(self, threshold: float | None) -> dict[str, Any]:
        hp = self.module.hparams
        learned = getattr(type(self.module), "learnable_mask", False)
        mask = f"learned (from {hp.get('mask_source')})" if learned else hp.get("mask_source")
        return {
            "label": self.label,
            "path": self.path,
            "kind": type(self.module).__name__,
            "head": hp.head["kind"],
            "mask": mask,
            "training_frame_shape": list(hp.simulation.get("frame_shape") or []),
            "threshold": float(self.module.threshold) if threshold is None else float(threshold),
            "test_set": self.physics.key,
            "physics": self.physics.describe(),
        }


@dataclass
class SweepResults:
    """Everything ``report.py`` writes: one row per checkpoint (or baseline) × condition × density."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    depth_rows: list[dict[str, Any]] = field(default_factory=list)
    crlb: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    timing: list[dict[str, Any]] = field(default_factory=list)


def default_labels(paths: Sequence[str]) -> list[str]:
    """``<run>/<file stem>`` for files in a training run's ``checkpoints/`` folder, else the stem; made
    unique with ``#k``."""
    labels = []
    for path in paths:
        p = Path(path)
        label = f"{p.parent.parent.name}/{p.stem}" if p.parent.name == "checkpoints" else p.stem
        labels.append(label)
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if labels.count(label) == 1 else f"{label}#{seen[label]}")
    return unique


def run_sweep(checkpoints: Sequence[Evaluated], settings: SweepSettings) -> SweepResults:
    """Simulate, localize and score every point (see the module docstring). Checkpoints with the same
    physics share test sets and one MP run. Rows come ordered by condition, method (network first),
    checkpoint and density."""
    results = SweepResults()
    device = torch.device(settings.device)
    order = {id(item): index for index, item in enumerate(checkpoints)}
    conditions = {c.name: index for index, c in enumerate(settings.conditions)}
    groups: dict[str, list[Evaluated]] = {}
    for item in checkpoints:
        groups.setdefault(item.physics.key, []).append(item)
    keyed_rows: list[tuple[tuple, dict[str, Any]]] = []
    keyed_depth_rows: list[tuple[tuple, dict[str, Any]]] = []
    for key, members in groups.items():
        physics = members[0].physics
        area = reference_area_um2(settings, physics.setup.pixel_size_um)
        edges = z_edges(settings, physics.setup)
        centres = 0.5 * (edges[:-1] + edges[1:])
        mp_label = "MP (" + ", ".join(m.label for m in members) + ")"
        pupil = physics.pupil(torch.float64).to(device)
        zstack = None
        for condition in settings.conditions:
            bound = depth_bounds(pupil, physics, condition, centres, settings.crlb_window)
            results.crlb.append(
                {
                    "test_set": key,
                    "labels": [m.label for m in members],
                    "condition": condition.name,
                    "z_um": centres.tolist(),
                    **({k: np.asarray(v).tolist() for k, v in bound.items()} if bound else {}),
                }
            )
            for count in settings.counts:
                started = time.perf_counter()
                test_set = build_test_set(physics, condition, count, settings)
                log.info(
                    "test set %s / %s / %d per field: %d frames in %.1f s",
                    key,
                    condition.name,
                    count,
                    settings.frames,
                    time.perf_counter() - started,
                )
                point = {
                    "test_set": key,
                    "condition": condition.name,
                    "photons": condition.mean_photons,
                    "background_per_px": condition.mean_background,
                    "count_per_field": count,
                    "density_per_um2": count / area,
                    "frame_height": physics.frame_shape[0],
                    "frame_width": physics.frame_shape[1],
                    "expected_per_frame": test_set.expected_per_frame,
                }
                runs: list[tuple[int, str, str, str, Emitters, Emitters]] = []
                for item in members:
                    started = time.perf_counter()
                    pred = localize_with_network(
                        item.module,
                        test_set.frames,
                        settings.batch_size,
                        device,
                        settings.tile,
                        settings.threshold,
                    )
                    results.timing.append(
                        {
                            "label": item.label,
                            "method": NETWORK,
                            "condition": condition.name,
                            "count_per_field": count,
                            "frames": settings.frames,
                            "seconds": time.perf_counter() - started,
                        }
                    )
                    runs.append((order[id(item)], item.label, NETWORK, item.path, pred, test_set.truth))
                options = settings.baseline
                if options.enabled and options.max_count is not None and count > options.max_count:
                    results.skipped.append(
                        {
                            "label": mp_label,
                            "method": BASELINE,
                            "condition": condition.name,
                            "count_per_field": count,
                            "reason": f"count {count} > baseline_max_count {options.max_count}",
                        }
                    )
                elif options.enabled:
                    frames = min(settings.frames, options.max_frames or settings.frames)
                    if zstack is None:
                        from dstorm3d.evaluation.fitting import PsfZStack

                        zstack = PsfZStack(
                            pupil,
                            options.window,
                            options.z_step_um,
                            options.search_z_step_um,
                            blur_sigma_px=physics.blur_centre_px,
                            pixel_integration=physics.pixel_integration,
                        )
                    started = time.perf_counter()
                    pred = localize_with_baseline(pupil, zstack, test_set, frames, options, physics)
                    results.timing.append(
                        {
                            "label": mp_label,
                            "method": BASELINE,
                            "condition": condition.name,
                            "count_per_field": count,
                            "frames": frames,
                            "seconds": time.perf_counter() - started,
                        }
                    )
                    runs.append(
                        (
                            order[id(members[0])],
                            mp_label,
                            BASELINE,
                            members[0].path,
                            pred,
                            test_set.truth.select_frames(slice(0, frames)),
                        )
                    )
                for owner, label, method, path, pred, truth in runs:
                    sort_key = (conditions[condition.name], method != NETWORK, owner, count)
                    scores = score_point(pred, truth, settings.matching_nm)
                    realised = float(truth.counts(labelled_only=True).double().mean())
                    keyed_rows.append(
                        (
                            sort_key,
                            {
                                "label": label,
                                "method": method,
                                "checkpoint": path,
                                **point,
                                "emitters_per_frame": realised,
                                "frames": truth.batch_size,
                                **scores,
                            },
                        )
                    )
                    depth = score_by_depth(pred, truth, settings.matching_nm, edges)
                    for z_index, row in enumerate(depth):
                        keyed_depth_rows.append(
                            (
                                (*sort_key, z_index),
                                {
                                    "label": label,
                                    "method": method,
                                    "test_set": key,
                                    "condition": condition.name,
                                    "count_per_field": count,
                                    "density_per_um2": count / area,
                                    **row,
                                    "crlb_lat_nm": float(bound["lat_nm"][z_index]) if bound else float("nan"),
                                    "crlb_ax_nm": float(bound["ax_nm"][z_index]) if bound else float("nan"),
                                },
                            )
                        )
    results.rows = [row for _, row in sorted(keyed_rows, key=lambda pair: pair[0])]
    results.depth_rows = [row for _, row in sorted(keyed_depth_rows, key=lambda pair: pair[0])]
    return results


# ---------------------------------------------------------------------------------------------- the command
def _optional_int(cfg: DictConfig, key: str, minimum: int = 1) -> int | None:
    value = cfg.get(key)
    if value is None:
        return None
    if not is_number(value) or int(value) != value or value < minimum:
        raise UserInputError(f"{key} must be an integer ≥ {minimum} or null, got {value!r}")
    return int(value)


def settings_from_config(cfg: DictConfig) -> SweepSettings:
    """Validated :class:`SweepSettings` from the ``evaluate.yaml`` config (one-line errors)."""
    counts = cfg.get("counts")
    if not counts or any(not is_number(c) or int(c) != c or c < 0 for c in counts):
        raise UserInputError(
            f"counts must be a non-empty list of integers ≥ 0 (emitters per field), got {counts}"
        )
    conditions_cfg = OmegaConf.to_container(cfg.conditions, resolve=True) if cfg.get("conditions") else []
    if not conditions_cfg:
        raise UserInputError("conditions must list at least one {name, photons, background}")
    camera = OmegaConf.to_container(cfg.camera, resolve=True) if cfg.get("camera") else {"kind": "ideal"}
    conditions = tuple(Condition.from_config(c, camera, i) for i, c in enumerate(conditions_cfg))
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise UserInputError(f"condition names must differ, got {names}")
    frame_shape = cfg.get("frame_shape")
    if frame_shape is not None:
        frame_shape = [frame_shape] * 2 if is_number(frame_shape) else list(frame_shape)
        if len(frame_shape) != 2 or not all(is_number(v) and int(v) == v and v >= 8 for v in frame_shape):
            raise UserInputError(
                f"frame_shape must be [H, W] with integers H, W ≥ 8 px (or null), got {frame_shape}"
            )
        frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
    blur = cfg.get("blur_sigma_px", "checkpoint")
    blur = (
        blur
        if blur in (None, "checkpoint")
        else _blur_range(OmegaConf.to_container(blur) if OmegaConf.is_config(blur) else blur)
    )
    emitters = OmegaConf.to_container(cfg.emitters, resolve=True) if cfg.get("emitters") else {}
    emitters = {key: value for key, value in emitters.items() if value is not None}  # null: the default
    unknown = sorted(set(emitters) - set(EMITTER_OPTIONS))
    if unknown:
        raise UserInputError(
            f"emitters: unknown key(s) {unknown}; allowed: {list(EMITTER_OPTIONS)} "
            "(counts and photons are set by counts= and conditions=)"
        )
    baseline_cfg = OmegaConf.to_container(cfg.mp, resolve=True) if cfg.get("mp") else {}
    unknown = sorted(
        set(baseline_cfg) - set(BaselineOptions.__dataclass_fields__) - {"enabled", "max_frames", "max_count"}
    )
    if unknown:
        raise UserInputError(
            f"mp: unknown key(s) {unknown}; allowed: {sorted(BaselineOptions.__dataclass_fields__)}"
        )
    baseline = BaselineOptions(
        **{
            **baseline_cfg,
            "enabled": bool(cfg.get("baseline", True)),
            "max_frames": _optional_int(cfg, "baseline_max_frames"),
            "max_count": _optional_int(cfg, "baseline_max_count", minimum=0),
        }
    )
    if baseline.window % 2 == 0 or baseline.batch_frames < 1:
        raise UserInputError(
            f"mp.window must be odd and mp.batch_frames ≥ 1, got {baseline.window}, {baseline.batch_frames}"
        )
    device = str(cfg.get("device") or "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UserInputError(f"device must be auto, cpu or cuda[:index], got {device!r}") from None
    if kind not in ("cpu", "cuda") or (kind == "cuda" and not torch.cuda.is_available()):
        raise UserInputError(f"device {device!r} is not available here: use device=auto or device=cpu")
    for key in ("frames", "batch_size", "reference_field_px", "z_bins"):
        _optional_int(cfg, key)
        if cfg.get(key) is None:
            raise UserInputError(f"{key} must be an integer ≥ 1")
    optics_changes = OmegaConf.to_container(cfg.optics, resolve=True) if cfg.get("optics") else {}
    pupil = existing_file(
        "optics.pupil",
        optics_changes.pop("pupil", None),
        (PSF_FILE_SUFFIX,),
        allow_none=True,
        example="calibration.npz",
    )
    return SweepSettings(
        counts=tuple(int(c) for c in counts),
        frames=int(cfg.frames),
        seed=int(cfg.seed),
        reference_field_px=int(cfg.reference_field_px),
        conditions=conditions,
        frame_shape=frame_shape,
        blur_sigma_px=blur,
        optics_changes=optics_changes,
        pupil=None if pupil is None else str(pupil),
        emitters=emitters,
        matching_nm=number("matching_nm", cfg.matching_nm, above=0.0, example=150),
        z_bins=int(cfg.z_bins),
        batch_size=int(cfg.batch_size),
        tile=_optional_int(cfg, "tile"),
        threshold=None if cfg.get("threshold") is None else float(cfg.threshold),
        device=device,
        crlb_window=_optional_int(cfg, "crlb_window"),
        baseline=baseline,
    )


def checkpoint_paths(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """The checkpoints (``ckpt=`` then ``ckpts=``) and their labels (``labels=`` or
    :func:`default_labels`)."""
    paths = ([str(cfg.ckpt)] if cfg.get("ckpt") else []) + [str(p) for p in (cfg.get("ckpts") or [])]
    if not paths:
        raise UserInputError("no checkpoint: give ckpt=<file.ckpt> or ckpts=[a.ckpt,b.ckpt]")
    labels = [str(label) for label in (cfg.get("labels") or [])]
    if labels and len(labels) != len(paths):
        raise UserInputError(f"labels has {len(labels)} entries for {len(paths)} checkpoints")
    labels = labels or default_labels(paths)
    if len(set(labels)) != len(labels):
        raise UserInputError(f"labels must differ, got {labels}")
    return paths, labels
