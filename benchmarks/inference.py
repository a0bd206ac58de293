"""Inference throughput: frames per second on the real mito frames with the authors' STORM network.

    python benchmarks/inference.py                                # the table on stdout
    python benchmarks/inference.py --out                          # + benchmarks/results/inference_<host>.md
    python benchmarks/inference.py --threads 2 --devices cpu      # the CPU figure against the original's
    python benchmarks/inference.py --devices cpu --crop 64 96 --tiles-cpu 32   # a quick check that it runs

The authors' trained network (reference.md §5: D = 121, s = 800) is imported with ``build_authors_checkpoint``
into a temporary checkpoint and loaded back with ``load_module``, as ``infer.py`` would load it; the frames
are the 332 × 492 mito frames (``experimental/mito_tetrapod/NN.tif``). Localizing goes through the product's
``localize_frames`` (whole frames, or tiles of ``T`` px cores with the required margin of context), and a
probe around the network and the decoder splits the time into

* the network forward (normalised frame or tile → ``(B, 121, 4h, 4w)`` volume), and
* the post-processing: ours, ``decode_volume`` (threshold, separable 9³ max filter, centroids gathered at
  the maxima only), and, on the very same volumes and tiles, the original's method as the baseline:
  threshold → 9³ max-pool local maxima → the weighted centroid of every voxel from dense 3-D convolutions
  of the volume with four 9³ kernels (ones, x, y, z offsets), read at the maxima. Both must give the same
  localizations (to < 0.01 nm); the report says whether they did.

End-to-end rates count everything ``localize_frames`` does (normalisation, tiling, stitching); on CUDA the
product's ``localize_frames`` is also timed without the probe's synchronisations, under the precision's
autocast as Lightning's predict loop (``infer.py``) runs it. The goals beside the results: ≥ 5× the original's
CPU speed (≈ 200 s per 492 × 332 frame on 2 cores, reference.md §10) with the same localizations, and
≥ 100 frames/s on one H100.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import (
    PRECISIONS,
    Timing,
    autocast,
    compose_config,
    default_report_path,
    machine_info,
    markdown_table,
    peak_memory_text,
    print_results,
    reset_peak_memory,
    set_tf32,
    synchronize,
    time_call,
    write_report,
)
from torch import Tensor

from dstorm3d.emitters import Emitters
from dstorm3d.geometry import VolumeGrid
from dstorm3d.inference.run import AUTO_HEAD_TILE
from dstorm3d.models.tiling import localize_frames, required_head_margin, required_margin
from dstorm3d.postprocess.volume import pack_detections
from dstorm3d.utils.paths import shared_data_dir

BENCHMARK = "inference"
ORIGINAL_CPU_S_PER_FRAME = 200.0  # the original, 2 CPU cores, one 492 × 332 frame (reference.md §10)
ORIGINAL_FRAME_SHAPE = (332, 492)
CPU_GOAL_SPEEDUP = 5.0
GPU_GOAL_FRAMES_PER_S = 100.0
SAME_NM = 0.01  # localizations closer than this count as the same


# ---------------------------------------------------------------------------------------- the baseline
@contextlib.contextmanager
def full_fp32_convolutions() -> Iterator[None]:
    """cuDNN convolutions in full fp32 (no TF32) inside the block, as the original's Titan Xp ran them."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def moment_kernels(radius: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(4, 1, K, K, K)`` kernels, K = 2r + 1: ones, then the x (column), y (row) and z (slice) offsets."""
    span = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    dk, dr, dc = torch.meshgrid(span, span, span, indexing="ij")
    return torch.stack([torch.ones_like(dc), dc, dr, dk]).unsqueeze(1)


@torch.no_grad()
def dense_centroid_decode(volume: Tensor, grid: VolumeGrid, threshold: float, radius: int = 4) -> Emitters:
    """The original's post-processing of a ``(B, D, uH, uW)`` volume, one frame at a time.

    Maxima: voxels above ``threshold`` equal to the 9³ max-pool of the volume. Centroids: the first
    moments of the volume over every voxel's 9³ window (dense ``conv3d`` with the ones/x/y/z kernels, zero
    padding = windows clipped at the borders) divided by the zeroth, read at the maxima. Positions go
    through the same :class:`VolumeGrid` as ours; scores are the peak values.
    """
    volume = volume.detach().float()
    kernels = moment_kernels(radius, volume.device)
    size = 2 * radius + 1
    frame_index, voxels, scores = [], [], []
    for b in range(volume.shape[0]):
        v = volume[b : b + 1].unsqueeze(1)  # (1, 1, D, H, W)
        pooled = F.max_pool3d(v, size, stride=1, padding=radius)
        peaks = ((v == pooled) & (v > threshold))[0, 0].nonzero()  # (N, 3) (k, r, c)
        del pooled
        with full_fp32_convolutions():
            moments = F.conv3d(v, kernels, padding=radius)[0]  # (4, D, H, W)
        k, r, c = peaks.unbind(dim=1)
        m = moments[:, k, r, c]  # (4, N)
        del moments
        shift = (m[1:] / m[:1]).T  # (N, 3) (dc, dr, dk)
        voxels.append(torch.stack([c, r, k], dim=1).float() + shift)
        scores.append(v[0, 0, k, r, c])
        frame_index.append(torch.full_like(k, b))
    xyz = grid.voxel_to_um(torch.cat(voxels))
    score = torch.cat(scores)
    return pack_detections(
        volume.shape[0], torch.cat(frame_index), xyz, torch.full_like(score, float("nan")), score
    )


# ---------------------------------------------------------------------------------------- the probe
class NetProbe:
    """The network as ``localize_frames`` calls it (whole, or ``trunk`` then ``head`` on head tiles): under
    the precision's autocast, timed, outputs kept so a second pass (``replay``) can post-process the very
    same volumes with another decoder."""

    def __init__(self, net: torch.nn.Module, device: torch.device, precision: str) -> None:
        self.net, self.device, self.precision = net, device, precision
        self.seconds = 0.0
        self.outputs: list[Tensor] = []
        self.replaying: Iterator[Tensor] | None = None
        self.trunk = TimedPart(self, net.trunk)
        self.head = TimedPart(self, net.head)

    def __getattr__(
        self, name: str
    ) -> object:  # what localize_frames reads from the net (receptive radii, ...)
        return getattr(self.net, name)

    def __call__(self, crop: Tensor) -> Tensor:
        return self.run(self.net, crop)

    def run(self, part: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        if self.replaying is not None:
            return next(self.replaying)
        synchronize(self.device)
        start = time.perf_counter()
        with autocast(self.device, self.precision):
            output = part(x)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.outputs.append(output)
        return output

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        self.replaying = iter(self.outputs)
        try:
            yield
        finally:
            self.replaying = None


class TimedPart:
    """The trunk or the head of a :class:`NetProbe`'s network, timed and replayed through the probe."""

    def __init__(self, probe: NetProbe, module: torch.nn.Module) -> None:
        self.probe, self.module = probe, module

    def __getattr__(self, name: str) -> object:
        return getattr(self.module, name)

    def __call__(self, x: Tensor) -> Tensor:
        return self.probe.run(self.module, x)


class DecoderProbe:
    """A readout whose ``decode`` is timed (outside autocast, in float32 as ``localize_frames`` hands it)."""

    def __init__(self, decode: Callable[[Tensor, float], Emitters], device: torch.device) -> None:
        self.decode_fn, self.device = decode, device
        self.seconds = 0.0

    def decode(self, output: Tensor, threshold: float) -> Emitters:
        synchronize(self.device)
        start = time.perf_counter()
        found = self.decode_fn(output, threshold)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        return found


@dataclass
class Probe:
    """What ``localize_frames`` reads from a module: threshold, normalisation, setup, network, readout."""

    threshold: Tensor
    normalization: Callable[[Tensor], Tensor]
    optical_setup: object
    net: NetProbe
    readout: DecoderProbe


# ---------------------------------------------------------------------------------------- set-up
def load_frames(folder: Path, count: int, crop: Sequence[int] | None) -> Tensor:
    """``(count, H, W)`` float32 camera counts: the first ``count`` frames (cycled), optionally the centre
    ``crop`` (rows, columns)."""
    import tifffile

    paths = sorted(folder.glob("*.tif"))
    if not paths:
        raise SystemExit(f"no .tif frames in {folder}")
    frames = np.stack([tifffile.imread(paths[i % len(paths)]) for i in range(count)]).astype(np.float32)
    if crop is not None:
        height, width = frames.shape[-2:]
        rows, cols = min(crop[0], height), min(crop[1], width)
        top, left = (height - rows) // 2, (width - cols) // 2
        frames = frames[:, top : top + rows, left : left + cols]
    return torch.from_numpy(np.ascontiguousarray(frames))


def authors_module(weights: Path) -> torch.nn.Module:
    """The authors' network as a :class:`LocalizerModule`, through a checkpoint file as ``infer.py``
    loads it."""
    from dstorm3d.import_weights import build_authors_checkpoint
    from dstorm3d.modules.checkpoints import load_module

    config = compose_config("import_weights.yaml", sections=("optics", "simulation"))
    checkpoint = build_authors_checkpoint(weights, config["optics"], config["simulation"])
    with tempfile.TemporaryDirectory(prefix="dstorm3d_bench_") as tmp:
        path = Path(tmp) / "authors.ckpt"
        torch.save(checkpoint, path)
        return load_module(path)


# ---------------------------------------------------------------------------------------- comparing
@dataclass
class Agreement:
    ours: int = 0
    baseline: int = 0
    unmatched_ours: int = 0
    unmatched_baseline: int = 0
    max_nm: float = 0.0

    @property
    def same(self) -> bool:
        return self.unmatched_ours == 0 and self.unmatched_baseline == 0 and self.max_nm < SAME_NM

    def add(self, ours: Emitters, other: Emitters) -> None:
        from scipy.spatial import cKDTree

        for a, b in zip(ours.per_frame(), other.per_frame()):
            a, b = a * 1e3, b * 1e3  # nm
            self.ours += len(a)
            self.baseline += len(b)
            if len(a) == 0 or len(b) == 0:
                self.unmatched_ours += len(a)
                self.unmatched_baseline += len(b)
                continue
            d_a, _ = cKDTree(b).query(a)
            d_b, _ = cKDTree(a).query(b)
            self.unmatched_ours += int((d_a >= SAME_NM).sum())
            self.unmatched_baseline += int((d_b >= SAME_NM).sum())
            self.max_nm = max(self.max_nm, float(d_a.max()), float(d_b.max()))

    def text(self) -> str:
        verdict = "same" if self.same else "DIFFERENT"
        return (
            f"{verdict}: {self.ours} vs {self.baseline} localizations, unmatched {self.unmatched_ours} / "
            f"{self.unmatched_baseline}, largest nearest-neighbour distance {self.max_nm:.2g} nm"
        )


# ---------------------------------------------------------------------------------------- measuring
@dataclass
class Row:
    device: str
    precision: str
    tiling: str
    frames: int
    frame_shape: tuple[int, int]
    batch: int
    forward: Timing
    ours: Timing
    baseline: Timing | None
    end_to_end: Timing
    end_to_end_baseline: Timing | None
    product: Timing | None
    localizations: int
    agreement: Agreement | None
    product_agreement: Agreement | None
    memory: str
    notes: list[str] = field(default_factory=list)


def frame_batches(frames: Tensor, batch: int) -> list[Tensor]:
    return [frames[i : i + batch] for i in range(0, frames.shape[0], batch)]


def measure(
    module: torch.nn.Module,
    frames: Tensor,
    device: torch.device,
    precision: str,
    tile: int | None,
    head_tile: int | None,
    batch: int,
    warmup: int,
    repeats: int,
    baseline: bool,
    product: bool,
    cpu_channels_last: bool = True,
) -> Row:
    """``warmup`` untimed and ``repeats`` timed passes over all ``frames``; each pass localizes every batch
    with ours (timed by part) and then, on the kept network outputs, with the baseline."""
    grid = module.readout.grid
    radius = int(module.readout.decode_kwargs.get("radius", 4))
    if module.readout.decode_kwargs.get("method", "centroid") != "centroid":
        raise SystemExit("the benchmark compares the centroid post-processing; the checkpoint uses another")
    batches = [b.to(device) for b in frame_batches(frames, batch)]
    # bf16-cl (and CPU runs with --cpu-memory-format channels-last, as infer.py on CPUs): the network's
    # weights (hence its activations) in channels-last memory format
    channels_last = precision == "bf16-cl" or (device.type == "cpu" and cpu_channels_last)
    module.net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    net = NetProbe(module.net, device, precision)
    ours = DecoderProbe(module.readout.decode, device)
    dense = DecoderProbe(lambda v, t: dense_centroid_decode(v, grid, t, radius), device)
    probe = Probe(module.threshold, module.normalization, module.optical_setup, net, ours)
    times: dict[str, list[float]] = {k: [] for k in ("forward", "ours", "baseline", "e2e", "e2e_baseline")}
    agreement = Agreement() if baseline else None
    found_ours: list[Emitters] = []
    reset_peak_memory(device)
    for rep in range(warmup + repeats):
        net.seconds = ours.seconds = dense.seconds = 0.0
        wall_ours = wall_dense = 0.0
        for frames_batch in batches:
            net.outputs.clear()
            probe.readout = ours
            synchronize(device)
            start = time.perf_counter()
            with torch.inference_mode():
                found = localize_frames(probe, frames_batch, tile=tile, head_tile=head_tile)
            synchronize(device)
            wall_ours += time.perf_counter() - start
            if rep == 0:
                found_ours.append(found.to("cpu"))
            if baseline:
                probe.readout = dense
                start = time.perf_counter()
                with torch.inference_mode(), net.replay():
                    found_dense = localize_frames(probe, frames_batch, tile=tile, head_tile=head_tile)
                synchronize(device)
                wall_dense += time.perf_counter() - start
                if rep == 0:
                    agreement.add(found.to("cpu"), found_dense.to("cpu"))
            net.outputs.clear()
        if rep >= warmup:
            times["forward"].append(net.seconds)
            times["ours"].append(ours.seconds)
            times["baseline"].append(dense.seconds)
            times["e2e"].append(wall_ours)
            times["e2e_baseline"].append(net.seconds + wall_dense)
    memory = peak_memory_text(device)

    product_timing = product_agreement = None
    if product:
        reset_peak_memory(device)
        plain: list[Emitters] = []

        def run_product() -> None:
            plain.clear()
            for frames_batch in batches:
                with torch.inference_mode(), autocast(device, precision):
                    plain.append(localize_frames(module, frames_batch, tile=tile, head_tile=head_tile))

        product_timing = time_call(run_product, device, max(1, warmup), repeats)
        product_agreement = Agreement()
        for a, b in zip(found_ours, plain):
            product_agreement.add(a, b.to("cpu"))
        memory = peak_memory_text(device)

    def timing(key: str) -> Timing:
        return Timing(tuple(times[key]))

    shape = (int(frames.shape[-2]), int(frames.shape[-1]))
    tiling = "whole frame" if tile is None else f"tiles {tile} px"
    tiling += "" if head_tile is None else f", head {head_tile} px"
    row = Row(
        device.type,
        precision,
        tiling,
        int(frames.shape[0]),
        shape,
        batch,
        timing("forward"),
        timing("ours"),
        timing("baseline") if baseline else None,
        timing("e2e"),
        timing("e2e_baseline") if baseline else None,
        product_timing,
        sum(int(f.valid.sum()) for f in found_ours),
        agreement,
        product_agreement,
        memory,
    )
    n = row.frames
    print(
        f"  {row.device:4s} {precision:7s} {row.tiling:12s}: forward {row.forward.rate_text(n)} frames/s, "
        f"ours {row.ours.rate_text(n)}"
        + (f", dense baseline {row.baseline.rate_text(n)}" if baseline else "")
        + f"; end-to-end {row.end_to_end.rate_text(n)}"
        + (f" (baseline {row.end_to_end_baseline.rate_text(n)})" if baseline else "")
        + (f", localize_frames {product_timing.rate_text(n)}" if product_timing else "")
        + " frames/s",
        file=sys.stderr,
        flush=True,
    )
    if agreement is not None:
        print(f"       ours vs dense baseline: {agreement.text()}", file=sys.stderr, flush=True)
    return row


# ---------------------------------------------------------------------------------------- reports
def ratio(base: Timing | None, new: Timing) -> str:
    return "—" if base is None else f"{base.median / new.median:,.1f}×"


def rate(timing: Timing | None, frames: int) -> str:
    return "—" if timing is None else timing.rate_text(frames)


def seconds_per_frame(timing: Timing | None, frames: int) -> str:
    if timing is None:
        return "—"
    value = timing.median / frames
    return f"{value:,.3g}"


def results_table(rows: Sequence[Row]) -> str:
    table = []
    for row in rows:
        n = row.frames
        table.append(
            [
                row.device,
                row.precision,
                row.tiling,
                f"{n} × {row.frame_shape[0]}×{row.frame_shape[1]}",
                row.batch,
                rate(row.forward, n),
                rate(row.ours, n),
                rate(row.baseline, n),
                ratio(row.baseline, row.ours),
                rate(row.end_to_end, n),
                seconds_per_frame(row.end_to_end, n),
                rate(row.end_to_end_baseline, n),
                seconds_per_frame(row.end_to_end_baseline, n),
                ratio(row.end_to_end_baseline, row.end_to_end),
                rate(row.product, n),
                row.localizations,
                "—" if row.agreement is None else ("yes" if row.agreement.same else "NO"),
                row.memory,
            ]
        )
    headers = [
        "device",
        "precision",
        "tiling",
        "frames",
        "batch",
        "forward (frames/s)",
        "ours post (frames/s)",
        "dense post (frames/s)",
        "post speed-up",
        "end-to-end (frames/s)",
        "s/frame",
        "dense end-to-end (frames/s)",
        "dense s/frame",
        "end-to-end speed-up",
        "localize_frames (frames/s)",
        "localizations",
        "same as dense",
        "peak GPU memory",
    ]
    return markdown_table(
        headers, table, align_right=[False, False, False, False] + [True] * 12 + [False, True]
    )


def goals_table(rows: Sequence[Row], cores: int) -> str:
    """The two goals against the best row of each device."""
    table = []
    full = all(row.frame_shape == ORIGINAL_FRAME_SHAPE for row in rows)
    cpu = [r for r in rows if r.device == "cpu"]
    if cpu:
        best = min(cpu, key=lambda r: r.end_to_end.median / r.frames)
        per_frame = best.end_to_end.median / best.frames
        same = best.agreement is not None and best.agreement.same
        speedup = ORIGINAL_CPU_S_PER_FRAME / per_frame
        met = full and speedup >= CPU_GOAL_SPEEDUP and same
        verdict = (
            "n/a (cropped frames)"
            if not full
            else "met"
            if met
            else "not met"
            if same or best.agreement is None
            else "not met (results differ)"
        )
        if best.agreement is None and full:
            verdict += " (no baseline check)"
        table.append(
            [
                f"CPU: ≥ {CPU_GOAL_SPEEDUP:g}× the original (≈ {ORIGINAL_CPU_S_PER_FRAME:g} s per "
                f"492×332 frame on 2 cores), same localizations",
                f"{per_frame:,.1f} s/frame = {speedup:,.1f}× "
                f"({best.precision}, {best.tiling}, {cores} cores)",
                verdict,
            ]
        )
    gpu = [r for r in rows if r.device == "cuda"]
    if gpu:

        def gpu_rate(r: Row) -> float:
            return (r.product or r.end_to_end).rate(r.frames)

        best = max(gpu, key=gpu_rate)
        value = gpu_rate(best)
        verdict = (
            "n/a (cropped frames)" if not full else "met" if value >= GPU_GOAL_FRAMES_PER_S else "not met"
        )
        table.append(
            [
                f"GPU: ≥ {GPU_GOAL_FRAMES_PER_S:g} frames/s (492×332) on one H100",
                f"{value:,.1f} frames/s ({best.precision}, {best.tiling}, batch {best.batch}, "
                f"{torch.cuda.get_device_name(0)})",
                verdict,
            ]
        )
    return markdown_table(["goal", "best measured", "verdict"], table)


# ---------------------------------------------------------------------------------------- command line
def tiles_argument(text: str) -> int | None:
    if text == "whole":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("tile sizes must be positive (or 'whole')")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    cuda = torch.cuda.is_available()
    data = shared_data_dir()
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=["cpu", "cuda"],
        default=["cpu", "cuda"] if cuda else ["cpu"],
        help="devices to measure on",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=data / "pretrained" / "deepstorm3d_tetrapod_storm_weights.pkl",
        help="the authors' state dict",
    )
    parser.add_argument(
        "--frames-dir",
        type=Path,
        default=data / "experimental" / "mito_tetrapod",
        help="folder of .tif frames",
    )
    parser.add_argument("--frames-cpu", type=int, default=1, help="frames per pass on the CPU")
    parser.add_argument("--frames-gpu", type=int, default=24, help="frames per pass on the GPU (cycled)")
    parser.add_argument("--batch-cpu", type=int, default=1, help="frames per localize_frames call on the CPU")
    parser.add_argument("--batch-gpu", type=int, default=4, help="frames per localize_frames call on the GPU")
    parser.add_argument(
        "--tiles-cpu",
        type=tiles_argument,
        nargs="+",
        default=[None],
        metavar="T|whole",
        help="tile cores on the CPU ('whole': no tiling; a whole frame's volume is 1.3 GB)",
    )
    parser.add_argument(
        "--head-tiles-cpu",
        type=tiles_argument,
        nargs="+",
        default=[AUTO_HEAD_TILE[True]],
        metavar="H|whole",
        help="head tiles on the CPU (default: infer.py's head_tile=auto there; "
        "'whole': the head on whole crops)",
    )
    parser.add_argument(
        "--head-tiles-gpu",
        type=tiles_argument,
        nargs="+",
        default=[AUTO_HEAD_TILE[False]],
        metavar="H|whole",
        help="head tiles on the GPU (default: infer.py's head_tile=auto there)",
    )
    parser.add_argument(
        "--tiles-gpu",
        type=tiles_argument,
        nargs="+",
        default=[None, 256, 128],
        metavar="T|whole",
        help="tile cores on the GPU ('whole': no tiling)",
    )
    parser.add_argument(
        "--precisions-cpu",
        nargs="+",
        choices=PRECISIONS[:2],
        default=["fp32"],
        help="network precision on the CPU",
    )
    parser.add_argument(
        "--precisions-gpu",
        nargs="+",
        choices=PRECISIONS,
        default=["fp32", "bf16"],
        help="network precision on the GPU (bf16: autocast, infer.py's default on a GPU; bf16-cl: "
        "bf16 with the network in channels-last memory format)",
    )
    parser.add_argument(
        "--crop",
        type=int,
        nargs=2,
        default=None,
        metavar=("ROWS", "COLUMNS"),
        help="use the centre crop of each frame (quick checks; the goals need whole frames)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the dense-convolution baseline")
    parser.add_argument(
        "--product",
        choices=["auto", "on", "off"],
        default="auto",
        help="also time the product's localize_frames without the probe (auto: on CUDA only)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed passes first (default CPU 0, GPU 2)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed passes (default CPU 1, GPU 5)")
    parser.add_argument(
        "--tf32",
        choices=["default", "on", "off"],
        default="default",
        help="TF32 for the network on the GPU: torch's default (convolutions yes), on, off; the "
        "baseline's dense convolutions always run in full fp32",
    )
    parser.add_argument(
        "--cpu-memory-format",
        choices=["channels-last", "contiguous"],
        default="channels-last",
        help="the network's memory format on the CPU (infer.py channels_last=auto: channels-last)",
    )
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; None keeps torch's")
    parser.add_argument(
        "--out",
        nargs="?",
        const=default_report_path(BENCHMARK),
        default=None,
        type=Path,
        help="also write a markdown report (no path: results/inference_<host>.md)",
    )
    args = parser.parse_args(argv)
    if "cuda" in args.devices and not cuda:
        parser.error("--devices cuda: CUDA is not available")
    if min(args.frames_cpu, args.frames_gpu, args.batch_cpu, args.batch_gpu) < 1:
        parser.error("frame counts and batch sizes must be at least 1")
    if args.crop is not None and min(args.crop) < 1:
        parser.error("--crop sizes must be positive")
    if (args.warmup is not None and args.warmup < 0) or (args.repeats is not None and args.repeats < 1):
        parser.error("--warmup must be ≥ 0 and --repeats ≥ 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if not args.weights.is_file():
        parser.error(f"--weights: {args.weights} not found")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    set_tf32({"default": None, "on": True, "off": False}[args.tf32])
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    module = authors_module(args.weights)
    margin = required_margin(module.net)

    rows: list[Row] = []
    for name in args.devices:
        device = torch.device(name)
        gpu = device.type == "cuda"
        print(f"measuring on {name} ...", file=sys.stderr, flush=True)
        module.to(device)
        frames = load_frames(args.frames_dir, args.frames_gpu if gpu else args.frames_cpu, args.crop)
        warmup = args.warmup if args.warmup is not None else (2 if gpu else 0)
        repeats = args.repeats if args.repeats is not None else (5 if gpu else 1)
        product = args.product == "on" or (args.product == "auto" and gpu)
        if not gpu and warmup == 0:  # first-call costs (allocator, oneDNN kernels) on one small tile, untimed
            with torch.inference_mode():
                localize_frames(module, frames[:1, :64, :64].to(device))
        for precision in args.precisions_gpu if gpu else args.precisions_cpu:
            for tile in args.tiles_gpu if gpu else args.tiles_cpu:
                for head_tile in args.head_tiles_gpu if gpu else args.head_tiles_cpu:
                    rows.append(
                        measure(
                            module,
                            frames,
                            device,
                            precision,
                            tile,
                            head_tile,
                            args.batch_gpu if gpu else args.batch_cpu,
                            warmup,
                            repeats,
                            not args.no_baseline,
                            product,
                            args.cpu_memory_format == "channels-last",
                        )
                    )
        module.to("cpu")

    machine = machine_info()
    threads = torch.get_num_threads()
    table, goals = results_table(rows), goals_table(rows, threads)
    notes = [
        f"{row.device} {row.precision} {row.tiling}: ours vs dense baseline: {row.agreement.text()}"
        for row in rows
        if row.agreement is not None
    ]
    notes += [
        f"{row.device} {row.precision} {row.tiling}: localize_frames (autocast around it, as infer.py) "
        f"vs the probed run: {row.product_agreement.text()}"
        for row in rows
        if row.product_agreement is not None
    ]
    print_results([table, goals], machine, notes)
    if args.out is not None:
        shape = "×".join(str(s) for s in rows[0].frame_shape) if rows else "?"
        settings = {
            "network": f"the authors' STORM network ({args.weights.name}; "
            f"D = {module.readout.grid.depth_slices}, "
            f"s = {module.readout.output_scale:g}), threshold {float(module.threshold):g}, "
            f"radius {module.readout.decode_kwargs.get('radius', 4)} (9³ windows)",
            "frames": f"{args.frames_dir} ({shape} px{', centre crop' if args.crop else ''}); CPU "
            f"{args.frames_cpu}, GPU {args.frames_gpu} per pass",
            "batch (CPU / GPU)": f"{args.batch_cpu} / {args.batch_gpu} frames per localize_frames call",
            "tiles (CPU / GPU)": f"{[t or 'whole' for t in args.tiles_cpu]} / "
            f"{[t or 'whole' for t in args.tiles_gpu]}"
            f" px cores, margin {margin} px (network receptive radius + 2)",
            "head tiles (CPU / GPU)": f"{[t or 'whole' for t in args.head_tiles_cpu]} / "
            f"{[t or 'whole' for t in args.head_tiles_gpu]} px of trunk features, margin "
            f"{required_head_margin(module.net)} px (head receptive radius + 2)",
            "precisions (CPU / GPU)": f"{args.precisions_cpu} / {args.precisions_gpu}",
            "warm-up / timed passes": f"{args.warmup if args.warmup is not None else 'CPU 0, GPU 2'} / "
            f"{args.repeats if args.repeats is not None else 'CPU 1, GPU 5'}",
            "TF32 (network)": args.tf32,
            "cudnn.benchmark": torch.backends.cudnn.benchmark,
            "CPU memory format": args.cpu_memory_format,
        }
        notes = notes + [
            "forward: the network on every frame or tile (normalisation excluded; bf16 = autocast); "
            "ours post: `decode_volume`; dense post: the original's method (9³ max-pool maxima, dense "
            "conv3d moments with ones/x/y/z 9³ kernels in full fp32, read at the maxima) on the same "
            "volumes. Rates are frames ÷ the summed median time of a pass; ± is half the relative range "
            "of the timed passes.",
            "end-to-end: `localize_frames` wall time with the probe (normalisation, tiling, stitching; on "
            "CUDA also the probe's synchronisations); dense end-to-end: the same network time + the dense "
            "pass. "
            "localize_frames: the product call alone, under autocast as Lightning's predict loop runs it.",
            f"Same as dense: every localization has a partner in the other set closer than {SAME_NM} nm and "
            "vice versa (exactly tied maxima are kept once by ours and every time by max-pooling).",
            f"The original's CPU figure (≈ {ORIGINAL_CPU_S_PER_FRAME:g} s per frame) is for 2 cores; run "
            "with --threads 2 for a like-for-like comparison. The dense baseline measured here is that "
            "method on "
            "today's torch with the same network.",
            "Peak GPU memory: of the localize_frames run when measured, else of the probed run (which "
            "keeps a batch's network outputs for the baseline).",
        ]
        tables = {"Frames per second": table, "Goals": goals}
        path = write_report(args.out, "Inference throughput", tables, machine, settings, notes)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
