"""Scoring a localization table against a ground-truth table: the library behind ``python -m dstorm3d.score``.

Both tables are ThunderSTORM-style CSVs as dstorm3d writes them (``infer.py``'s ``localizations.csv``,
``python -m dstorm3d.simulate``'s ``ground_truth.csv``): a header row, then one row per emitter and frame
with the columns ``"frame"`` (from 1), ``"x [nm]"``, ``"y [nm]"`` (from the image's top-left corner) and
``"z [nm]"`` (above the coverslip); the truth's ``"intensity [photon]"`` column (any ``intensity [...]``)
gives each emitter's signal. Other columns are ignored.

Matching and scores are the project's own (:mod:`dstorm3d.metrics`): the tables become
:class:`~dstorm3d.emitters.Emitters` batches of frames (positions in µm), scored with
:class:`~dstorm3d.metrics.localization.JaccardRMSE` (Hungarian, 3D distance < ``matching_nm``, as
``evaluate.py``) and :class:`~dstorm3d.metrics.localization.SMLMChallengeMetric` (lateral < 250 nm and
|Δz| < 500 nm). Every frame that appears in either table is scored: a frame only in the truth gives false
negatives, one only in the localizations false positives. Truth rows with at most ``min_photons`` are
rendered-but-unlabelled emitters: not ground truth, and a prediction on one is neither a TP nor an FP
(``ignore_unlabelled``, :class:`~dstorm3d.emitters.Emitters` ``valid`` but not ``labelled``).

Every distance here is in nm except inside :class:`Emitters` (µm).
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dstorm3d.errors import UserInputError
from dstorm3d.evaluation.report import json_safe
from dstorm3d.utils.validate import integer, is_finite_number, number

if TYPE_CHECKING:  # torch is imported on first use: a bad command line is refused without loading it
    from dstorm3d.emitters import Emitters

SCORE_FILE, BINS_FILE, FIGURE_FILE = "score.json", "per_bin.csv", "score.png"
OUTPUT_FILES = (SCORE_FILE, BINS_FILE, FIGURE_FILE)
POSITION_COLUMNS = ("x [nm]", "y [nm]", "z [nm]")
REQUIRED_COLUMNS = ("frame", *POSITION_COLUMNS)
INTENSITY_PREFIX = "intensity"
#: Scores of :class:`JaccardRMSE` in score.json, then the ignored predictions.
SCORE_KEYS = (
    "jaccard",
    "precision",
    "recall",
    "rmse_lat_nm",
    "rmse_ax_nm",
    "rmse_3d_nm",
    "bias_x_nm",
    "bias_y_nm",
    "bias_z_nm",
    "efficiency_lat",
    "efficiency_ax",
    "efficiency_3d",
    "tp",
    "fp",
    "fn",
    "ignored",
)
COUNT_KEYS = ("tp", "fp", "fn", "ignored")
#: per_bin.csv: ``quantity`` is ``intensity`` (bins of the truth's intensity, ``unit`` from its column) or
#: ``z`` (nm); ``truths`` ground-truth emitters in the bin, ``pairs`` those matched; RMSEs over the pairs.
BIN_COLUMNS = ("quantity", "unit", "low", "high", "truths", "pairs", "recall", "rmse_lat_nm", "rmse_ax_nm")
FRAMES_PER_BATCH = 512  # frames matched together (bounds the memory of the padded Emitters)
NM_PER_UM = 1000.0


# ---------------------------------------------------------------------------------------- settings
def bin_setting(key: str, value: Any, unit: str) -> int | tuple[float, ...]:
    """A bins setting: a whole number of bins ≥ 1, or ≥ 2 strictly increasing edges (in ``unit``)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        edges = tuple(value)
        if (
            len(edges) >= 2
            and all(is_finite_number(e) for e in edges)
            and all(a < b for a, b in zip(edges[:-1], edges[1:]))
        ):
            return tuple(float(e) for e in edges)
        raise UserInputError(
            f"{key}={list(edges)!r}: edges must be at least two increasing numbers in {unit} "
            f"(e.g. {key}=[0,1000,2000]) or a number of bins (e.g. {key}=8)"
        )
    return integer(key, value, minimum=1, example=8)


@dataclass(frozen=True)
class ScoreSettings:
    """The validated scoring settings of ``configs/score.yaml``.

    Attributes:
        matching_nm: Hungarian matching radius, 3D distance (nm).
        min_photons: truth rows with at most this intensity are not ground truth (None: all are).
        photon_bins: number of bins holding equal numbers of truths, or edges in the intensity's unit.
        z_bins: number of equal-width bins over the truth's z range, or edges in nm.
    """

    matching_nm: float = 150.0
    min_photons: float | None = None
    photon_bins: int | tuple[float, ...] = 8
    z_bins: int | tuple[float, ...] = 8

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ScoreSettings:
        return cls(
            matching_nm=number("matching_nm", config.get("matching_nm"), above=0.0, example=150),
            min_photons=number(
                "min_photons", config.get("min_photons"), minimum=0.0, allow_none=True, example=6000
            ),
            photon_bins=bin_setting("photon_bins", config.get("photon_bins"), "photons"),
            z_bins=bin_setting("z_bins", config.get("z_bins"), "nm"),
        )

    def to_dict(self) -> dict[str, Any]:
        def bins(value: int | tuple[float, ...]) -> int | list[float]:
            return value if isinstance(value, int) else list(value)

        return {
            "matching_nm": self.matching_nm,
            "min_photons": self.min_photons,
            "photon_bins": bins(self.photon_bins),
            "z_bins": bins(self.z_bins),
        }


def input_file(key: str, value: Any, what: str) -> Path:
    """An input table's path, checked to be an existing file (nothing is read)."""
    if not isinstance(value, str) or not value.strip():
        raise UserInputError(f"{key}={value!r}: give the path of {what} (e.g. {key}=<file.csv>)")
    path = Path(value).expanduser()
    if not path.exists():
        raise UserInputError(f"{key}={path}: no such file: give the path of {what}")
    if not path.is_file():
        raise UserInputError(f"{key}={path} is not a file: give the path of {what}")
    return path


# ---------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Table:
    """A localization or ground-truth table, rows sorted by frame (stable).

    Attributes:
        path: the CSV it was read from.
        frame: ``(N,)`` int64 frame numbers, from 1.
        xyz_nm: ``(N, 3)`` float64 positions in nm.
        intensity: ``(N,)`` float64 signal (the ``intensity [...]`` column), or None without one.
        intensity_column: that column's name (e.g. ``intensity [photon]``), or None.
        optional: ``(N,)`` float64 values of each ``optional_columns`` column the file has (NaN allowed).
    """

    path: Path
    frame: np.ndarray
    xyz_nm: np.ndarray
    intensity: np.ndarray | None = None
    intensity_column: str | None = None
    optional: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def intensity_unit(self) -> str:
        """The unit in the intensity column's brackets (``photon`` for ``intensity [photon]``)."""
        name = self.intensity_column or ""
        return name[name.find("[") + 1 : name.rfind("]")].strip() if "[" in name else "au"

    def frames(self) -> np.ndarray:
        """The distinct frame numbers in the table, ascending."""
        return np.unique(self.frame)

    def rows(self, frame: int) -> slice:
        """The rows of one frame."""
        return slice(
            int(np.searchsorted(self.frame, frame, "left")), int(np.searchsorted(self.frame, frame, "right"))
        )


def table_header(path: str | Path, key: str) -> list[str]:
    """The column names of a CSV's header row (nothing else is read); an unreadable or empty file is a
    one-line :class:`UserInputError` naming ``key``."""
    return _header(Path(path), key)


def require_positions(path: Path, key: str, header: Sequence[str]) -> None:
    """Refuse a table whose ``header`` lacks one of :data:`REQUIRED_COLUMNS` (one line naming it)."""
    for column in REQUIRED_COLUMNS:
        if column not in header:
            raise UserInputError(
                f'{key}={path} has no column "{column}" (its columns: {_names(header)}): give a '
                f"ThunderSTORM table with {_names(REQUIRED_COLUMNS)} (positions in nm, frames from 1)"
            )


def _header(path: Path, key: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle, skipinitialspace=True), None)
    except UnicodeDecodeError:
        raise UserInputError(f"{key}={path} is not a text CSV file: give a ThunderSTORM table") from None
    except OSError as exc:
        raise UserInputError(f"{key}={path}: cannot read it ({exc.strerror or exc})") from None
    if not header:
        raise UserInputError(f"{key}={path} is empty: it needs a header row with {_names(REQUIRED_COLUMNS)}")
    return [name.strip() for name in header]


def _names(columns: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def _first_bad_cell(path: Path, names: Sequence[str], indices: Sequence[int]) -> str | None:
    """Where a table that numpy could not parse goes wrong: the first data row that is too short or has a
    value that is not a number in one of the columns read (None if none is found)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, skipinitialspace=True)
        next(reader, None)
        for row_number, row in enumerate(reader, start=1):
            if len(row) <= max(indices):
                return f"data row {row_number} has {len(row)} values, fewer than the header's columns"
            for name, index in zip(names, indices):
                try:
                    float(row[index])
                except ValueError:
                    return f'column "{name}" has {row[index]!r} in data row {row_number}: it must be a number'
    return None


def read_table(
    path: str | Path, key: str, need_intensity: bool = False, optional_columns: Sequence[str] = ()
) -> Table:
    """Read a ThunderSTORM-style CSV (see the module docstring) into a :class:`Table`.

    ``key`` is the setting that named the file (``locs``, ``truth``): every problem — an unreadable file, a
    missing column (``need_intensity``: an ``intensity [...]`` column too), a value that is not a number, a
    frame that is not a whole number ≥ 1, a position that is not finite — is a one-line
    :class:`UserInputError` naming ``key``, the file and the column. ``optional_columns`` the file has are
    read too (into ``Table.optional``; numbers, NaN allowed: e.g. ``"uncertainty_x [nm]"``).
    """
    path = Path(path)
    header = _header(path, key)
    require_positions(path, key, header)
    intensity_column = next((h for h in header if h.startswith(INTENSITY_PREFIX)), None)
    if need_intensity and intensity_column is None:
        raise UserInputError(
            f'{key}={path} has no column "intensity [photon]" (its columns: {_names(header)}): it is '
            "needed for min_photons; give a table with it or set min_photons=null"
        )
    extra = [name for name in dict.fromkeys(optional_columns) if name in header and name != intensity_column]
    names = [*REQUIRED_COLUMNS, *([intensity_column] if intensity_column else []), *extra]
    indices = [header.index(name) for name in names]
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy's "input contained no data": no rows
            handle.readline()
            values = np.loadtxt(
                handle, delimiter=",", quotechar='"', usecols=indices, dtype=np.float64, ndmin=2
            )
    except ValueError as exc:
        raise UserInputError(f"{key}={path}: {_first_bad_cell(path, names, indices) or exc}") from None
    except OSError as exc:
        raise UserInputError(f"{key}={path}: cannot read it ({exc.strerror or exc})") from None
    values = values.reshape(-1, len(names))
    for column, name in enumerate(names[: len(names) - len(extra)]):
        bad = np.flatnonzero(~np.isfinite(values[:, column]))
        if len(bad):
            raise UserInputError(
                f'{key}={path}: column "{name}" has {values[bad[0], column]} in data row {bad[0] + 1}: '
                "every value must be a finite number"
            )
    frame = values[:, 0]
    bad = np.flatnonzero((frame < 1) | (frame != np.round(frame)))
    if len(bad):
        raise UserInputError(
            f'{key}={path}: column "frame" has {frame[bad[0]]:g} in data row {bad[0] + 1}: frames are whole '
            "numbers from 1"
        )
    order = np.argsort(frame, kind="stable")
    return Table(
        path=path,
        frame=frame[order].astype(np.int64),
        xyz_nm=values[order, 1:4].copy(),
        intensity=values[order, 4].copy() if intensity_column else None,
        intensity_column=intensity_column,
        optional={name: values[order, len(names) - len(extra) + k].copy() for k, name in enumerate(extra)},
    )


def labelled_rows(truth: Table, min_photons: float | None) -> np.ndarray:
    """``(N,)`` bool: the truth rows that are ground truth (intensity > ``min_photons``; all when None)."""
    if min_photons is None:
        return np.ones(len(truth), dtype=bool)
    if truth.intensity is None:
        raise UserInputError(f"min_photons needs an intensity column in truth={truth.path}")
    return truth.intensity > min_photons


def to_emitters(
    table: Table, frames: Sequence[int] | np.ndarray, labelled: np.ndarray | None = None
) -> Emitters:
    """The rows of ``frames`` (in that order; a frame without rows is empty) as a float64
    :class:`Emitters` batch, positions in µm; ``labelled`` (``(N,)`` bool over the table's rows) marks
    ground truth (default: every row), ``photons`` is the intensity column (NaN without one)."""
    import torch

    from dstorm3d.emitters import Emitters

    xyz, photons, flags = [], [], []
    for frame in frames:
        rows = table.rows(int(frame))
        xyz.append(table.xyz_nm[rows] / NM_PER_UM)
        photons.append(
            table.intensity[rows] if table.intensity is not None else np.full(len(xyz[-1]), np.nan)
        )
        flags.append(labelled[rows] if labelled is not None else np.ones(len(xyz[-1]), dtype=bool))
    return Emitters.from_lists(xyz, photons=photons, labelled=flags, dtype=torch.float64)


# ---------------------------------------------------------------------------------------- scoring
@dataclass
class ScoreResult:
    """What :func:`score_tables` found.

    Attributes:
        scores: :data:`SCORE_KEYS` with ``matching_nm`` (fractions; nm; percent; counts as int).
        challenge: the same under the SMLM Challenge 2016 rule (lateral < 250 nm and |Δz| < 500 nm).
        frames: ``scored`` (every frame in either table), ``with_truth``, ``with_localizations``,
            ``only_in_truth``, ``only_in_localizations``.
        rows: ``localizations``, ``truth``, ``truth_labelled``, ``truth_unlabelled``.
        labelled: ``(N,)`` bool over the truth's rows: ground truth.
        matched: ``(N,)`` bool over the truth's rows: matched by a localization (``matching_nm`` rule).
        error_nm: ``(N, 3)`` localization − truth (nm) of the matched rows, NaN elsewhere.
    """

    scores: dict[str, float | int]
    challenge: dict[str, float | int]
    frames: dict[str, int]
    rows: dict[str, int]
    labelled: np.ndarray
    matched: np.ndarray
    error_nm: np.ndarray

    @property
    def pair_errors_nm(self) -> np.ndarray:
        """``(TP, 3)`` dx, dy, dz (nm) of the matched pairs, in truth-row order."""
        return self.error_nm[self.matched]


def _batches(frames: np.ndarray, size: int = FRAMES_PER_BATCH) -> Iterator[np.ndarray]:
    """Consecutive slices of ``frames``; one empty batch when there is none (the metrics are updated)."""
    for start in range(0, max(len(frames), 1), size):
        yield frames[start : start + size]


def _as_numbers(computed: Mapping[str, Any], ignored: Any) -> dict[str, float | int]:
    values: dict[str, float | int] = {key: float(computed[key]) for key in SCORE_KEYS if key != "ignored"}
    values["ignored"] = int(ignored)
    for key in COUNT_KEYS:
        values[key] = int(values[key])
    return values


def score_tables(locs: Table, truth: Table, settings: ScoreSettings) -> ScoreResult:
    """Score ``locs`` against ``truth`` frame by frame (every frame in either table), with
    :class:`JaccardRMSE` at ``settings.matching_nm`` and :class:`SMLMChallengeMetric`, unlabelled truth
    (``min_photons``) ignored; also which truth rows were matched and their errors (nm)."""
    from dstorm3d.metrics.localization import JaccardRMSE, SMLMChallengeMetric, match_batch

    labelled = labelled_rows(truth, settings.min_photons)
    frames = np.union1d(locs.frames(), truth.frames())
    metric = JaccardRMSE(threshold_nm=settings.matching_nm, ignore_unlabelled=True)
    challenge = SMLMChallengeMetric(ignore_unlabelled=True)
    matched = np.zeros(len(truth), dtype=bool)
    error_nm = np.full((len(truth), 3), np.nan)
    for batch in _batches(frames):
        pred, target = to_emitters(locs, batch), to_emitters(truth, batch, labelled)
        metric.update(pred, target)
        challenge.update(pred, target)
        # The metric's own per-frame matching (same rule), to know which truth rows were found.
        matches = match_batch(pred, target, settings.matching_nm, None, None, True)
        for frame, match in zip(batch, matches):
            part = truth.rows(int(frame))
            rows = np.arange(part.start, part.stop)
            found = rows[labelled[rows]][match.gt_idx]
            matched[found] = True
            error_nm[found] = np.stack([match.dx_nm, match.dy_nm, match.dz_nm], axis=1)
    with_truth, with_locs = truth.frames(), locs.frames()
    return ScoreResult(
        scores=_as_numbers(metric.compute(), metric.ignored),
        challenge=_as_numbers(challenge.compute(), challenge.ignored),
        frames={
            "scored": len(frames),
            "with_truth": len(with_truth),
            "with_localizations": len(with_locs),
            "only_in_truth": len(np.setdiff1d(with_truth, with_locs)),
            "only_in_localizations": len(np.setdiff1d(with_locs, with_truth)),
        },
        rows={
            "localizations": len(locs),
            "truth": len(truth),
            "truth_labelled": int(labelled.sum()),
            "truth_unlabelled": int((~labelled).sum()),
        },
        labelled=labelled,
        matched=matched,
        error_nm=error_nm,
    )


# ---------------------------------------------------------------------------------------- bins
def bin_edges(values: np.ndarray, setting: int | tuple[float, ...], quantiles: bool) -> np.ndarray:
    """Bin edges: the given edges, or ``setting`` bins over ``values`` — holding equal numbers of values
    (``quantiles``) or of equal width — merged where they coincide (a single value gives one bin
    ``[v, v]``). No values and no edges given: no bins."""
    if not isinstance(setting, int):
        return np.asarray(setting, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return np.zeros(0)
    if quantiles:
        edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, setting + 1)))
    else:
        edges = np.unique(np.linspace(values.min(), values.max(), setting + 1))
    return edges if len(edges) > 1 else np.repeat(edges, 2)


def _rmse(squares: np.ndarray) -> float:
    return float(np.sqrt(squares.mean())) if len(squares) else math.nan


def binned_rows(
    quantity: str,
    unit: str,
    values: np.ndarray,
    matched: np.ndarray,
    error_nm: np.ndarray,
    edges: np.ndarray,
) -> list[dict[str, Any]]:
    """One :data:`BIN_COLUMNS` row per bin of ``values`` (one per ground-truth emitter, with whether it was
    matched and its ``(3,)`` error in nm). Bins are ``[low, high)``, the last ``[low, high]``; values
    outside the edges are in no bin. Recall and RMSE are NaN for a bin without truths / pairs."""
    rows = []
    for index, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
        last = index == len(edges) - 2
        inside = (values >= low) & ((values <= high) if last else (values < high))
        pairs = inside & matched
        truths = int(inside.sum())
        errors = error_nm[pairs]
        rows.append(
            {
                "quantity": quantity,
                "unit": unit,
                "low": float(low),
                "high": float(high),
                "truths": truths,
                "pairs": int(pairs.sum()),
                "recall": int(pairs.sum()) / truths if truths else math.nan,
                "rmse_lat_nm": _rmse(errors[:, 0] ** 2 + errors[:, 1] ** 2),
                "rmse_ax_nm": _rmse(errors[:, 2] ** 2),
            }
        )
    return rows


def per_bin(truth: Table, result: ScoreResult, settings: ScoreSettings) -> list[dict[str, Any]]:
    """Recall and RMSE per bin of the ground truth's intensity (none without an intensity column) and
    per bin of its z (nm); only ground truth (labelled rows) counts."""
    keep = result.labelled
    matched, error = result.matched[keep], result.error_nm[keep]
    rows = []
    if truth.intensity is not None:
        intensity = truth.intensity[keep]
        edges = bin_edges(intensity, settings.photon_bins, quantiles=True)
        rows += binned_rows("intensity", truth.intensity_unit, intensity, matched, error, edges)
    z_nm = truth.xyz_nm[keep, 2]
    rows += binned_rows("z", "nm", z_nm, matched, error, bin_edges(z_nm, settings.z_bins, quantiles=False))
    return rows


# ---------------------------------------------------------------------------------------- outputs


def edges_of(rows: Sequence[Mapping[str, Any]], quantity: str) -> list[float]:
    """The bin edges of one quantity's :data:`BIN_COLUMNS` rows (empty without bins)."""
    mine = [r for r in rows if r["quantity"] == quantity]
    return [r["low"] for r in mine] + [r["high"] for r in mine][-1:]


def score_record(
    locs: Table,
    truth: Table,
    result: ScoreResult,
    rows: Sequence[Mapping[str, Any]],
    settings: ScoreSettings,
    command: str,
) -> dict[str, Any]:
    """The content of score.json (plain JSON data: NaN is ``None``)."""
    return json_safe(
        {
            "locs": str(locs.path.resolve()),
            "truth": str(truth.path.resolve()),
            **result.scores,
            "units": "jaccard, precision, recall: fractions; rmse_*, bias_* (localization - truth): nm; "
            "efficiency_*: percent (SMLM Challenge 2016 formula); tp, fp, fn, ignored: counts",
            "matching": f"Hungarian, 3D distance < {settings.matching_nm:g} nm",
            "challenge": {
                "matching": "SMLM Challenge 2016: lateral < 250 nm and |dz| < 500 nm",
                **result.challenge,
            },
            "frames": result.frames,
            "rows": result.rows,
            "settings": {
                **settings.to_dict(),
                "ignore_unlabelled": True,
                "truth_intensity_column": truth.intensity_column,
                "intensity_bin_edges": edges_of(rows, "intensity"),
                "z_bin_edges_nm": edges_of(rows, "z"),
            },
            "outputs": list(OUTPUT_FILES),
            "command": command,
        }
    )


def summary_lines(result: ScoreResult, settings: ScoreSettings, folder: Path) -> list[str]:
    """The two lines a command prints: the key scores, and where the files went."""
    s, c = result.scores, result.challenge
    return [
        f"Jaccard {s['jaccard']:.3f} (precision {s['precision']:.3f}, recall {s['recall']:.3f}; "
        f"TP {s['tp']}, FP {s['fp']}, FN {s['fn']} in {result.frames['scored']} frames), "
        f"RMSE {s['rmse_lat_nm']:.1f} nm lateral / {s['rmse_ax_nm']:.1f} nm axial, "
        f"efficiency 3D {s['efficiency_3d']:.1f} % (matching < {settings.matching_nm:g} nm; "
        f"SMLM-challenge rule: Jaccard {c['jaccard']:.3f}, efficiency 3D {c['efficiency_3d']:.1f} %)",
        f"wrote {', '.join(OUTPUT_FILES)} to {folder}",
    ]


def write_outputs(
    folder: Path,
    record: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    figure: Any,
    overwrite: bool,
) -> list[Path]:
    """Write score.png, per_bin.csv and score.json (last: a folder with score.json holds a whole result),
    each atomically; an existing file is replaced only with ``overwrite``."""
    import json

    from dstorm3d.utils.files import atomic_write

    return [
        atomic_write(
            folder / FIGURE_FILE, lambda p: figure.savefig(p, format="png", dpi=110), overwrite=overwrite
        ),
        atomic_write(folder / BINS_FILE, lambda p: write_bins_csv(rows, p), overwrite=overwrite),
        atomic_write(
            folder / SCORE_FILE,
            lambda p: p.write_text(json.dumps(record, indent=2) + "\n"),
            overwrite=overwrite,
        ),
    ]


def write_bins_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """per_bin.csv (:data:`BIN_COLUMNS`): floats in full precision, ``nan`` where undefined."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(BIN_COLUMNS)
        for row in rows:
            writer.writerow(
                [
                    "nan" if isinstance(v, float) and math.isnan(v) else v
                    for v in (row[c] for c in BIN_COLUMNS)
                ]
            )


def _summary_title(result: ScoreResult, settings: ScoreSettings, locs: Table, truth: Table) -> str:
    s = result.scores
    return (
        f"{locs.path.name} vs {truth.path.name}: Jaccard {s['jaccard']:.3f}, precision {s['precision']:.3f}, "
        f"recall {s['recall']:.3f}, efficiency 3D {s['efficiency_3d']:.1f} %\n"
        f"TP {s['tp']}, FP {s['fp']}, FN {s['fn']} (Hungarian matching, 3D distance "
        f"< {settings.matching_nm:g} nm"
        + (
            f"; truth ≤ {settings.min_photons:g} photons not ground truth)"
            if settings.min_photons is not None
            else ")"
        )
    )


def _empty_panel(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _recall_panel(ax: Any, rows: Sequence[Mapping[str, Any]], xlabel: str, empty: str) -> None:
    if not rows:
        _empty_panel(ax, empty)
    else:
        low = np.array([r["low"] for r in rows])
        high = np.array([r["high"] for r in rows])
        recall = np.array([r["recall"] for r in rows], dtype=np.float64)
        centre = 0.5 * (low + high)
        ax.errorbar(centre, recall, xerr=0.5 * (high - low), fmt="o-", color="tab:blue", capsize=2)
        for x, y, r in zip(centre, recall, rows):
            if np.isfinite(y):
                ax.annotate(
                    f"n={r['truths']}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=7,
                )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("recall (fraction of ground truth found)")
    ax.set_ylim(-0.05, 1.1)
    ax.grid(alpha=0.3)


def score_figure(
    result: ScoreResult,
    rows: Sequence[Mapping[str, Any]],
    settings: ScoreSettings,
    locs: Table,
    truth: Table,
) -> Any:
    """The lab-meeting figure (a matplotlib ``Figure``): recall vs intensity, recall vs z, RMSE vs z and
    the histograms of dx, dy, dz (nm) of the matched pairs with the RMSEs."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11.0, 8.0), layout="constrained")
    (a, b), (c, d) = figure.subplots(2, 2)
    intensity_rows = [r for r in rows if r["quantity"] == "intensity"]
    z_rows = [r for r in rows if r["quantity"] == "z"]
    unit = truth.intensity_unit
    no_truth = "no ground truth" if result.rows["truth_labelled"] == 0 else "no intensity column in the truth"
    signal = "photons" if unit == "photon" else unit
    _recall_panel(a, intensity_rows, f"true signal per emitter ({signal})", no_truth)
    a.set_title("recall vs brightness")
    if settings.min_photons is not None and intensity_rows:
        a.axvline(settings.min_photons, color="grey", ls="--", lw=1, label="min_photons")
        a.legend(fontsize=8, loc="lower right")
    _recall_panel(b, z_rows, "true z (nm above the coverslip)", "no ground truth")
    b.set_title("recall vs depth")

    c.set_title("RMSE vs depth (matched pairs)")
    if z_rows and any(r["pairs"] for r in z_rows):
        centre = np.array([0.5 * (r["low"] + r["high"]) for r in z_rows])
        c.plot(centre, [r["rmse_lat_nm"] for r in z_rows], "o-", label="lateral")
        c.plot(centre, [r["rmse_ax_nm"] for r in z_rows], "s-", label="axial")
        c.legend(fontsize=8)
        c.set_ylim(bottom=0.0)
        c.set_xlim(b.get_xlim())  # the same depth axis as the recall above
    else:
        _empty_panel(c, "no matched pairs")
    c.set_xlabel("true z (nm above the coverslip)")
    c.set_ylabel("RMSE (nm)")
    c.grid(alpha=0.3)

    errors = result.pair_errors_nm
    s = result.scores
    d.set_title(f"localization errors ({len(errors)} matched pairs)")
    if len(errors):
        reach = settings.matching_nm
        bins = np.linspace(-reach, reach, 41)
        for column, (name, colour) in enumerate(
            zip(("dx", "dy", "dz"), ("tab:blue", "tab:orange", "tab:green"))
        ):
            d.hist(errors[:, column], bins=bins, histtype="step", lw=1.5, color=colour, label=name)
        d.legend(fontsize=8, loc="upper left")
        d.text(
            0.98,
            0.97,
            f"RMSE lateral {s['rmse_lat_nm']:.1f} nm\nRMSE axial {s['rmse_ax_nm']:.1f} nm\n"
            f"RMSE 3D {s['rmse_3d_nm']:.1f} nm\nbias x/y/z {s['bias_x_nm']:+.1f} / {s['bias_y_nm']:+.1f} / "
            f"{s['bias_z_nm']:+.1f} nm",
            transform=d.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
        )
    else:
        _empty_panel(d, "no matched pairs")
    d.set_xlabel("localization − truth (nm)")
    d.set_ylabel("matched pairs")
    figure.suptitle(_summary_title(result, settings, locs, truth), fontsize=10)
    return figure
