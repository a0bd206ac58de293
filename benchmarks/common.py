"""Shared pieces of the benchmark scripts: machine details, a timing loop and markdown reports.

Every benchmark prints its table to stdout and, given an output path, writes a markdown file with the
same table, the machine details and the settings, so results from different machines read alike.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shlex
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

BENCHMARK_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARK_DIR / "results"


# ---------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), or the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_names() -> list[str]:
    """Names of the visible CUDA devices (empty without CUDA)."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def machine_info() -> dict[str, str]:
    """What a reader needs to compare runs: host, CPU, cores, threads, versions, GPU, date (UTC)."""
    threads = f"{torch.get_num_threads()} / {torch.get_num_interop_threads()}"
    info = {
        "host": socket.gethostname(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores (logical / usable by this process)": f"{os.cpu_count()} / {usable_cores()}",
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads (intra-op / inter-op)": threads,
    }
    gpus = gpu_names()
    info["gpu"] = ", ".join(gpus) if gpus else "none"
    if gpus:
        info["cuda"] = str(torch.version.cuda)
        info["TF32 (cuDNN convolutions / matmul)"] = (
            f"{torch.backends.cudnn.allow_tf32} / {torch.backends.cuda.matmul.allow_tf32}"
        )
    return info


def default_report_path(benchmark: str) -> Path:
    """``benchmarks/results/<benchmark>_<host>.md``."""
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname()) or "host"
    return RESULTS_DIR / f"{benchmark}_{host}.md"


def command_line() -> str:
    """How this script was started, for the report."""
    return " ".join(shlex.quote(arg) for arg in [Path(sys.executable).name, *sys.argv])


# ---------------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of the timed repeats of one call."""

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max − min) / median: how noisy the repeats were."""
        return (max(self.seconds) - min(self.seconds)) / self.median if self.median > 0 else 0.0

    def rate(self, items_per_call: int) -> float:
        """Items per second at the median time."""
        return items_per_call / self.median

    def rate_text(self, items_per_call: int) -> str:
        """``"152.3 ±4%"``: the median rate and half the repeats' relative spread."""
        rate = self.rate(items_per_call)
        digits = 0 if rate >= 1000 else 1 if rate >= 10 else 2 if rate >= 1 else 3
        return f"{rate:,.{digits}f} ±{50 * self.spread:.0f}%"


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a timer sees it finish (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    call: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 1, repeats: int = 5
) -> Timing:
    """Run ``call`` ``warmup`` times untimed, then ``repeats`` times timed, synchronising ``device`` so
    queued GPU work is counted. Gradient mode is the caller's choice (wrap in ``torch.inference_mode``
    for simulation and inference, leave it on for training steps)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        call()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return Timing(tuple(seconds))


def peak_memory_text(device: torch.device | str) -> str:
    """Peak GPU memory allocated since the last ``reset_peak_memory`` (``"—"`` on the CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "—"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak-memory window on a GPU (no-op on the CPU); frees cached blocks first."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------------------------------- precision
PRECISIONS = ("fp32", "bf16", "bf16-cl")
"""``fp32``; ``bf16``: bf16 autocast (Lightning's ``bf16-mixed``); ``bf16-cl``: the same with the network's
weights in channels-last memory format."""


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a precision name (a no-op context for ``fp32``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def set_tf32(enabled: bool | None) -> None:
    """``True``/``False``: allow TF32 in cuDNN convolutions and CUDA matmuls; ``None`` keeps torch's defaults
    (convolutions TF32, matmuls full fp32)."""
    if enabled is None:
        return
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled


# ---------------------------------------------------------------------------------------- configs
@contextlib.contextmanager
def _composed(config_name: str, overrides: Sequence[str]) -> Iterator[object]:
    import tempfile

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from dstorm3d.utils.paths import CONFIG_DIR, register_root

    register_root()
    GlobalHydra.instance().clear()
    with (
        tempfile.TemporaryDirectory(prefix="dstorm3d_bench_") as tmp,
        initialize_config_dir(str(CONFIG_DIR), version_base="1.3"),
    ):
        try:
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
            HydraConfig().set_config(cfg)
            with open_dict(cfg):
                cfg.paths.output_dir = tmp
                cfg.paths.log_dir = tmp
            yield cfg
        finally:
            GlobalHydra.instance().clear()


def compose_config(
    config_name: str,
    overrides: Sequence[str] = (),
    sections: Sequence[str] = ("model", "data", "optics", "simulation"),
) -> dict[str, object]:
    """Sections of a composed Hydra config (as ``train.py`` / ``infer.py`` would compose it), resolved to
    plain data, e.g. ``compose_config("train.yaml", ["experiment=tetrapod_dense"])["model"]``."""
    from omegaconf import OmegaConf

    with _composed(config_name, overrides) as cfg:
        return {
            key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in sections
            if key in cfg
        }


# ---------------------------------------------------------------------------------------- reports
def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], align_right: Sequence[bool] | None = None
) -> str:
    """A GitHub markdown table; columns padded so it also reads well as plain text on stdout."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = list(align_right) if align_right is not None else [False] * len(headers)

    def line(row: Sequence[str]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
        return "| " + " | ".join(padded) + " |"

    dashes = [("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)]
    rule = "|" + "|".join(dashes) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def print_results(tables: Sequence[str], machine: Mapping[str, str], notes: Sequence[str]) -> None:
    """The tables, the main machine details (CPU, cores, torch, threads, GPU, TF32) and the notes, on
    stdout."""
    for table in tables:
        print(table)
        print()
    for key, value in machine.items():
        if key in ("cpu", "torch", "gpu") or key.startswith(("cores", "torch threads", "TF32")):
            print(f"{key}: {value}")
    for note in notes:
        print(note)


def write_report(
    path: Path,
    title: str,
    tables: Mapping[str, str],
    machine: Mapping[str, str],
    settings: Mapping[str, object],
    notes: Sequence[str] = (),
) -> Path:
    """Write a markdown report (tables, settings, machine, notes) through a temporary file."""
    from dstorm3d.utils.files import atomic_write

    parts = [f"# {title}", "", f"`{command_line()}`", ""]
    for heading, table in tables.items():
        parts += [f"## {heading}", "", table, ""]
    parts += [
        "## Settings",
        "",
        markdown_table(["setting", "value"], [[k, v] for k, v in settings.items()]),
        "",
    ]
    parts += ["## Machine", "", markdown_table(["item", "value"], [[k, v] for k, v in machine.items()]), ""]
    if notes:
        parts += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    text = "\n".join(parts)

    return atomic_write(Path(path), lambda tmp: tmp.write_text(text), overwrite=True)
