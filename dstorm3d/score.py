"""Score a localization table against ground truth.

    python -m dstorm3d.score locs=sim/localized/localizations.csv truth=sim/ground_truth.csv
    python -m dstorm3d.score locs=a.csv truth=b.csv out=scores min_photons=6000 matching_nm=250

Settings are in ``configs/score.yaml``; the tables, the matching and the bins are described in
:mod:`dstorm3d.evaluation.score`. Writes into ``out`` (default: the Hydra run folder):

* ``score.json``: both input paths, Jaccard, precision, recall (fractions), RMSE lateral/axial/3D and bias
  x/y/z (nm), efficiency lateral/axial/3D (%), TP/FP/FN and ignored predictions, the same under the SMLM
  Challenge 2016 rule (``challenge``), frame and row counts, the settings and the bin edges;
* ``per_bin.csv``: recall and RMSE per bin of the truth's intensity and per bin of its z;
* ``score.png``: recall vs photons, recall and RMSE vs z, histograms of dx, dy, dz (nm).

Every setting and both input files are checked before a table is read; a problem ends the run with one
line ``error: ...`` on stderr and exit code 2, and writes none of these files. Files are written atomically;
existing ones are kept unless ``overwrite=true``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import Container, DictConfig, OmegaConf

from dstorm3d.evaluation.score import (
    OUTPUT_FILES,
    ScoreSettings,
    input_file,
    per_bin,
    read_table,
    score_figure,
    score_record,
    score_tables,
    summary_lines,
    write_outputs,
)
from dstorm3d.utils.cli import UserInputError, exit_on_bad_overrides, run_or_exit
from dstorm3d.utils.paths import CONFIG_DIR, register_root
from dstorm3d.utils.validate import flag, writable_folder

#: The keys of ``configs/score.yaml`` that the command reads (besides Hydra's and the paths).
SETTING_KEYS = ("locs", "truth", "out", "overwrite", "matching_nm", "min_photons", "photon_bins", "z_bins")


def command_line() -> str:
    """``python -m dstorm3d.score <overrides>`` as typed (from Hydra when it runs, else ``sys.argv``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except (ValueError, AttributeError):
        overrides = sys.argv[1:]
    return " ".join(["python", "-m", "dstorm3d.score", *(shlex.quote(str(o)) for o in overrides)])


def score(cfg: DictConfig) -> dict[str, Any]:
    """Check the settings, both inputs and ``out`` (before any table is read); read the tables, score them,
    write the three files and print two summary lines. Returns the content of ``score.json``."""
    for key in ("locs", "truth"):
        if OmegaConf.is_missing(cfg, key):
            raise UserInputError(
                f"{key} is required: python -m dstorm3d.score locs=<localizations.csv> "
                "truth=<ground_truth.csv>"
            )
    config = {
        key: OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value
        for key, value in ((key, cfg.get(key)) for key in SETTING_KEYS)
    }
    overwrite = flag("overwrite", config.get("overwrite"))
    settings = ScoreSettings.from_config(config)
    locs_path = input_file("locs", config.get("locs"), "a localization table (infer.py's localizations.csv)")
    truth_path = input_file(
        "truth", config.get("truth"), "a ground-truth table (simulate's ground_truth.csv)"
    )
    out = config.get("out")
    if not isinstance(out, str) or not out:
        raise UserInputError(f"out={out!r}: must be a folder path (e.g. out=scores)")
    folder = Path(out).expanduser().resolve()
    existing = [folder / name for name in OUTPUT_FILES if (folder / name).exists()]
    if existing and not overwrite:
        raise UserInputError(f"{existing[0]} exists: pass overwrite=true or choose another out=<folder>")
    writable_folder("out", folder)

    locs = read_table(locs_path, "locs")
    truth = read_table(truth_path, "truth", need_intensity=settings.min_photons is not None)
    result = score_tables(locs, truth, settings)
    rows = per_bin(truth, result, settings)
    record = score_record(locs, truth, result, rows, settings, command_line())
    write_outputs(folder, record, rows, score_figure(result, rows, settings, locs, truth), overwrite)
    print("\n".join(summary_lines(result, settings, folder)))
    return record


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="score")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: a bad setting or input ends with one line on stderr and exit code 2."""
    run_or_exit(score, cfg)


if __name__ == "__main__":
    register_root()
    exit_on_bad_overrides("score")
    main()
