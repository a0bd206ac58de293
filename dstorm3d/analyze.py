"""Analyse a localization table: drift, merging, filters, render, FRC, exports.

    python -m dstorm3d.analyze locs=run/localizations.csv
    python -m dstorm3d.analyze locs=a.csv out=analysis drift.enabled=false filters.min_confidence=0.5

Settings are in ``configs/analyze.yaml``; the steps are described in :mod:`dstorm3d.analysis`. Writes
into ``out`` (default: the Hydra run folder) drift.csv/.png, render.png/.tif, render_density_zmean.tif,
frc.png/.csv, the exports (ThunderSTORM, Picasso, SMAP) and summary.json (counts per step, the FRC
resolution, the settings).

Every setting, the input's columns and ``out`` are checked before the table is read; a problem ends the
run with one line ``error: ...`` on stderr and exit code 2. Files are written atomically; existing ones
are kept unless ``overwrite=true``.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

import hydra
from omegaconf import Container, DictConfig, OmegaConf

from dstorm3d.analysis.command import analyze_table, prepare, summary_line, write_outputs
from dstorm3d.utils.cli import UserInputError, exit_on_bad_overrides, run_or_exit
from dstorm3d.utils.paths import CONFIG_DIR, register_root

#: The keys of ``configs/analyze.yaml`` that the command reads (besides Hydra's and the paths).
SETTING_KEYS = (
    "locs",
    "out",
    "overwrite",
    "camera_pixel_nm",
    "precision",
    "drift",
    "merging",
    "filters",
    "tracking",
    "render",
    "frc",
    "exports",
)


def command_line() -> str:
    """``python -m dstorm3d.analyze <overrides>`` as typed (from Hydra when it runs, else ``sys.argv``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except (ValueError, AttributeError):
        overrides = sys.argv[1:]
    return " ".join(["python", "-m", "dstorm3d.analyze", *(shlex.quote(str(o)) for o in overrides)])


def analyze(cfg: DictConfig) -> dict[str, Any]:
    """Check the settings, the table's columns and ``out`` (before the table is read); run the steps,
    write the files and print two summary lines. Returns the content of ``summary.json``."""
    if OmegaConf.is_missing(cfg, "locs"):
        raise UserInputError("locs is required: python -m dstorm3d.analyze locs=<localizations.csv>")
    config = {
        key: OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value
        for key, value in ((key, cfg.get(key)) for key in SETTING_KEYS)
    }
    prepared = prepare(config)
    analysis = analyze_table(prepared, command_line())
    record = write_outputs(prepared.folder, analysis, prepared.overwrite)
    print("\n".join(summary_line(record, prepared.folder)))
    return record


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="analyze")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: a bad setting or input ends with one line on stderr and exit code 2."""
    run_or_exit(analyze, cfg)


if __name__ == "__main__":
    register_root()
    exit_on_bad_overrides("analyze")
    main()
