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
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from common import (Timing, default_report_path, machine_info, markdown_table, print_results, time_call,
                    write_report)
from dstorm3d.optics.masks import tetrapod_mask
from dstorm3d.optics.pupil import PupilModel, window_energy
from dstorm3d.optics.render import render_frames
from dstorm3d.optics.setup import OpticalSetup, storm_setup
from dstorm3d.simulation.background import background_from_config
from dstorm3d.simulation.camera import ReadoutCamera
from dstorm3d.simulation.sampling import EmitterSampler

BENCHMARK = "simulation"
BASELINE = "FFT per emitter (baseline)"


# ---------------------------------------------------------------------------------------- emitters
@dataclass(frozen=True)
class EmitterBatch:
    """Emitters of ``n_frames`` frames as one flat list on a device."""

    xyz_um: Tensor        # (E, 3)
    photons: Tensor       # (E,)
    frame_index: Tensor   # (E,) int64
    n_frames: int


def sample_batch(sampler: EmitterSampler, rng: np.random.Generator, n_frames: int,
                 device: torch.device, dtype: torch.dtype = torch.float32) -> EmitterBatch:
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
        return render_frames(pupil, batch.xyz_um, batch.photons, batch.frame_index, batch.n_frames,
                             frame_shape, window=window)
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
                torch.fft.fft2(torch.fft.ifftshift(padded, dim=(-2, -1))), dim=(-2, -1))
            psf = pupil.intensity_per_photon(field)[:, top:top + height, left:left + width]
            frames.index_add_(0, batch.frame_index[part], psf * batch.photons[part].reshape(-1, 1, 1))
        return frames
    return render


# ---------------------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class RendererSpec:
    name: str
    window: int | None     # None: whole frame (exact)
    baseline: bool = False


@dataclass
class Row:
    device: str
    spec: RendererSpec
    photons_kept: str
    frames_per_call: int
    full: Timing
    render: Timing


def photon_fraction(setup: OpticalSetup, mask: np.ndarray, window: int, z_points: int = 41) -> float:
    """Mean over z (uniform over the setup's range) of the photon fraction a ``window``² patch keeps."""
    pupil = PupilModel(setup, mask, dtype=torch.float64)
    z = np.linspace(*setup.z_range_um, z_points)
    return float(window_energy(pupil, window, z).mean())


def check_baseline(pupil: PupilModel, sampler: EmitterSampler, frame_shape: tuple[int, int],
                   device: torch.device, chunk: int) -> float:
    """Largest |baseline − exact| relative to the largest pixel, on a few frames."""
    batch = sample_batch(sampler, np.random.default_rng(1), 4, device)
    with torch.inference_mode():
        exact = matrix_dft_renderer(pupil, frame_shape, None)(batch)
        fft = fft_baseline_renderer(pupil, frame_shape, chunk)(batch)
    return float((exact - fft).abs().max() / exact.abs().max())


def measure_device(device: torch.device, args: argparse.Namespace, setup: OpticalSetup, mask: np.ndarray,
                   fractions: dict[int, float], notes: list[str]) -> list[Row]:
    """Every renderer on one device: full simulation and rendering alone."""
    frame_shape = (args.frame_size, args.frame_size)
    n_frames = args.batch_gpu if device.type == "cuda" else args.batch_cpu
    chunk = args.baseline_chunk_gpu if device.type == "cuda" else args.baseline_chunk_cpu
    pupil = PupilModel(setup, mask).to(device)
    sampler = EmitterSampler.from_setup(setup, frame_shape, count_range=tuple(args.emitters))
    level = {"level": tuple(args.background_level)} if args.background == "uniform" else {}
    background = background_from_config({"kind": args.background, **level})
    camera = ReadoutCamera()
    generator = torch.Generator(device=device).manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    fixed = sample_batch(sampler, np.random.default_rng(args.seed + 1), n_frames, device)

    error = check_baseline(pupil, sampler, frame_shape, device, chunk)
    notes.append(f"{device.type}: FFT baseline vs exact whole-frame rendering, max |difference| / max pixel "
                 f"= {error:.1e} (float32)")

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
        print(f"  {device.type:4s} {spec.name:34s} full {full.rate_text(n_frames):>14s} frames/s, "
              f"render {render_only.rate_text(n_frames):>14s} frames/s", file=sys.stderr, flush=True)
    return rows


def results_table(rows: Sequence[Row]) -> str:
    """One line per device × renderer, speed-ups against the same device's baseline."""
    baselines = {row.device: row for row in rows if row.spec.baseline}
    table = []
    for row in rows:
        base = baselines[row.device]
        table.append([
            row.device, row.spec.name, "—" if row.spec.window is None else row.spec.window, row.photons_kept,
            row.frames_per_call,
            row.full.rate_text(row.frames_per_call), f"{base.full.median / row.full.median:.2f}×",
            row.render.rate_text(row.frames_per_call), f"{base.render.median / row.render.median:.2f}×",
        ])
    headers = ["device", "renderer", "window (px)", "photons kept", "frames/call",
               "full simulation (frames/s)", "full vs baseline",
               "rendering (frames/s)", "rendering vs baseline"]
    return markdown_table(headers, table, align_right=[False, False] + [True] * 7)


# ---------------------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"],
                        default=["cpu", "cuda"] if cuda else ["cpu"], help="devices to measure on")
    parser.add_argument("--frame-size", type=int, default=121, help="frame side (pixels)")
    parser.add_argument("--emitters", type=int, nargs=2, default=[1, 35], metavar=("MIN", "MAX"),
                        help="emitters per frame, uniform integer")
    parser.add_argument("--windows", type=int, nargs="*", default=[64, 48], help="window sizes (pixels)")
    parser.add_argument("--batch-cpu", type=int, default=64, help="frames per call on the CPU")
    parser.add_argument("--batch-gpu", type=int, default=512, help="frames per call on the GPU")
    parser.add_argument("--baseline-chunk-cpu", type=int, default=256, help="emitters per baseline FFT call")
    parser.add_argument("--baseline-chunk-gpu", type=int, default=2048, help="emitters per baseline FFT call")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (the median is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; None keeps torch's")
    parser.add_argument("--background", choices=["none", "uniform", "super_gaussian", "cell_like"],
                        default="none",
                        help="background of the full simulation (the paper's STORM frames have none)")
    parser.add_argument("--background-level", type=float, nargs=2, default=[20.0, 150.0],
                        help="level range of --background uniform (photons/px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", nargs="?", const=default_report_path(BENCHMARK), default=None, type=Path,
                        help="also write a markdown report (no path: results/simulation_<host>.md)")
    args = parser.parse_args(argv)
    if "cuda" in args.devices and not cuda:
        parser.error("--devices cuda: CUDA is not available")
    sizes = (args.batch_cpu, args.batch_gpu, args.repeats, args.baseline_chunk_cpu, args.baseline_chunk_gpu)
    if min(sizes) < 1:
        parser.error("batch sizes, chunks and --repeats must be at least 1")
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
    for name in args.devices:
        print(f"measuring on {name} ...", file=sys.stderr, flush=True)
        rows += measure_device(torch.device(name), args, setup, mask, fractions, notes)

    table = results_table(rows)
    machine = machine_info()
    print_results([table], machine, notes)
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
            "seed": args.seed,
        }
        notes = notes + [
            "Full simulation: sampling (numpy, fresh emitters each call) + rendering + background + camera "
            "noise, the emitters moved to the device every call. Rendering: the renderer alone on fixed "
            "emitters.",
            "Photons kept: mean over uniform z of the fraction of an emitter's photons inside its window "
            "(`window_energy`); the whole-frame mode and the baseline are exact.",
            "Speed-ups: the same device's baseline median time over the renderer's.",
        ]
        tables = {"Frames per second": table}
        path = write_report(args.out, "Simulation throughput", tables, machine, settings, notes)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
