"""Simulation throughput: frames per second for the paper's STORM training frames.

    python benchmarks/simulation.py                          # the table on stdout
    python benchmarks/simulation.py --out                    # + benchmarks/results/simulation_<host>.md
    python benchmarks/simulation.py --repeats 2 --devices cpu --batch-cpu 16   # a quick check

Frames are 121 × 121 pixels with a uniform 1–35 emitters each (Gamma(3, 3000) photons), the STORM setup
(``storm_setup``) and the built-in model Tetrapod, float32. For each device (the CPU, and CUDA when
available) and each renderer it measures

* the full simulation: emitter sampling (``EmitterSampler``, numpy, fresh emitters every call) →
  rendering → background → camera noise (``ReadoutCamera``, the paper's defaults), and
* rendering alone (``render_frames`` on a fixed set of emitters),

for the exact whole-frame mode (``window=None``), window modes (each emitter on a P × P patch; the
fraction of its photons a window keeps is the mean over z of ``window_energy``), and, as the baseline
measured in the same run, the straightforward renderer: each emitter's pupil zero-padded to N × N, one
full ``torch.fft`` per emitter, and the frame cropped from the period. Speed-ups are baseline time over
renderer time on the same device.

It also measures the training-data pipeline as training runs it: ``EmitterDataset`` items (numpy
sampling per index) drawn in DataLoader workers and collated there, the batch moved to the device, and
``FrameSimulator`` rendering it exactly with the same camera, for each worker count asked for.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from common import (
    Timing,
    default_report_path,
    machine_info,
    markdown_table,
    print_results,
    time_call,
    write_report,
)
from torch import Tensor
from torch.utils.data import DataLoader

from dstorm3d.optics.masks import tetrapod_mask
from dstorm3d.optics.psf_model import ScalarPupilPSF
from dstorm3d.optics.pupil import PupilModel, window_energy
from dstorm3d.optics.render import render_frames
from dstorm3d.optics.setup import OpticalSetup, storm_setup
from dstorm3d.simulation.camera import camera_from_config
from dstorm3d.simulation.sampling import EmitterSampler
from dstorm3d.simulation.simulator import EmitterDataset, FrameSimulator, collate_samples, simulation_parts

BENCHMARK = "simulation"
BASELINE = "FFT per emitter (baseline)"


# ---------------------------------------------------------------------------------------- emitters
@dataclass(frozen=True)
class EmitterBatch:
    """Emitters of ``n_frames`` frames as one flat list on a device."""

    xyz_um: Tensor  # (E, 3)
    photons: Tensor  # (E,)
    frame_index: Tensor  # (E,) int64
    n_frames: int


def sample_batch(
    sampler: EmitterSampler,
    rng: np.random.Generator,
    n_frames: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> EmitterBatch:
    """Draw ``n_frames`` frames of emitters (numpy) and move them to ``device``."""
    samples = [sampler.sample(rng) for _ in range(n_frames)]
    counts = [len(sample["photons"]) for sample in samples]
    xyz = np.concatenate([sample["xyz"] for sample in samples]).reshape(-1, 3)
    photons = np.concatenate([sample["photons"] for sample in samples])
    frame_index = np.repeat(np.arange(n_frames), counts)
    return EmitterBatch(
        xyz_um=torch.as_tensor(xyz, dtype=dtype).to(device),
        photons=torch.as_tensor(photons, dtype=dtype).to(device),
        frame_index=torch.as_tensor(frame_index, dtype=torch.long).to(device),
        n_frames=n_frames,
    )


# ---------------------------------------------------------------------------------------- renderers
Renderer = Callable[[EmitterBatch], Tensor]


def matrix_dft_renderer(pupil: PupilModel, frame_shape: tuple[int, int], window: int | None) -> Renderer:
    """``render_frames``: exact on the whole frame (``window=None``) or on P × P windows."""

    def render(batch: EmitterBatch) -> Tensor:
        return render_frames(
            pupil, batch.xyz_um, batch.photons, batch.frame_index, batch.n_frames, frame_shape, window=window
        )

    return render


def fft_baseline_renderer(pupil: PupilModel, frame_shape: tuple[int, int], chunk: int) -> Renderer:
    """The straightforward renderer: pad each emitter's pupil to N × N, one full FFT, |E|², crop.

    The frame sits centred in one DFT period; the result equals ``render_frames(window=None)``.
    Emitters go through the FFT ``chunk`` at a time to bound memory.
    """
    n = pupil.setup.pupil_grid
    height, width = frame_shape
    if max(height, width) > n:
        raise ValueError(f"a {height}×{width} frame does not fit the {n}-pixel DFT period")
    top, left = (n - height) // 2, (n - width) // 2  # frame pixel (i, j) is period pixel (top + i, left + j)
    box = slice(n // 2 - pupil.box_half, n // 2 + pupil.box_half + 1)

    def render(batch: EmitterBatch) -> Tensor:
        xyz = batch.xyz_um
        frames = xyz.new_zeros(batch.n_frames, height, width)
        # phase-ramp origin (column, row): the centre of period pixel (n//2, n//2) in frame pixels
        origin = torch.tensor([n // 2 - left + 0.5, n // 2 - top + 0.5], dtype=xyz.dtype, device=xyz.device)
        for start in range(0, xyz.shape[0], chunk):
            part = slice(start, start + chunk)
            shift = origin - xyz[part, :2] / pupil.setup.pixel_size_um  # (column, row) px
            field_box = pupil.pupil_field(xyz[part, 2], shift)  # (e, K, K)
            padded = field_box.new_zeros(field_box.shape[0], n, n)
            padded[:, box, box] = field_box
            field = torch.fft.fftshift(
                torch.fft.fft2(torch.fft.ifftshift(padded, dim=(-2, -1))), dim=(-2, -1)
            )
            psf = pupil.intensity_per_photon(field)[:, top : top + height, left : left + width]
            frames.index_add_(0, batch.frame_index[part], psf * batch.photons[part].reshape(-1, 1, 1))
        return frames

    return render


# ---------------------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class RendererSpec:
    name: str
    window: int | None  # None: whole frame (exact)
    baseline: bool = False


@dataclass
class Row:
    device: str
    spec: RendererSpec
    photons_kept: str
    frames_per_call: int
    full: Timing
    render: Timing


def simulation_config(args: argparse.Namespace) -> dict:
    """The ``simulation`` config of the benchmark's frames (exact rendering, the paper's camera)."""
    level = {"level": list(args.background_level)} if args.background == "uniform" else {}
    return {
        "frame_shape": [args.frame_size, args.frame_size],
        "emitters": {"count_range": list(args.emitters)},
        "background": {"kind": args.background, **level},
        "camera": {"kind": "readout"},
        "render_window": None,
    }


def photon_fraction(setup: OpticalSetup, mask: np.ndarray, window: int, z_points: int = 41) -> float:
    """Mean over z (uniform over the setup's range) of the photon fraction a ``window``² patch keeps."""
    pupil = PupilModel(setup, mask, dtype=torch.float64)
    z = np.linspace(*setup.z_range_um, z_points)
    return float(window_energy(pupil, window, z).mean())


def check_baseline(
    pupil: PupilModel, sampler: EmitterSampler, frame_shape: tuple[int, int], device: torch.device, chunk: int
) -> float:
    """Largest |baseline − exact| relative to the largest pixel, on a few frames."""
    batch = sample_batch(sampler, np.random.default_rng(1), 4, device)
    with torch.inference_mode():
        exact = matrix_dft_renderer(pupil, frame_shape, None)(batch)
        fft = fft_baseline_renderer(pupil, frame_shape, chunk)(batch)
    return float((exact - fft).abs().max() / exact.abs().max())


def measure_device(
    device: torch.device,
    args: argparse.Namespace,
    setup: OpticalSetup,
    mask: np.ndarray,
    fractions: dict[int, float],
    notes: list[str],
) -> list[Row]:
    """Every renderer on one device: full simulation and rendering alone."""
    frame_shape = (args.frame_size, args.frame_size)
    n_frames = args.batch_gpu if device.type == "cuda" else args.batch_cpu
    chunk = args.baseline_chunk_gpu if device.type == "cuda" else args.baseline_chunk_cpu
    pupil = PupilModel(setup, mask).to(device)
    simulation = simulation_config(args)
    sampler, background = simulation_parts(simulation, setup)
    camera = camera_from_config(simulation["camera"])
    generator = torch.Generator(device=device).manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    fixed = sample_batch(sampler, np.random.default_rng(args.seed + 1), n_frames, device)

    error = check_baseline(pupil, sampler, frame_shape, device, chunk)
    notes.append(
        f"{device.type}: FFT baseline vs exact whole-frame rendering, max |difference| / max pixel "
        f"= {error:.1e} (float32)"
    )

    specs = [RendererSpec("matrix DFT, whole frame (exact)", None)]
    specs += [RendererSpec(f"matrix DFT, window {w}", w) for w in args.windows]
    specs += [RendererSpec(BASELINE, None, baseline=True)]
    rows = []
    for spec in specs:
        if spec.baseline:
            render = fft_baseline_renderer(pupil, frame_shape, chunk)
        else:
            render = matrix_dft_renderer(pupil, frame_shape, spec.window)

        def simulate(render: Renderer = render) -> Tensor:
            batch = sample_batch(sampler, rng, n_frames, device)
            mu = render(batch) + background(n_frames, frame_shape, generator=generator, device=device)
            return camera.sample(mu, generator)

        with torch.inference_mode():
            full = time_call(simulate, device, args.warmup, args.repeats)
            render_only = time_call(lambda render=render: render(fixed), device, args.warmup, args.repeats)
        kept = "1 (exact)" if spec.window is None else f"{fractions[spec.window]:.3f}"
        rows.append(Row(device.type, spec, kept, n_frames, full, render_only))
        print(
            f"  {device.type:4s} {spec.name:34s} full {full.rate_text(n_frames):>14s} frames/s, "
            f"render {render_only.rate_text(n_frames):>14s} frames/s",
            file=sys.stderr,
            flush=True,
        )
    return rows


@dataclass
class PipelineRow:
    device: str
    workers: int
    frames_per_batch: int
    batches_per_call: int
    timing: Timing

    @property
    def frames_per_call(self) -> int:
        return self.frames_per_batch * self.batches_per_call


def measure_pipeline(
    device: torch.device, args: argparse.Namespace, setup: OpticalSetup, mask: np.ndarray, workers: int
) -> PipelineRow:
    """The training-data path: items sampled in ``workers`` DataLoader workers, collated, moved to the
    device, rendered there by ``FrameSimulator``. A timed call renders ``--pipeline-batches`` batches, so
    that batches arriving in bursts from the workers average out within a call.

    Before any call the batches the workers queued while the device warmed up (``2 × workers``, the
    DataLoader's prefetch) are drained untimed, so the timed calls see the steady state:
    production-limited or rendering-limited, as it is.
    """
    simulation = simulation_config(args)
    n_frames = args.batch_gpu if device.type == "cuda" else args.batch_cpu
    sampler, background = simulation_parts(simulation, setup)
    simulator = FrameSimulator(ScalarPupilPSF(setup, mask), simulation).to(device)
    drained = 2 * workers
    n_batches = drained + args.pipeline_batches * (args.warmup + args.repeats)
    dataset = EmitterDataset(sampler, background, n_batches * n_frames, args.seed)
    loader = DataLoader(
        dataset,
        batch_size=n_frames,
        num_workers=workers,
        collate_fn=collate_samples,
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)
    generator = torch.Generator(device=device).manual_seed(args.seed)

    def render_next() -> Tensor:
        batch = {key: value.to(device, non_blocking=True) for key, value in next(batches).items()}
        return simulator(batch, generator)

    def call() -> None:
        for _ in range(args.pipeline_batches):
            render_next()

    with torch.inference_mode():
        for _ in range(drained):
            render_next()
        timing = time_call(call, device, args.warmup, args.repeats)
    batches = None  # drops the loader's iterator, which stops the workers
    frames_per_call = n_frames * args.pipeline_batches
    print(
        f"  {device.type:4s} training-data pipeline, {workers:2d} workers      "
        f"{timing.rate_text(frames_per_call):>14s} frames/s",
        file=sys.stderr,
        flush=True,
    )
    return PipelineRow(device.type, workers, n_frames, args.pipeline_batches, timing)


def pipeline_table(rows: Sequence[PipelineRow], exact: dict[str, Row]) -> str:
    """One line per device × worker count, against the same device's exact rendering alone."""
    table = []
    for row in rows:
        alone = exact[row.device]
        ratio = row.timing.rate(row.frames_per_call) / alone.render.rate(alone.frames_per_call)
        table.append(
            [
                row.device,
                row.workers,
                row.frames_per_batch,
                row.batches_per_call,
                row.timing.rate_text(row.frames_per_call),
                f"{ratio:.2f}",
            ]
        )
    headers = [
        "device",
        "DataLoader workers",
        "frames/batch",
        "batches/call",
        "training-data pipeline (frames/s)",
        "vs exact rendering alone",
    ]
    return markdown_table(headers, table, align_right=[False] + [True] * 5)


def results_table(rows: Sequence[Row]) -> str:
    """One line per device × renderer, speed-ups against the same device's baseline."""
    baselines = {row.device: row for row in rows if row.spec.baseline}
    table = []
    for row in rows:
        base = baselines[row.device]
        table.append(
            [
                row.device,
                row.spec.name,
                "—" if row.spec.window is None else row.spec.window,
                row.photons_kept,
                row.frames_per_call,
                row.full.rate_text(row.frames_per_call),
                f"{base.full.median / row.full.median:.2f}×",
                row.render.rate_text(row.frames_per_call),
                f"{base.render.median / row.render.median:.2f}×",
            ]
        )
    headers = [
        "device",
        "renderer",
        "window (px)",
        "photons kept",
        "frames/call",
        "full simulation (frames/s)",
        "full vs baseline",
        "rendering (frames/s)",
        "rendering vs baseline",
    ]
    return markdown_table(headers, table, align_right=[False, False] + [True] * 7)


# ---------------------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    cuda = torch.cuda.is_available()
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=["cpu", "cuda"],
        default=["cpu", "cuda"] if cuda else ["cpu"],
        help="devices to measure on",
    )
    parser.add_argument("--frame-size", type=int, default=121, help="frame side (pixels)")
    parser.add_argument(
        "--emitters",
        type=int,
        nargs=2,
        default=[1, 35],
        metavar=("MIN", "MAX"),
        help="emitters per frame, uniform integer",
    )
    parser.add_argument("--windows", type=int, nargs="*", default=[64, 48], help="window sizes (pixels)")
    parser.add_argument("--batch-cpu", type=int, default=64, help="frames per call on the CPU")
    parser.add_argument("--batch-gpu", type=int, default=512, help="frames per call on the GPU")
    parser.add_argument("--baseline-chunk-cpu", type=int, default=256, help="emitters per baseline FFT call")
    parser.add_argument("--baseline-chunk-gpu", type=int, default=2048, help="emitters per baseline FFT call")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (the median is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; None keeps torch's")
    parser.add_argument(
        "--background",
        choices=["none", "uniform", "super_gaussian", "cell_like"],
        default="none",
        help="background of the full simulation (the paper's STORM frames have none)",
    )
    parser.add_argument(
        "--background-level",
        type=float,
        nargs=2,
        default=[20.0, 150.0],
        help="level range of --background uniform (photons/px)",
    )
    parser.add_argument(
        "--workers-cpu",
        type=int,
        nargs="*",
        default=[0],
        help="DataLoader worker counts of the training-data pipeline on the CPU (none: skip)",
    )
    parser.add_argument(
        "--workers-gpu",
        type=int,
        nargs="*",
        default=[4, 8],
        help="DataLoader worker counts of the training-data pipeline on the GPU (none: skip)",
    )
    parser.add_argument(
        "--pipeline-batches", type=int, default=8, help="batches per timed call of the training-data pipeline"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        nargs="?",
        const=default_report_path(BENCHMARK),
        default=None,
        type=Path,
        help="also write a markdown report (no path: results/simulation_<host>.md)",
    )
    args = parser.parse_args(argv)
    if "cuda" in args.devices and not cuda:
        parser.error("--devices cuda: CUDA is not available")
    sizes = (
        args.batch_cpu,
        args.batch_gpu,
        args.repeats,
        args.baseline_chunk_cpu,
        args.baseline_chunk_gpu,
        args.pipeline_batches,
    )
    if min(sizes) < 1:
        parser.error("batch sizes, chunks, --repeats and --pipeline-batches must be at least 1")
    if min(args.workers_cpu + args.workers_gpu, default=0) < 0:
        parser.error("--workers-cpu / --workers-gpu must be 0 or more")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    setup = storm_setup()
    for window in args.windows:
        setup.check_window(window)
    mask = tetrapod_mask(setup)
    fractions = {window: photon_fraction(setup, mask, window) for window in args.windows}

    notes: list[str] = []
    rows: list[Row] = []
    pipeline_rows: list[PipelineRow] = []
    for name in args.devices:
        print(f"measuring on {name} ...", file=sys.stderr, flush=True)
        device = torch.device(name)
        rows += measure_device(device, args, setup, mask, fractions, notes)
        for workers in args.workers_gpu if device.type == "cuda" else args.workers_cpu:
            pipeline_rows.append(measure_pipeline(device, args, setup, mask, workers))

    table = results_table(rows)
    tables = {"Frames per second": table}
    if pipeline_rows:
        exact = {row.device: row for row in rows if row.spec.window is None and not row.spec.baseline}
        tables["Training-data pipeline"] = pipeline_table(pipeline_rows, exact)
    machine = machine_info()
    print_results(list(tables.values()), machine, notes)
    if args.out is not None:
        settings = {
            "setup": f"{setup.name} (N = {setup.pupil_grid}, {setup.pixel_size_um * 1e3:.0f} nm pixels, z "
            f"{setup.z_range_um[0]:g}–{setup.z_range_um[1]:g} µm), built-in model Tetrapod, float32",
            "frames": f"{args.frame_size}×{args.frame_size} px, {args.emitters[0]}–{args.emitters[1]} "
            "emitters (uniform), Gamma(3, 3000) photons",
            "background / camera": f"{args.background} / ReadoutCamera (baseline 20–40, σ 8–12 smooth map)",
            "frames per call (CPU / GPU)": f"{args.batch_cpu} / {args.batch_gpu}",
            "baseline FFT chunk (CPU / GPU)": f"{args.baseline_chunk_cpu} / {args.baseline_chunk_gpu} "
            "emitters",
            "warm-up / timed calls": f"{args.warmup} / {args.repeats} (median; ± is half the relative range)",
            "training-data pipeline": f"{args.pipeline_batches} batches per call; 2 × workers batches "
            "drained untimed first; pinned memory on CUDA",
            "seed": args.seed,
        }
        notes = notes + [
            "Full simulation: sampling (numpy, fresh emitters each call) + rendering + background + camera "
            "noise, the emitters moved to the device every call. Rendering: the renderer alone on fixed "
            "emitters.",
            "Photons kept: mean over uniform z of the fraction of an emitter's photons inside its window "
            "(`window_energy`); the whole-frame mode and the baseline are exact.",
            "Speed-ups: the same device's baseline median time over the renderer's.",
            "Training-data pipeline: as training runs it. `EmitterDataset` items (the same sampler, one "
            "numpy generator per index) are drawn and collated in DataLoader workers; each batch is moved to "
            "the device and rendered exactly by `FrameSimulator` with the same camera. 0 workers: all in "
            "this process.",
        ]
        path = write_report(args.out, "Simulation throughput", tables, machine, settings, notes)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
