"""Simulate a blinking SMLM recording with an engineered PSF, to try inference without a microscope.

    python -m dstorm3d.simulate                                    # 200 frames of 128×128, filaments
    python -m dstorm3d.simulate structure=ellipsoids frames=1000 out=sim/ellipsoids seed=3
    python -m dstorm3d.simulate optics=storm_printed blinking.density_per_um2=0.3

Settings are in ``configs/simulate.yaml``. The sample is ``emitters`` fluorophores placed on a structure
(smooth 3D filaments, ellipsoid surfaces or uniform random) inside the frame and z range, fixed there or
(``motion.diffusion_um2_per_s`` > 0) diffusing from there in 3D, Brownian with that D between frames
``motion.frame_interval_s`` apart and reflected at the frame's edges and the z range, apart from a
``motion.immobile_fraction`` that stays put (:mod:`dstorm3d.simulation.motion`); in every frame each one
is ON with the duty cycle that gives ``blinking.density_per_um2`` active emitters per µm² (independently
per frame, or as a two-state Markov chain with a mean ON time), emits photons from ``photons`` and is
rendered with the ``optics`` pupil model (``render_frames`` through windows, so any frame size works),
plus background, through the camera model. The background image and a readout
camera's read-noise map are drawn once for the whole recording (``background_per_frame=true`` draws a
background per frame). Writes into ``out`` (default: the Hydra run folder):

* ``recording.tif``: ``(T, H, W)`` uint16 camera counts, written page by page as an ImageJ time series
  calibrated in µm (Fiji shows the pixel size); its ImageJ Info property is JSON with the setup, mask,
  camera, pixel size and seed (:func:`dstorm3d.utils.tiff.read_tiff_info`).
* ``ground_truth.csv``: one row per ON emitter and frame, ThunderSTORM columns ``"id","frame","x [nm]",
  "y [nm]","z [nm]","intensity [photon]"`` and ``"emitter_id"``: ``id`` numbers the rows from 1, frames
  from 1, x/y from the image's top-left corner, z above the coverslip, intensity = the emitter's expected
  signal photons, ``emitter_id`` = which fluorophore (from 1, the same in every frame: the true trajectory
  of a moving emitter). Every rendered emitter is listed (dim ones too: filter on the intensity column to
  mimic the paper's labels, > 6000 photons).
* ``simulation.json``: every setting, the seed and derived numbers (duty cycle, emitters per frame).

Everything random follows ``seed``: on the CPU the files are bit-identical for the same settings. Files are
written under temporary names and renamed at the end; existing files are kept unless ``overwrite=true``. A
setting that cannot be used ends the run with one line on stderr and exit code 2 before anything is
written.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dstorm3d.optics.config import psf_from_config
from dstorm3d.optics.psf_model import PSFModel, total_blur_px
from dstorm3d.optics.pupil import PupilModel
from dstorm3d.optics.render import render_frames
from dstorm3d.optics.setup import OpticalSetup
from dstorm3d.optics.show import describe_mask_source
from dstorm3d.simulation.background import BackgroundModel, background_from_config
from dstorm3d.simulation.blinking import Blinking, BlinkingSettings
from dstorm3d.simulation.camera import Camera, ReadoutCamera, camera_from_config, smooth_random_map
from dstorm3d.simulation.motion import MotionSettings, emitter_trajectories
from dstorm3d.simulation.simulator import stream_seed
from dstorm3d.simulation.structures import (
    STRUCTURES,
    EllipsoidSettings,
    FilamentSettings,
    Volume,
    ellipsoid_structure,
    filament_structure,
    random_structure,
)
from dstorm3d.utils.cli import UserInputError, exit_on_bad_overrides, run_or_exit
from dstorm3d.utils.paths import CONFIG_DIR, register_root
from dstorm3d.utils.validate import choice, flag, integer, mapping, number, pair

log = logging.getLogger(__name__)


def _package_version() -> str:
    try:
        return version("dstorm3d")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


RECORDING, GROUND_TRUTH, SETTINGS_FILE = "recording.tif", "ground_truth.csv", "simulation.json"
OUTPUT_FILES = (RECORDING, GROUND_TRUTH, SETTINGS_FILE)
CSV_COLUMNS = ("id", "frame", "x [nm]", "y [nm]", "z [nm]", "intensity [photon]", "emitter_id")
#: The settings that determine the recording (written to simulation.json); ``out`` and ``overwrite`` only
#: say where it goes.
SETTING_KEYS = (
    "seed",
    "device",
    "frames",
    "frame_shape",
    "z_range_um",
    "structure",
    "emitters",
    "filaments",
    "ellipsoids",
    "motion",
    "blinking",
    "photons",
    "blur_sigma_px",
    "render_window_px",
    "background",
    "background_per_frame",
    "camera",
    "ckpt",
    "from_checkpoint",
)
FRAMES_PER_CHUNK = 16  # frames rendered together (memory stays bounded for any T) ...
PIXELS_PER_CHUNK = 2**24  # ... and for any frame size (at least one frame per chunk)
EMITTERS_PER_RENDER = 2048  # emitters per render call (memory stays bounded for any density)
UINT16_MAX = 65535


# ---------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class PhotonDistribution:
    """Signal photons per ON emitter and frame: ``gamma {shape, scale}``, ``uniform {low, high}`` or
    ``fixed {value}``."""

    kind: str
    params: dict[str, float]

    KEYS = {"gamma": ("shape", "scale"), "uniform": ("low", "high"), "fixed": ("value",)}

    @classmethod
    def from_config(cls, config: Any) -> PhotonDistribution:
        c = mapping("photons", config)
        kind = choice("photons.kind", c.get("kind"), tuple(cls.KEYS))
        keys = cls.KEYS[kind]
        extra = sorted(set(c) - {"kind", *keys})
        if extra:
            raise UserInputError(
                f"photons of kind {kind} take the keys {list(keys)}, not {extra} (replace "
                f"the whole entry: ~photons '+photons={{kind: {kind}, ...}}')"
            )
        params = {k: number(f"photons.{k}", c.get(k), minimum=0) for k in keys}
        if kind == "gamma" and min(params.values()) <= 0:
            raise UserInputError(f"photons gamma needs shape > 0 and scale > 0, got {params}")
        if kind == "uniform" and params["low"] > params["high"]:
            raise UserInputError(f"photons uniform needs low ≤ high, got {params}")
        return cls(kind, params)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        p = self.params
        if self.kind == "gamma":
            return rng.gamma(p["shape"], p["scale"], size=n)
        if self.kind == "uniform":
            return rng.uniform(p["low"], p["high"], size=n)
        return np.full(n, p["value"])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params}


@dataclass(frozen=True)
class SimulationSettings:
    """The validated top-level settings of ``configs/simulate.yaml`` (optics apart)."""

    seed: int
    device: str
    frames: int
    frame_shape: tuple[int, int]
    z_range_um: tuple[float, float] | None
    structure: str
    emitters: int
    filaments: FilamentSettings
    ellipsoids: EllipsoidSettings
    motion: MotionSettings
    blinking: BlinkingSettings
    photons: PhotonDistribution
    blur_sigma_px: tuple[float, float] | None
    render_window_px: int
    background: dict[str, Any]
    background_per_frame: bool
    camera: dict[str, Any]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SimulationSettings:
        shape = config.get("frame_shape")
        if not (isinstance(shape, Sequence) and len(shape) == 2):
            raise UserInputError(f"frame_shape must be [H, W], got {shape!r}")
        z_range = config.get("z_range_um")
        blur = config.get("blur_sigma_px")
        device = config.get("device")
        if not isinstance(device, str) or not (device == "cpu" or device.startswith("cuda")):
            raise UserInputError(f"device must be cpu or cuda[:index], got {device!r}")
        return cls(
            seed=integer("seed", config.get("seed"), minimum=0),
            device=device,
            frames=integer("frames", config.get("frames"), minimum=1),
            frame_shape=(
                integer("frame_shape[0] (H)", shape[0], minimum=1),
                integer("frame_shape[1] (W)", shape[1], minimum=1),
            ),
            z_range_um=None if z_range is None else pair("z_range_um", z_range, minimum=0),
            structure=choice("structure", config.get("structure"), STRUCTURES),
            emitters=integer("emitters", config.get("emitters"), minimum=1),
            filaments=FilamentSettings.from_config(config.get("filaments")),
            ellipsoids=EllipsoidSettings.from_config(config.get("ellipsoids")),
            motion=MotionSettings.from_config(config.get("motion")),
            blinking=BlinkingSettings.from_config(config.get("blinking")),
            photons=PhotonDistribution.from_config(config.get("photons")),
            blur_sigma_px=None if blur is None else pair("blur_sigma_px", blur, minimum=0),
            render_window_px=integer("render_window_px", config.get("render_window_px"), minimum=8),
            background=mapping("background", config.get("background")),
            background_per_frame=flag("background_per_frame", config.get("background_per_frame")),
            camera=mapping("camera", config.get("camera")),
        )


# ---------------------------------------------------------------------------------------- the sample
def build_structure(settings: SimulationSettings, volume: Volume) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``(emitters, 3)`` fixed fluorophore positions (µm) and a description of the structure."""
    rng = np.random.default_rng(stream_seed(settings.seed, "structure"))
    if settings.structure == "filaments":
        return filament_structure(rng, settings.emitters, volume, settings.filaments)
    if settings.structure == "ellipsoids":
        return ellipsoid_structure(rng, settings.emitters, volume, settings.ellipsoids)
    return random_structure(rng, settings.emitters, volume)


# ---------------------------------------------------------------------------------------- a checkpoint's data
#: What ``ckpt=`` takes from a checkpoint's training distribution (unless set on the command line): training
#: frames hold emitters uniform at random, so the structure is ``random`` too.
CHECKPOINT_KEYS = (
    "optics",
    "photons",
    "blur_sigma_px",
    "background",
    "camera",
    "blinking.density_per_um2",
    "structure",
)


@dataclass(frozen=True)
class CheckpointDistribution:
    """The training distribution recorded in a checkpoint, as ``simulate`` settings."""

    path: str
    settings: dict[str, Any]  # CHECKPOINT_KEYS → values in this config's terms
    psf: PSFModel  # the PSF model the model was trained with (learned phase masks included)
    mask_source: dict[str, Any]
    label_min_photons: float  # emitters dimmer than this were rendered but not labelled in training


def training_density_per_um2(
    emitters: Mapping[str, Any], frame_shape: Sequence[int], pixel_um: float
) -> float:
    """The mean training density (emitters per µm²): the middle of ``density_per_um2`` [lo, hi], or the
    mean of ``count_range`` over the training frame's area (``margin_px`` border included)."""
    density = emitters.get("density_per_um2")
    if density is not None:
        lo, hi = (density, density) if isinstance(density, (int, float)) else density
        return 0.5 * (float(lo) + float(hi))
    counts = emitters.get("count_range")
    if counts is None:
        raise UserInputError(
            "the checkpoint records no emitter density or count range: set blinking.density_per_um2"
        )
    margin = int(emitters.get("margin_px") or 0)
    height, width = (int(n) + 2 * margin for n in frame_shape)
    return 0.5 * (float(counts[0]) + float(counts[1])) / (height * width * pixel_um**2)


def checkpoint_distribution(path: str) -> CheckpointDistribution:
    """Read a dstorm3d checkpoint's optics, PSF model, photons, blur, background, camera and density."""
    from dstorm3d.modules.checkpoints import load_module
    from dstorm3d.optics.config import MASK_KEYS

    module = load_module(path)
    hparams = module.hparams
    simulation = dict(hparams.simulation)
    emitters = dict(simulation.get("emitters") or {})
    optics = {k: v for k, v in dict(hparams.optics).items() if k not in MASK_KEYS}
    setup = module.optical_setup
    photons = dict(emitters.get("photons") or {})
    if photons.get("kind") not in PhotonDistribution.KEYS:
        raise UserInputError(
            f"the checkpoint's photons {photons} have no simulate equivalent: set photons=..."
        )
    settings = {
        "optics": {**optics, "mask": "checkpoint"},
        "photons": photons,
        "blur_sigma_px": simulation.get("blur_sigma_px"),
        "background": dict(simulation.get("background") or {"kind": "none"}),
        "camera": dict(simulation.get("camera") or {"kind": "ideal"}),
        "blinking.density_per_um2": training_density_per_um2(
            emitters, simulation.get("frame_shape") or (64, 64), setup.pixel_size_um
        ),
        "structure": "random",
    }
    psf = module.psf_model()
    source = {"kind": "checkpoint", "path": str(Path(path).resolve())}
    if hparams.get("mask_source"):
        source["trained_with"] = str(hparams.get("mask_source"))
    return CheckpointDistribution(
        str(path), settings, psf, source, float(emitters.get("label_min_photons") or 0.0)
    )


def command_line_keys() -> set[str]:
    """The dotted keys set on the command line (Hydra's task overrides; empty outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {item.split("=", 1)[0].lstrip("+~") for item in HydraConfig.get().overrides.task}


def apply_checkpoint(
    config: dict[str, Any], checkpoint: CheckpointDistribution, given: set[str]
) -> list[str]:
    """Put the checkpoint's values into ``config`` for every :data:`CHECKPOINT_KEYS` entry not set on the
    command line (``given``: dotted keys; a key counts as set when it or a key below or above it is given).
    Returns the keys taken from the checkpoint."""

    def is_given(key: str) -> bool:
        return any(g == key or g.startswith(key + ".") or key.startswith(g + ".") for g in given)

    taken = []
    for key, value in checkpoint.settings.items():
        if is_given(key):
            continue
        *parents, leaf = key.split(".")
        target = config
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
        taken.append(key)
    return taken


# ---------------------------------------------------------------------------------------- the plan
@dataclass
class SimulationPlan:
    """Everything needed to write the recording, built and validated before any file is touched."""

    settings: SimulationSettings
    optics: dict[str, Any]
    setup: OpticalSetup
    pupil: PupilModel
    psf: PSFModel
    camera: Camera
    configured_camera: Camera
    background: BackgroundModel
    volume: Volume
    positions_um: np.ndarray
    structure: dict[str, Any]
    blinking: Blinking
    device: torch.device
    mask_source: dict[str, Any]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.settings.frame_shape

    def description(self) -> dict[str, Any]:
        """Metadata stored in the TIFF description (JSON)."""
        return {
            "software": f"dstorm3d {_package_version()} (dstorm3d.simulate)",
            "unit": "camera counts",
            "pixel_size_um": self.setup.pixel_size_um,
            "seed": self.settings.seed,
            "optical_setup": self.setup.to_dict(),
            "mask": self.mask_source,
            "camera": self.settings.camera,
            "background": self.settings.background,
            "structure": self.settings.structure,
            "ground_truth": GROUND_TRUTH,
        }


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"device={name} but no CUDA device is available: use device=cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise UserInputError(f"device={name!r} is not a torch device: {error}") from None


def with_fixed_read_noise_map(
    camera: Camera, shape: tuple[int, int], generator: torch.Generator, device: torch.device
) -> Camera:
    """A readout camera whose spatially varying read noise (a σ range with a correlation length) is one
    map for the whole recording, as a real camera's, instead of a new map per frame."""
    if not (
        isinstance(camera, ReadoutCamera)
        and isinstance(camera.read_noise, tuple)
        and camera.read_noise_correlation_px is not None
    ):
        return camera
    lo, hi = camera.read_noise
    sigma = smooth_random_map((1, *shape), lo, hi, camera.read_noise_correlation_px, generator, device)[0]
    return ReadoutCamera(
        baseline=camera.baseline, read_noise=sigma, read_noise_correlation_px=camera.read_noise_correlation_px
    )


def plan_simulation(
    config: Mapping[str, Any], checkpoint: CheckpointDistribution | None = None
) -> SimulationPlan:
    """Validate every setting, build the optics, camera, background and the sample (nothing is written).
    ``checkpoint``: the PSF model comes from it (its optics are already in ``config``)."""
    settings = SimulationSettings.from_config(config)
    optics = mapping("optics", config.get("optics"))
    psf = psf_from_config(optics, settings.render_window_px) if checkpoint is None else checkpoint.psf
    setup = psf.setup
    setup.check_window(settings.render_window_px)
    z_range = settings.z_range_um or setup.z_range_um
    s0, s1 = setup.z_range_um
    if z_range[0] < s0 - 1e-9 or z_range[1] > s1 + 1e-9:
        raise UserInputError(
            f"z_range_um = {list(z_range)} leaves the optics' z range "
            f"{list(setup.z_range_um)}: choose a range inside it or another optics"
        )
    device = _device(settings.device)
    pupil = psf.pupil_model(torch.float32).to(device)
    height, width = settings.frame_shape
    try:
        configured_camera = camera_from_config(settings.camera)
        map_generator = torch.Generator(device).manual_seed(stream_seed(settings.seed, "read noise map"))
        camera = with_fixed_read_noise_map(configured_camera, (height, width), map_generator, device)
        background = background_from_config(settings.background)
        probe = torch.zeros(1, height, width, device=device)  # checks that maps fit the frame shape
        camera.sample(
            probe
            + background(1, (height, width), generator=torch.Generator(device).manual_seed(0), device=device),
            generator=torch.Generator(device).manual_seed(0),
        )
    except (ValueError, TypeError, RuntimeError) as error:
        raise UserInputError(" ".join(str(error).split())) from None
    volume = Volume(width * setup.pixel_size_um, height * setup.pixel_size_um, z_range)
    blinking = Blinking.from_settings(settings.blinking, settings.emitters, volume.area_um2)
    positions, structure = build_structure(settings, volume)
    return SimulationPlan(
        settings=settings,
        optics=optics,
        setup=setup,
        pupil=pupil,
        psf=psf,
        camera=camera,
        configured_camera=configured_camera,
        background=background,
        volume=volume,
        positions_um=positions,
        structure=structure,
        blinking=blinking,
        device=device,
        mask_source=describe_mask_source(optics) if checkpoint is None else checkpoint.mask_source,
    )


# ---------------------------------------------------------------------------------------- frames
@dataclass
class FrameEvents:
    """The emitters ON in one frame: indices into the structure, their ``(k, 3)`` positions in that frame
    (µm), photons and blur σ (pixels)."""

    emitter: np.ndarray
    positions_um: np.ndarray
    photons: np.ndarray
    blur_sigma_px: np.ndarray | None


def frame_events(plan: SimulationPlan) -> Iterator[FrameEvents]:
    """ON emitters of every frame, in order (one random stream for blinking and photons and one for motion,
    each consumed frame by frame)."""
    settings, volume = plan.settings, plan.volume
    rng = np.random.default_rng(stream_seed(settings.seed, "blinking"))
    trajectories = emitter_trajectories(
        np.random.default_rng(stream_seed(settings.seed, "motion")),
        plan.positions_um,
        settings.frames,
        settings.motion,
        np.array([0.0, 0.0, volume.z_range_um[0]]),
        np.array([volume.width_um, volume.height_um, volume.z_range_um[1]]),
    )
    for on, positions in zip(plan.blinking.states(rng, settings.emitters, settings.frames), trajectories):
        emitter = np.flatnonzero(on)
        photons = settings.photons.draw(rng, len(emitter)).astype(np.float64)
        blur = (
            None
            if settings.blur_sigma_px is None
            else rng.uniform(*settings.blur_sigma_px, size=len(emitter))
        )
        yield FrameEvents(emitter, positions[emitter], photons, blur)


def render_signal(plan: SimulationPlan, events: Sequence[FrameEvents]) -> Tensor:
    """Expected signal photons per pixel ``(len(events), H, W)`` on the plan's device."""
    height, width = plan.frame_shape
    signal = torch.zeros(len(events), height, width, device=plan.device)
    xyz = np.concatenate([e.positions_um for e in events])
    if len(xyz) == 0:
        return signal
    photons = np.concatenate([e.photons for e in events])
    frame_index = np.concatenate([np.full(len(e.emitter), i) for i, e in enumerate(events)])
    blur = None if events[0].blur_sigma_px is None else np.concatenate([e.blur_sigma_px for e in events])
    psf_blur = plan.psf.blur_sigma_px  # combines with the per-emitter blur in quadrature

    def tensor(a: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.as_tensor(a, dtype=dtype, device=plan.device)

    with torch.no_grad():
        for start in range(0, len(xyz), EMITTERS_PER_RENDER):
            part = slice(start, start + EMITTERS_PER_RENDER)
            signal += render_frames(
                plan.pupil,
                tensor(xyz[part]),
                tensor(photons[part]),
                tensor(frame_index[part], torch.long),
                len(events),
                (height, width),
                window=plan.settings.render_window_px,
                blur_sigma_px=total_blur_px(psf_blur, None if blur is None else tensor(blur[part])),
            )
    return signal


def _generator(plan: SimulationPlan, *parts: int | str) -> torch.Generator:
    return torch.Generator(plan.device).manual_seed(stream_seed(plan.settings.seed, *parts))


@dataclass
class RecordingStats:
    """Counts gathered while writing."""

    localizations: int = 0
    clipped_below_zero: int = 0
    clipped_above_max: int = 0


def recording_chunks(
    plan: SimulationPlan, stats: RecordingStats
) -> Iterator[tuple[int, np.ndarray, list[FrameEvents]]]:
    """``(first frame index, (k, H, W) uint16 counts, the frames' events)`` in chunks of frames.

    Background and camera noise of frame t come from generators seeded by (seed, t), so a frame does not
    depend on how frames are grouped.
    """
    height, width = plan.frame_shape
    fixed_background = None
    if not plan.settings.background_per_frame:
        fixed_background = plan.background(
            1, (height, width), generator=_generator(plan, "background"), device=plan.device
        )
    events = frame_events(plan)
    chunk_frames = max(1, min(FRAMES_PER_CHUNK, PIXELS_PER_CHUNK // (height * width)))
    for first in range(0, plan.settings.frames, chunk_frames):
        chunk = [next(events) for _ in range(min(chunk_frames, plan.settings.frames - first))]
        signal = render_signal(plan, chunk)
        counts = np.empty((len(chunk), height, width), dtype=np.uint16)
        for i in range(len(chunk)):
            frame = first + i
            background = (
                fixed_background
                if fixed_background is not None
                else plan.background(
                    1, (height, width), generator=_generator(plan, "background", frame), device=plan.device
                )
            )
            reading = plan.camera.sample(
                signal[i : i + 1] + background, generator=_generator(plan, "camera", frame)
            )
            reading = torch.round(reading[0]).cpu().numpy()
            stats.clipped_below_zero += int((reading < 0).sum())
            stats.clipped_above_max += int((reading > UINT16_MAX).sum())
            counts[i] = np.clip(reading, 0, UINT16_MAX).astype(np.uint16)
        yield first, counts, chunk


# ---------------------------------------------------------------------------------------- files
class StagedOutputs:
    """Output files written under hidden temporary names in the target folder and renamed together at
    the end; on any failure the temporary files are removed and existing files stay untouched."""

    def __init__(self, folder: Path, names: Sequence[str], overwrite: bool) -> None:
        self.folder, self.names, self.overwrite = folder, tuple(names), overwrite
        self.temporary: dict[str, Path] = {}
        self.check_free()

    def check_free(self) -> None:
        if self.overwrite:
            return
        for name in self.names:
            if (self.folder / name).exists():
                raise FileExistsError(
                    f"{self.folder / name} exists; refusing to overwrite it: pass "
                    "overwrite=true or choose another out=<folder>"
                )

    def __enter__(self) -> StagedOutputs:
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            stem, suffix = os.path.splitext(name)
            fd, path = tempfile.mkstemp(prefix=f".{stem}.", suffix=f"{suffix}.part", dir=self.folder)
            os.close(fd)
            self.temporary[name] = Path(path)
        return self

    def path(self, name: str) -> Path:
        return self.temporary[name]

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        try:
            if exc_type is None:
                self.check_free()
                umask = os.umask(0)
                os.umask(umask)
                for name, path in self.temporary.items():
                    os.chmod(path, 0o666 & ~umask)  # mkstemp files are private (0600)
                    os.replace(path, self.folder / name)
        finally:
            for path in self.temporary.values():
                path.unlink(missing_ok=True)


def csv_rows(
    plan: SimulationPlan, first_frame: int, chunk: Sequence[FrameEvents], first_id: int
) -> list[str]:
    """Ground-truth CSV lines (nm, frames and emitter ids from 1) for a chunk of frames."""
    lines = []
    row_id = first_id
    for offset, events in enumerate(chunk):
        xyz_nm = events.positions_um * 1e3
        frame = first_frame + offset + 1
        for (x, y, z), photons, emitter in zip(xyz_nm, events.photons, events.emitter):
            lines.append(f"{row_id},{frame},{x:.3f},{y:.3f},{z:.3f},{photons:.1f},{emitter + 1}\n")
            row_id += 1
    return lines


def settings_record(config: Mapping[str, Any], plan: SimulationPlan, stats: RecordingStats) -> dict[str, Any]:
    """``simulation.json``: the settings as given, the resolved setup and what followed from them."""
    settings, blinking, volume = plan.settings, plan.blinking, plan.volume
    height, width = settings.frame_shape
    return {
        "software": {"dstorm3d": _package_version(), "torch": torch.__version__, "numpy": np.__version__},
        "seed": settings.seed,
        "settings": {key: config.get(key) for key in SETTING_KEYS},
        "optics": plan.optics,
        "optical_setup": plan.setup.to_dict(),
        "mask": plan.mask_source,
        "derived": {
            "pixel_size_um": plan.setup.pixel_size_um,
            "frame_size_um": [volume.width_um, volume.height_um],
            "z_range_um": list(volume.z_range_um),
            "duty_cycle": blinking.duty_cycle,
            "p_switch_on": blinking.p_on,
            "p_switch_off": blinking.p_off,
            "expected_active_per_frame": blinking.duty_cycle * settings.emitters,
            "expected_density_per_um2": blinking.duty_cycle * settings.emitters / volume.area_um2,
            "localizations": stats.localizations,
            "motion": settings.motion.record(settings.emitters),
            "mean_active_per_frame": stats.localizations / settings.frames,
            "clipped_pixels": {"below_0": stats.clipped_below_zero, "above_65535": stats.clipped_above_max},
            "read_noise": (
                "one smooth σ map spanning camera.read_noise, drawn once for the whole recording"
                if plan.camera is not plan.configured_camera
                else "as configured"
            ),
        },
        "structure": plan.structure,
        "files": {
            RECORDING: {
                "shape": [settings.frames, height, width],
                "dtype": "uint16",
                "unit": "camera counts",
            },
            GROUND_TRUTH: {
                "columns": list(CSV_COLUMNS),
                "frames": "from 1",
                "x_y": "nm from the top-left corner of the image",
                "z": "nm above the coverslip",
                "intensity": "expected signal photons of the emitter in that frame",
                "id": "row number, from 1",
                "emitter_id": "the fluorophore (from 1), the same in every frame",
            },
            SETTINGS_FILE: {},
        },
    }


def write_recording(
    config: Mapping[str, Any], plan: SimulationPlan, folder: Path, overwrite: bool
) -> RecordingStats:
    """Write the three files into ``folder`` (page by page, rows streamed), renaming them at the end."""
    from dstorm3d.utils.tiff import ImageJStackWriter

    settings = plan.settings
    height, width = settings.frame_shape
    stats = RecordingStats()
    with StagedOutputs(folder, OUTPUT_FILES, overwrite) as staged:
        with (
            ImageJStackWriter(
                staged.path(RECORDING),
                (settings.frames, height, width),
                np.uint16,
                pixel_um=plan.setup.pixel_size_um,
                axes="TYX",
                info=plan.description(),
            ) as tiff,
            open(staged.path(GROUND_TRUTH), "w", newline="") as table,
        ):
            table.write(",".join(f'"{c}"' for c in CSV_COLUMNS) + "\n")
            for first, counts, chunk in recording_chunks(plan, stats):
                for frame in counts:
                    tiff.write(frame)
                rows = csv_rows(plan, first, chunk, stats.localizations + 1)
                table.writelines(rows)
                stats.localizations += len(rows)
        record = settings_record(config, plan, stats)
        staged.path(SETTINGS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return stats


# ---------------------------------------------------------------------------------------- entry point
def simulate(cfg: DictConfig) -> Path:
    """Resolve the config, plan, write; return the output folder."""
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    overwrite = flag("overwrite", config.get("overwrite"))
    out = config.get("out")
    if out is None:
        from hydra.core.hydra_config import HydraConfig

        folder = Path(HydraConfig.get().runtime.output_dir)
    elif isinstance(out, str) and out:
        folder = Path(out).expanduser().resolve()
    else:
        raise UserInputError(f"out must be a folder path or null, got {out!r}")
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"out={folder} is a file, not a folder")
    StagedOutputs(folder, OUTPUT_FILES, overwrite)  # fail before any work when the files exist
    checkpoint = None
    if config.get("ckpt") is not None:
        if not isinstance(config["ckpt"], str) or not config["ckpt"]:
            raise UserInputError(f"ckpt must be a checkpoint path or null, got {config['ckpt']!r}")
        SimulationSettings.from_config(config)  # the command line's own settings, before the model loads
        checkpoint = checkpoint_distribution(config["ckpt"])
        taken = apply_checkpoint(config, checkpoint, command_line_keys())
        config["from_checkpoint"] = {
            "path": str(Path(config["ckpt"]).resolve()),
            "keys": taken,
            "label_min_photons": checkpoint.label_min_photons,
        }
        print(f"from {config['ckpt']}: {', '.join(taken) or 'nothing (all set on the command line)'}")
        if "optics" not in taken:  # the command line's optics: the mask follows optics.mask
            checkpoint = None
    plan = plan_simulation(config, checkpoint)
    stats = write_recording(config, plan, folder, overwrite)
    settings = plan.settings
    height, width = settings.frame_shape
    print(
        f"{settings.frames} frames of {height}×{width} px ({plan.setup.name}, mask "
        f"{plan.mask_source.get('name', plan.mask_source['kind'])}, structure {settings.structure}): "
        f"{stats.localizations} emitter-frames of {settings.emitters} emitters, "
        f"{stats.localizations / settings.frames:.1f} per frame"
    )
    motion = settings.motion
    if motion.moves:
        mobile = settings.emitters - motion.immobile_count(settings.emitters)
        print(
            f"{mobile} emitters diffuse with D = {motion.diffusion_um2_per_s:g} µm²/s "
            f"({motion.frame_interval_s:g} s between frames: {motion.step_sigma_um * 1e3:.1f} nm per axis "
            "and step); emitter_id in ground_truth.csv follows each one"
        )
    print(f"wrote {', '.join(OUTPUT_FILES)} to {folder}")
    return folder


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="simulate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: a bad setting ends with one line on stderr and exit code 2."""
    run_or_exit(simulate, cfg)


if __name__ == "__main__":
    register_root()
    exit_on_bad_overrides("simulate")
    main()
