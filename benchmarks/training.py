"""Training throughput: images per second of a full training step of the paper's STORM localizer.

    python benchmarks/training.py                                  # the table on stdout
    python benchmarks/training.py --out                            # + benchmarks/results/training_<host>.md
    python benchmarks/training.py --devices cpu --batch-cpu 1 --repeats 1 --split-repeats 1 --no-quickstart
                                                                   # a quick check that it runs

The model and data come from the Hydra configs as ``train.py`` composes them (``train.yaml`` with
``experiment=tetrapod_dense``: the paper's network, D = 121 z slices on a 4× finer grid, 121 × 121 frames of
1–35 emitters, the volumetric KDE loss, Adam). One training step is what Lightning's automatic optimisation
does per batch: the collated emitter lists moved to the device, ``LocalizerModule.training_step`` (rendering
the frames on the device, camera noise, normalisation, network, loss) under the precision's autocast, then
``backward`` and ``optimizer.step()``. Each batch holds fresh emitters (the training stream, consecutive
indices), sampled before the timing as the DataLoader workers would.

Precisions: ``fp32``; ``bf16`` (autocast, as ``trainer.precision=bf16-mixed``); ``bf16-cl`` (bf16 with the
network in channels-last memory format). The split times the three parts of a step separately (with a
device synchronisation between them): simulation (batch to device + rendering + noise), forward (network +
loss), backward + optimizer step. The paper's epoch (9,000 images) is extrapolated from the full step and
set against the original's ≈ 2,400 s per epoch on a Titan Xp (reference.md §10).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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

from dstorm3d.simulation.simulator import EmitterDataset, batch_emitters, collate_samples

BENCHMARK = "training"
PAPER_EPOCH_IMAGES = 9000
ORIGINAL_EPOCH_S = 2400.0  # Titan Xp, pre-generated data (reference.md §10)
CONFIGS = {
    "tetrapod_dense": ["experiment=tetrapod_dense"],
    "psf_design": ["experiment=psf_design"],
    "quickstart": ["experiment=quickstart"],
    "storm_offsets": ["experiment=storm_offsets"],
}
# The periodic training-metric decode (every train_metrics_every_n_steps) is not part of a typical step.
COMMON_OVERRIDES = ["model.train_metrics_every_n_steps=0"]

warnings.filterwarnings("ignore", message=r".*self\.log\(\)")  # training_step outside a Trainer


# ---------------------------------------------------------------------------------------- set-up
@dataclass
class Experiment:
    """A composed configuration: the model's and the data's settings."""

    name: str
    model: dict[str, Any]
    data: dict[str, Any]
    max_epochs: int | None = None

    @property
    def batch_size(self) -> int:
        return int(self.data["batch_size"])

    @property
    def epoch_images(self) -> int:
        return int(self.data["train_samples"])

    def run_hours(self, images_per_s: float) -> float | None:
        """Hours of the configured run (max_epochs × train_samples images) at this rate."""
        if self.max_epochs is None or self.max_epochs < 0:
            return None
        return self.max_epochs * self.epoch_images / images_per_s / 3600

    def description(self) -> str:
        head, net, sim = self.model["head"], self.model["network"], self.model["simulation"]
        h, w = sim["frame_shape"]
        depth = f", D = {head['depth_slices']}" if head["kind"] == "volume" else ""
        return (
            f"{head['kind']} head{depth}, {net.get('trunk', 'paper')} trunk, {net['channels']} channels, "
            f"{h}×{w} px frames, "
            f"{sim['emitters'].get('count_range', sim['emitters'].get('density_per_um2'))} emitters"
        )


def load_experiment(name: str, extra: Sequence[str]) -> Experiment:
    config = compose_config(
        "train.yaml", [*CONFIGS[name], *COMMON_OVERRIDES, *extra], sections=("model", "data", "trainer")
    )
    epochs = config.get("trainer", {}).get("max_epochs")
    return Experiment(
        name, dict(config["model"]), dict(config["data"]), None if epochs is None else int(epochs)
    )


def build_module(experiment: Experiment, device: torch.device, precision: str) -> torch.nn.Module:
    import hydra

    module = hydra.utils.instantiate(experiment.model, _convert_="all").to(device).train()
    if precision == "bf16-cl":
        module.net.to(memory_format=torch.channels_last)
    return module


def emitter_dataset(experiment: Experiment) -> EmitterDataset:
    from dstorm3d.data.simulated import SimulatedDataModule

    data = {k: v for k, v in experiment.data.items() if k != "_target_"}
    return SimulatedDataModule(**data).dataset("train", epoch=0)


class Batches:
    """Collated batches of consecutive training samples, prepared ahead (as DataLoader workers would)."""

    def __init__(self, dataset: EmitterDataset, batch_size: int, count: int) -> None:
        self.batch_size = batch_size
        self.batches = [
            collate_samples([dataset[(i * batch_size + j) % len(dataset)] for j in range(batch_size)])
            for i in range(count)
        ]
        self.next = 0

    def take(self) -> dict[str, Tensor]:
        batch = self.batches[self.next % len(self.batches)]
        self.next += 1
        return batch


def to_device(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def loader_rate(dataset: EmitterDataset, batch_size: int, batches: int = 3) -> float:
    """Images/s of emitter sampling + background + collation in one process (what each worker does)."""
    start = time.perf_counter()
    for i in range(batches):
        collate_samples([dataset[(i * batch_size + j) % len(dataset)] for j in range(batch_size)])
    return batches * batch_size / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------- measuring
@dataclass
class Row:
    device: str
    experiment: Experiment
    precision: str
    batch_size: int
    step: Timing
    simulation: Timing
    forward: Timing
    backward: Timing
    memory: str

    @property
    def images_per_s(self) -> float:
        return self.step.rate(self.batch_size)

    def epoch_s(self, images: int) -> float:
        return images / self.images_per_s


def measure(
    device: torch.device, experiment: Experiment, precision: str, batch_size: int, args: argparse.Namespace
) -> Row:
    """Full steps (``time_call``), then the split over ``--split-repeats`` more steps."""
    reset_peak_memory(device)
    module = build_module(experiment, device, precision)
    optimizer = module.build_optimizer()  # the module's Adam; schedules do not change a step's cost
    dataset = emitter_dataset(experiment)
    batches = Batches(dataset, batch_size, args.warmup + args.repeats + args.split_repeats + 1)

    def step() -> None:
        batch = to_device(batches.take(), device)
        with autocast(device, precision):
            loss = module.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    full = time_call(step, device, args.warmup, args.repeats)

    parts: list[tuple[float, float, float]] = []
    for _ in range(args.split_repeats):
        synchronize(device)
        t0 = time.perf_counter()
        batch = to_device(batches.take(), device)
        with autocast(device, precision):
            frames = module.simulate(batch, module._noise("train", batch))
            synchronize(device)
            t1 = time.perf_counter()
            output = module(frames)
            loss = module.readout.loss(output, batch_emitters(batch))["loss"]
        synchronize(device)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        t3 = time.perf_counter()
        parts.append((t1 - t0, t2 - t1, t3 - t2))
    simulation, forward, backward = (Timing(tuple(p[i] for p in parts)) for i in range(3))
    row = Row(
        device.type,
        experiment,
        precision,
        batch_size,
        full,
        simulation,
        forward,
        backward,
        peak_memory_text(device),
    )
    print(
        f"  {device.type:4s} {experiment.name:14s} {precision:7s} batch {batch_size:3d}: "
        f"{full.rate_text(batch_size):>12s} images/s, step {1e3 * full.median:8.1f} ms (sim "
        f"{1e3 * simulation.median:.1f} / fwd {1e3 * forward.median:.1f} / "
        f"bwd+step {1e3 * backward.median:.1f} ms)",
        file=sys.stderr,
        flush=True,
    )
    return row


def results_table(rows: Sequence[Row]) -> str:
    table = []
    for row in rows:
        step = row.step.median
        split = [row.simulation.median, row.forward.median, row.backward.median]
        total = sum(split)
        paper = row.experiment.name == "tetrapod_dense"
        epoch = row.epoch_s(PAPER_EPOCH_IMAGES)
        table.append(
            [
                row.device,
                row.experiment.name,
                row.precision,
                row.batch_size,
                row.step.rate_text(row.batch_size),
                f"{1e3 * step:,.1f}",
                *(f"{1e3 * t:,.1f} ({100 * t / total:.0f}%)" for t in split),
                f"{epoch:,.0f}" if paper else "—",
                f"{ORIGINAL_EPOCH_S / epoch:.3g}×" if paper else "—",
                run_text(row),
                row.memory,
            ]
        )
    headers = [
        "device",
        "config",
        "precision",
        "batch",
        "images/s",
        "step (ms)",
        "simulation (ms)",
        "forward + loss (ms)",
        "backward + step (ms)",
        "9,000-image epoch (s)",
        "vs original 2,400 s",
        "configured run (h)",
        "peak GPU memory",
    ]
    return markdown_table(headers, table, align_right=[False, False, False] + [True] * 10)


def run_text(row: Row) -> str:
    hours = row.experiment.run_hours(row.images_per_s)
    if hours is None:
        return "—"
    return f"{hours:,.2f} ({row.experiment.max_epochs} × {row.experiment.epoch_images:,} images)"


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
    parser.add_argument("--batch-cpu", type=int, nargs="+", default=[2], help="batch sizes on the CPU")
    parser.add_argument("--batch-gpu", type=int, nargs="+", default=[16, 32], help="batch sizes on the GPU")
    parser.add_argument(
        "--precisions-cpu",
        nargs="+",
        choices=PRECISIONS,
        default=["fp32"],
        help="precisions on the CPU (bf16 autocast works there too, but is rarely faster)",
    )
    parser.add_argument(
        "--precisions-gpu",
        nargs="+",
        choices=PRECISIONS,
        default=list(PRECISIONS),
        help="precisions on the GPU",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default CPU 1, GPU 3)")
    parser.add_argument("--repeats", type=int, default=None, help="timed full steps (default CPU 2, GPU 10)")
    parser.add_argument(
        "--split-repeats", type=int, default=None, help="steps timed part by part (default CPU 1, GPU 5)"
    )
    parser.add_argument(
        "--experiments",
        nargs="+",
        choices=["tetrapod_dense", "psf_design", "storm_offsets"],
        default=["tetrapod_dense"],
        help="configurations measured at every device, precision and batch size "
        "(psf_design: the joint mask + decoder step, telomere optics N = 329; "
        "storm_offsets: the shipped STORM model's recipe, 64×64 crops)",
    )
    parser.add_argument(
        "--no-quickstart",
        action="store_true",
        help="skip the quickstart configuration (offsets head, 32×32 frames; CPU only, fp32, "
        "its configured batch)",
    )
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra overrides for tetrapod_dense, e.g. model.head.depth_slices=61",
    )
    parser.add_argument(
        "--tf32",
        choices=["default", "on", "off"],
        default="default",
        help="TF32 on the GPU: torch's default (convolutions yes, matmuls no), all on, all off",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; None keeps torch's")
    parser.add_argument(
        "--out",
        nargs="?",
        const=default_report_path(BENCHMARK),
        default=None,
        type=Path,
        help="also write a markdown report (no path: results/training_<host>.md)",
    )
    args = parser.parse_args(argv)
    if "cuda" in args.devices and not cuda:
        parser.error("--devices cuda: CUDA is not available")
    if min(*args.batch_cpu, *args.batch_gpu) < 1:
        parser.error("batch sizes must be at least 1")
    for name in ("warmup", "repeats", "split_repeats"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} is too small")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def device_settings(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """The repeat counts for one device (CPU steps of the paper's network take seconds)."""
    gpu = device.type == "cuda"
    defaults = {"warmup": 3 if gpu else 1, "repeats": 10 if gpu else 2, "split_repeats": 5 if gpu else 1}
    values = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in defaults.items()}
    return argparse.Namespace(**values)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    set_tf32({"default": None, "on": True, "off": False}[args.tf32])
    measured = [load_experiment(name, args.override) for name in args.experiments]
    quick = None if args.no_quickstart else load_experiment("quickstart", [])

    rows: list[Row] = []
    notes: list[str] = []
    for name in args.devices:
        device = torch.device(name)
        settings = device_settings(args, device)
        gpu = device.type == "cuda"
        print(f"measuring on {name} ...", file=sys.stderr, flush=True)
        for precision in args.precisions_gpu if gpu else args.precisions_cpu:
            for batch_size in args.batch_gpu if gpu else args.batch_cpu:
                for experiment in measured:
                    rows.append(measure(device, experiment, precision, batch_size, settings))
        if quick is not None and not gpu:
            rows.append(measure(device, quick, "fp32", quick.batch_size, settings))
    for experiment in (*measured, quick):
        if experiment is None:
            continue
        rate = loader_rate(emitter_dataset(experiment), experiment.batch_size)
        notes.append(
            f"{experiment.name}: emitter sampling + background + collation (the DataLoader's share, CPU, "
            f"one process, not in the step): {rate:,.0f} images/s; the config runs "
            f"{experiment.data['num_workers']} worker(s)"
        )
    if quick is not None:
        for row in rows:
            if row.experiment is quick:
                notes.append(
                    f"quickstart: its {quick.epoch_images:,}-image epoch ≈ "
                    f"{row.epoch_s(quick.epoch_images):,.0f} s on {row.device} at batch {row.batch_size}"
                )

    table = results_table(rows)
    machine = machine_info()
    print_results([table], machine, notes)
    if args.out is not None:
        cpu, gpu = device_settings(args, torch.device("cpu")), device_settings(args, torch.device("cuda"))
        settings = {
            **{
                e.name: f"train.yaml experiment={e.name} {' '.join(args.override)}".strip()
                + f": {e.description()}"
                for e in measured
            },
            "quickstart": "skipped"
            if quick is None
            else f"train.yaml experiment=quickstart: {quick.description()}",
            "batch sizes (CPU / GPU)": f"{args.batch_cpu} / {args.batch_gpu}",
            "precisions (CPU / GPU)": f"{args.precisions_cpu} / {args.precisions_gpu}",
            "warm-up / timed steps / split steps (CPU)": (
                f"{cpu.warmup} / {cpu.repeats} / {cpu.split_repeats}"
            ),
            "warm-up / timed steps / split steps (GPU)": (
                f"{gpu.warmup} / {gpu.repeats} / {gpu.split_repeats}"
            ),
            "TF32": args.tf32,
            "optimizer": ", ".join(f"{e.name}: Adam, lr {e.model['optimizer'].get('lr')}" for e in measured),
        }
        notes = notes + [
            "A step: batch to the device, `training_step` (rendering + camera noise + normalisation + "
            "network + loss) under the precision's autocast, `backward`, `optimizer.step()`; fresh "
            "emitters every step. Images/s: batch ÷ median step time (± is half the relative range of the "
            "timed steps).",
            "Split: further steps timed part by part with a device synchronisation between parts "
            "(percentages of their sum); the synchronisations make their sum a little above the full step "
            "on a GPU.",
            "Not in the step: the training-metric decode every `train_metrics_every_n_steps` (50) steps, "
            "validation, logging and the DataLoader (it runs in worker processes alongside).",
            f"9,000-image epoch: the paper's epoch size ÷ images/s; the original needed "
            f"≈ {ORIGINAL_EPOCH_S:,.0f} s per epoch on a Titan Xp with pre-generated data "
            "(reference.md §10), 23–41 epochs per model.",
        ]
        tables = {"Training steps": table}
        path = write_report(args.out, "Training throughput", tables, machine, settings, notes)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
