"""3D single-particle tracking of a localization table: linking with gap closing, mean squared displacements
(MSD) per track and over the ensemble, the diffusion coefficient from the ensemble MSD, and a score of the
linking against a ground truth that names each emitter (the paper's Fig. 6: telomeres tracked in 3D at
10 Hz).

Tables are pandas DataFrames with the ThunderSTORM columns dstorm3d writes (``localizations.csv`` of
``infer.py``, ``ground_truth.csv`` of ``python -m dstorm3d.simulate``): ``"frame"`` (from 1), ``"x [nm]"``,
``"y [nm]"``, ``"z [nm]"``; other columns ride along. Positions are in nm throughout; MSDs in µm², D in µm²/s.

* Linking (:func:`track`): laptrack's LAP tracker (Jaqaman et al., Nat. Methods 2008): each pair of
  consecutive frames is linked by the one-to-one assignment that minimises the summed squared 3D distances,
  links longer than ``max_distance_nm`` forbidden; then track segments are joined end to start across up to
  ``max_gap_frames`` missed frames (same distance cutoff). No splitting or merging.
* MSD (:func:`msd`): per track, the time average over all pairs of its localizations ``lag`` frames apart
  (gaps leave pairs out); the ensemble MSD pools every pair of every track (each pair weighs the same).
* D (:func:`diffusion_coefficient`): ordinary least squares of the ensemble MSD on lag time over the first
  ``fit_lags`` lags, ``MSD(τ) = 2·d·D·τ + offset`` with d = 3. The offset holds the localization error:
  ``offset = 2·(σx² + σy² + σz²) − 2·d·D·t_E/3`` for an exposure t_E (motion blur; 0 for the simulator's
  instantaneous positions), so ``localization_error_nm = √(offset / (2·d))`` is the RMS error per axis when
  there is no motion blur. Few lags are best when the error is comparable to a step (Michalet, Phys. Rev. E
  2010), hence the default of 4.
* Linking score (:func:`linking_score`): see its docstring.

:func:`run_tracking` does all of it and writes ``tracks.csv``, ``msd.csv``, ``tracking.json``,
``tracks_3d.png`` and ``msd.png``, each atomically.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dstorm3d.errors import UserInputError
from dstorm3d.utils.files import atomic_write
from dstorm3d.utils.validate import integer, mapping, number

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FRAME, TRACK_ID, EMITTER_ID, TIME = "frame", "track_id", "emitter_id", "time [s]"
XYZ = ("x [nm]", "y [nm]", "z [nm]")
LAG, LAG_S, MSD_UM2, PAIRS = "lag [frames]", "lag [s]", "msd [µm²]", "pairs"
DIMS = 3
NM2_PER_UM2 = 1e6
TRACKS_FILE, MSD_FILE, SUMMARY_FILE = "tracks.csv", "msd.csv", "tracking.json"
TRACKS_FIGURE, MSD_FIGURE = "tracks_3d.png", "msd.png"
OUTPUT_FILES = (TRACKS_FILE, MSD_FILE, SUMMARY_FILE, TRACKS_FIGURE, MSD_FIGURE)
ESTIMATOR = (
    "ordinary least squares of the ensemble MSD (every pair of every track weighs the same) on lag time "
    "over lags 1..fit_lags: MSD = 2·d·D·τ + offset, d = 3; offset = 2·(σx²+σy²+σz²) − 2·d·D·t_E/3 "
    "(t_E: exposure; 0 without motion blur); localization_error_nm = √(offset/(2·d))"
)


# ---------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class TrackingSettings:
    """Linking and MSD settings.

    max_distance_nm: longest 3D link between consecutive localizations of a track (also across a gap).
    max_gap_frames: frames an emitter may be missed inside a track (0: no gap closing).
    min_length: localizations a track needs to be kept.
    frame_interval_s: time between frames (s).
    max_lag: longest MSD lag (frames).
    fit_lags: lags 1..fit_lags of the ensemble MSD fitted for D.
    """

    max_distance_nm: float = 500.0
    max_gap_frames: int = 2
    min_length: int = 10
    frame_interval_s: float = 0.1
    max_lag: int = 20
    fit_lags: int = 4

    @classmethod
    def from_config(cls, config: Any, key: str = "tracking") -> TrackingSettings:
        """Validate a mapping of these keys (missing keys take the defaults); ``key`` names it in errors."""
        names = [f.name for f in fields(cls)]
        given = mapping(key, config if config is not None else {}, names)
        value = {name: given.get(name, getattr(cls, name)) for name in names}
        settings = cls(
            max_distance_nm=number(f"{key}.max_distance_nm", value["max_distance_nm"], above=0, example=500),
            max_gap_frames=integer(f"{key}.max_gap_frames", value["max_gap_frames"], minimum=0, example=2),
            min_length=integer(f"{key}.min_length", value["min_length"], minimum=2, example=10),
            frame_interval_s=number(
                f"{key}.frame_interval_s", value["frame_interval_s"], above=0, example=0.1
            ),
            max_lag=integer(f"{key}.max_lag", value["max_lag"], minimum=2, example=20),
            fit_lags=integer(f"{key}.fit_lags", value["fit_lags"], minimum=2, example=4),
        )
        if settings.fit_lags > settings.max_lag:
            raise UserInputError(
                f"{key}.fit_lags={settings.fit_lags}: must be ≤ {key}.max_lag={settings.max_lag} (D is "
                f"fitted to the first fit_lags lags of the MSD)"
            )
        return settings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------- tables
def check_table(table: pd.DataFrame, what: str, extra: Sequence[str] = ()) -> None:
    """Refuse a table without the ``frame`` and x/y/z columns (and ``extra``), or with values that are not
    finite numbers or frames that are not whole numbers."""
    needed = (FRAME, *XYZ, *extra)
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise UserInputError(
            f"the {what} table has no column(s) {missing} (its columns: {list(table.columns)}): it needs "
            f"{list(needed)}"
        )
    try:
        values = table[list(needed)].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        raise UserInputError(f"the {what} table has values that are not numbers in {list(needed)}") from None
    if not np.isfinite(values).all():
        raise UserInputError(f"the {what} table has empty or non-finite values in {list(needed)}")
    frames = values[:, 0]
    if not np.array_equal(frames, np.round(frames)):
        raise UserInputError(f"the {what} table's frame column holds non-integer frames")


def table_from_arrays(frame: np.ndarray, xyz_nm: np.ndarray, **columns: np.ndarray) -> pd.DataFrame:
    """A localization table from ``frame`` ``(N,)`` (from 1) and ``xyz_nm`` ``(N, 3)`` (nm), plus any
    ``columns`` ``(N,)`` by name (e.g. ``**{"intensity [photon]": photons}``)."""
    xyz_nm = np.asarray(xyz_nm, dtype=np.float64).reshape(-1, 3)
    data = {FRAME: np.asarray(frame, dtype=np.int64), **dict(zip(XYZ, xyz_nm.T)), **columns}
    return pd.DataFrame(data)


def _positions_nm(table: pd.DataFrame) -> np.ndarray:
    """``(N, 3)`` float64 x, y, z (nm)."""
    return table[list(XYZ)].to_numpy(dtype=np.float64)


def _rows_by_frame(frames: np.ndarray) -> list[np.ndarray]:
    """Row indices of each frame from ``frames.min()`` to ``frames.max()`` (an empty array where none)."""
    first = int(frames.min())
    order = np.argsort(frames, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(frames - first))])
    return [order[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]


# ---------------------------------------------------------------------------------------- linking
def link_labels(
    frames: np.ndarray, xyz_nm: np.ndarray, max_distance_nm: float, max_gap_frames: int
) -> np.ndarray:
    """``(N,)`` int: a track label for each localization (``frames`` ``(N,)`` int, ``xyz_nm`` ``(N, 3)``),
    labels numbered from 0 by first appearance; a localization linked to nothing has a label of its own."""
    import networkx as nx
    from laptrack import LapTrack

    if len(frames) == 0:
        return np.zeros(0, dtype=np.int64)
    rows_by_frame = _rows_by_frame(frames)
    cutoff = max_distance_nm**2  # costs are squared distances (nm²)
    tracker = LapTrack(
        metric="sqeuclidean",
        cutoff=cutoff,
        gap_closing_metric="sqeuclidean",
        gap_closing_cutoff=cutoff if max_gap_frames > 0 else False,
        gap_closing_max_frame_count=max_gap_frames + 1,  # laptrack counts frame differences
        splitting_cutoff=False,
        merging_cutoff=False,
        # ending a track and starting another costs 2·cutoff, more than any admissible link: a link is
        # refused only when a competing assignment is cheaper (laptrack's default, a percentile of the
        # candidates' costs, leaves ~7 % of one-frame gaps of diffusing emitters open)
        track_start_cost=cutoff,
        track_end_cost=cutoff,
        segment_start_cost=cutoff,
        segment_end_cost=cutoff,
    )
    graph = tracker.predict([xyz_nm[rows] for rows in rows_by_frame])
    components = [
        np.array([rows_by_frame[frame][index] for frame, index in nodes])
        for nodes in nx.weakly_connected_components(graph)
    ]
    components.sort(key=lambda rows: (frames[rows].min(), rows.min()))
    labels = np.empty(len(frames), dtype=np.int64)
    for label, rows in enumerate(components):
        labels[rows] = label
    return labels


def track(table: pd.DataFrame, max_distance_nm: float, max_gap_frames: int, min_length: int) -> pd.DataFrame:
    """Link localizations into 3D tracks.

    ``table``: one row per localization with ``frame``, ``x [nm]``, ``y [nm]``, ``z [nm]`` (other columns
    are kept). Returns the localizations of the tracks with at least ``min_length`` of them, with a first
    column ``track_id`` (from 1, in order of each track's first frame), sorted by track and frame; the
    index is reset. See the module docstring for the linking.
    """
    check_table(table, "localizations")
    table = table.drop(columns=[TRACK_ID], errors="ignore").reset_index(drop=True)
    frames = table[FRAME].to_numpy().astype(np.int64)
    labels = link_labels(frames, _positions_nm(table), max_distance_nm, max_gap_frames)
    lengths = np.bincount(labels) if len(labels) else np.zeros(0, dtype=np.int64)
    kept = lengths >= min_length
    new_id = np.cumsum(kept)  # kept labels renumbered from 1 in the same order
    rows = np.flatnonzero(kept[labels]) if len(labels) else np.zeros(0, dtype=np.int64)
    tracks = table.iloc[rows].copy()
    tracks.insert(0, TRACK_ID, new_id[labels[rows]].astype(np.int64))
    return tracks.sort_values([TRACK_ID, FRAME], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------- MSD
def track_squared_displacements(
    frames: np.ndarray, xyz_nm: np.ndarray, max_lag: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sums of squared 3D displacements (nm²) and pair counts, ``(max_lag,)`` each, over all pairs of one
    track's localizations (``frames`` ``(n,)`` distinct ints, ``xyz_nm`` ``(n, 3)``) 1..max_lag frames
    apart."""
    first = int(frames.min())
    grid = np.full((int(frames.max()) - first + 1, 3), np.nan)
    grid[frames - first] = xyz_nm
    sums, counts = np.zeros(max_lag), np.zeros(max_lag, dtype=np.int64)
    for lag in range(1, min(max_lag, len(grid) - 1) + 1):
        squared = np.sum((grid[lag:] - grid[:-lag]) ** 2, axis=1)
        present = np.isfinite(squared)
        sums[lag - 1], counts[lag - 1] = squared[present].sum(), int(present.sum())
    return sums, counts


@dataclass
class MSDCurves:
    """MSD curves: ``per_track`` rows (``track_id``, lag [frames], lag [s], msd [µm²], pairs) for every lag
    with at least one pair, and ``ensemble`` rows (lag [frames], lag [s], msd [µm²] pooled over all pairs,
    pairs, tracks with that lag, ``sd [µm²]``: the s.d. of the per-track MSDs)."""

    per_track: pd.DataFrame
    ensemble: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        """One table for ``msd.csv``: ``curve`` = ``ensemble`` (``track_id`` 0) or ``track``."""
        ensemble = self.ensemble.assign(curve="ensemble", **{TRACK_ID: 0})
        per_track = self.per_track.assign(curve="track")
        columns = ["curve", TRACK_ID, LAG, LAG_S, MSD_UM2, PAIRS, "tracks", "sd [µm²]"]
        return pd.concat([ensemble, per_track], ignore_index=True).reindex(columns=columns)


def msd(tracks: pd.DataFrame, frame_interval_s: float, max_lag: int) -> MSDCurves:
    """Time-averaged MSD of each track and the pooled ensemble MSD for lags 1..max_lag frames (see the
    module docstring); ``tracks`` as :func:`track` returns them."""
    check_table(tracks, "tracks", (TRACK_ID,))
    lags = np.arange(1, max_lag + 1)
    total_sums, total_counts = np.zeros(max_lag), np.zeros(max_lag, dtype=np.int64)
    per_track: list[pd.DataFrame] = []
    frames, xyz_nm = tracks[FRAME].to_numpy().astype(np.int64), _positions_nm(tracks)
    for track_id, rows in tracks.groupby(TRACK_ID, sort=True).indices.items():
        sums, counts = track_squared_displacements(frames[rows], xyz_nm[rows], max_lag)
        total_sums, total_counts = total_sums + sums, total_counts + counts
        present = counts > 0
        per_track.append(
            pd.DataFrame(
                {
                    TRACK_ID: int(track_id),
                    LAG: lags[present],
                    LAG_S: lags[present] * frame_interval_s,
                    MSD_UM2: sums[present] / counts[present] / NM2_PER_UM2,
                    PAIRS: counts[present],
                }
            )
        )
    columns = [TRACK_ID, LAG, LAG_S, MSD_UM2, PAIRS]
    per_track_table = pd.concat(per_track, ignore_index=True) if per_track else pd.DataFrame(columns=columns)
    by_lag = per_track_table.groupby(LAG)[MSD_UM2]
    present = total_counts > 0
    ensemble = pd.DataFrame(
        {
            LAG: lags[present],
            LAG_S: lags[present] * frame_interval_s,
            MSD_UM2: total_sums[present] / total_counts[present] / NM2_PER_UM2,
            PAIRS: total_counts[present],
            "tracks": by_lag.size().reindex(lags[present]).to_numpy(),
            "sd [µm²]": by_lag.std(ddof=1).reindex(lags[present]).to_numpy(),
        }
    )
    return MSDCurves(per_track_table, ensemble)


@dataclass(frozen=True)
class DiffusionFit:
    """``MSD(τ) = 2·dims·D·τ + offset`` fitted to lags 1..fit_lags (NaN where fewer than 2 lags exist)."""

    diffusion_um2_per_s: float
    offset_um2: float
    localization_error_nm: float  # √(offset / (2·dims)); NaN when the offset is ≤ 0
    fit_lags: int
    dims: int = DIMS

    def msd_um2(self, lag_s: np.ndarray) -> np.ndarray:
        """The fitted line at lag times ``lag_s`` (s)."""
        return 2 * self.dims * self.diffusion_um2_per_s * np.asarray(lag_s) + self.offset_um2

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "estimator": ESTIMATOR}


def diffusion_coefficient(curve: pd.DataFrame, fit_lags: int, dims: int = DIMS) -> DiffusionFit:
    """Fit D (µm²/s) and the offset (µm²) to an MSD curve (``lag [frames]``, ``lag [s]``, ``msd [µm²]``
    columns, e.g. :attr:`MSDCurves.ensemble`) by ordinary least squares over lags 1..fit_lags."""
    used = curve[curve[LAG] <= fit_lags]
    if len(used) < 2:
        return DiffusionFit(float("nan"), float("nan"), float("nan"), fit_lags, dims)
    slope, offset = np.polyfit(used[LAG_S].to_numpy(float), used[MSD_UM2].to_numpy(float), 1)
    error_nm = float(np.sqrt(offset / (2 * dims)) * 1e3) if offset > 0 else float("nan")
    return DiffusionFit(float(slope / (2 * dims)), float(offset), error_nm, fit_lags, dims)


def per_track_diffusion(per_track: pd.DataFrame, fit_lags: int) -> pd.DataFrame:
    """``track_id`` and ``D [µm²/s]`` of each track, fitted to its own MSD as
    :func:`diffusion_coefficient` does."""
    rows = [
        (int(track_id), diffusion_coefficient(curve, fit_lags).diffusion_um2_per_s)
        for track_id, curve in per_track.groupby(TRACK_ID, sort=True)
    ]
    return pd.DataFrame(rows, columns=[TRACK_ID, "D [µm²/s]"])


# ---------------------------------------------------------------------------------------- linking score
@dataclass(frozen=True)
class LinkingScore:
    """Counts of :func:`linking_score`; ``accuracy`` = correct / steps, ``completeness`` = true steps
    linked / true steps (NaN where the denominator is 0)."""

    steps: int
    correct: int
    wrong: int
    unmatched: int
    true_steps: int
    true_steps_linked: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.steps if self.steps else float("nan")

    @property
    def completeness(self) -> float:
        return self.true_steps_linked / self.true_steps if self.true_steps else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": self.accuracy, "completeness": self.completeness}


def match_to_truth(tracks: pd.DataFrame, truth: pd.DataFrame, match_nm: float) -> np.ndarray:
    """``(len(tracks),)`` int: the row of ``truth`` each localization of ``tracks`` is matched to (−1: none),
    one-to-one per frame with 3D distance < ``match_nm`` (:func:`dstorm3d.metrics.matching.match_frame`)."""
    from dstorm3d.metrics.matching import match_frame

    truth_row = np.full(len(tracks), -1, dtype=np.int64)
    truth_by_frame = truth.groupby(FRAME).indices
    tracks_xyz_um, truth_xyz_um = _positions_nm(tracks) / 1e3, _positions_nm(truth) / 1e3
    for frame, rows in tracks.groupby(FRAME).indices.items():
        candidates = truth_by_frame.get(frame)
        if candidates is None:
            continue
        match = match_frame(tracks_xyz_um[rows], truth_xyz_um[candidates], threshold_nm=match_nm)
        truth_row[rows[match.pred_idx]] = candidates[match.gt_idx]
    return truth_row


def linking_score(tracks: pd.DataFrame, truth: pd.DataFrame, match_nm: float = 150.0) -> LinkingScore:
    """Score the links of ``tracks`` against a ``truth`` table with an ``emitter_id`` column (a persistent
    emitter id, as ``python -m dstorm3d.simulate`` writes it).

    Each localization of a track is first matched to a true emitter of its frame (:func:`match_to_truth`).
    A *step* is a pair of consecutive localizations of one track (in frame order; a step may span a closed
    gap). A step is *correct* when both ends are matched to true emitters with the same ``emitter_id``,
    *unmatched* when an end has no true emitter (a false localization or one too far from its emitter), and
    *wrong* otherwise (the track jumped between two emitters). ``accuracy`` = correct / steps.

    A *true step* is a pair of consecutive appearances (in frame order, gaps included) of one emitter in
    ``truth``; it is *linked* when the tracks hold the two localizations matched to those appearances as one
    step. ``completeness`` = linked / true steps (missed localizations and short, dropped tracks lower it).
    """
    check_table(tracks, "tracks", (TRACK_ID,))
    check_table(truth, "ground-truth", (EMITTER_ID,))
    tracks = tracks.sort_values([TRACK_ID, FRAME], kind="stable").reset_index(drop=True)
    truth = truth.reset_index(drop=True)
    truth_row = match_to_truth(tracks, truth, match_nm)
    emitter = truth[EMITTER_ID].to_numpy()
    track_ids = tracks[TRACK_ID].to_numpy()
    same_track = track_ids[:-1] == track_ids[1:]
    start, end = truth_row[:-1][same_track], truth_row[1:][same_track]
    matched = (start >= 0) & (end >= 0)
    correct = matched.copy()
    correct[matched] = emitter[start[matched]] == emitter[end[matched]]

    order = np.lexsort((truth[FRAME].to_numpy(), emitter))  # truth by emitter, then frame
    next_row = np.full(len(truth), -1, dtype=np.int64)
    consecutive = emitter[order[:-1]] == emitter[order[1:]]
    next_row[order[:-1][consecutive]] = order[1:][consecutive]
    linked = int(np.sum(next_row[start[correct]] == end[correct]))
    return LinkingScore(
        steps=int(same_track.sum()),
        correct=int(correct.sum()),
        wrong=int(np.sum(matched & ~correct)),
        unmatched=int(np.sum(~matched)),
        true_steps=int(consecutive.sum()),
        true_steps_linked=linked,
    )


# ---------------------------------------------------------------------------------------- figures
def _segments_by_time(tracks: pd.DataFrame, frame_interval_s: float) -> tuple[np.ndarray, np.ndarray]:
    """``(S, 2, 3)`` segments (µm) between consecutive localizations of each track and ``(S,)`` their mean
    times (s, frame 1 at 0)."""
    xyz_um = _positions_nm(tracks) / 1e3
    time_s = (tracks[FRAME].to_numpy(float) - 1) * frame_interval_s
    ids = tracks[TRACK_ID].to_numpy()
    step = np.flatnonzero(ids[:-1] == ids[1:])
    return np.stack([xyz_um[step], xyz_um[step + 1]], axis=1), 0.5 * (time_s[step] + time_s[step + 1])


def tracks_figure(tracks: pd.DataFrame, settings: TrackingSettings) -> Figure:
    """Trajectories coloured by time: a 3D view and the top (x–y) view with a scale bar (µm)."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    from dstorm3d.visualization import add_scale_bar, new_figure

    figure = new_figure(11.0, 5.0)
    ax3d = figure.add_subplot(1, 2, 1, projection="3d")
    ax_xy = figure.add_subplot(1, 2, 2)
    count = tracks[TRACK_ID].nunique()
    figure.suptitle(
        f"{count} tracks (≥ {settings.min_length} localizations, gaps ≤ {settings.max_gap_frames} frames, "
        f"links ≤ {settings.max_distance_nm:g} nm); colour: time"
    )
    if count == 0:
        ax3d.text2D(0.5, 0.5, "no tracks", ha="center", transform=ax3d.transAxes)
        ax_xy.text(0.5, 0.5, "no tracks", ha="center", transform=ax_xy.transAxes)
        return figure
    segments, times = _segments_by_time(tracks, settings.frame_interval_s)
    last_s = (tracks[FRAME].max() - 1) * settings.frame_interval_s
    norm = Normalize(0.0, max(last_s, settings.frame_interval_s))
    lines3d = Line3DCollection(segments, cmap="viridis", norm=norm, linewidths=0.8)
    lines3d.set_array(times)
    ax3d.add_collection3d(lines3d)
    xyz_um = _positions_nm(tracks) / 1e3
    for axis, setter in enumerate((ax3d.set_xlim, ax3d.set_ylim, ax3d.set_zlim)):
        low, high = xyz_um[:, axis].min(), xyz_um[:, axis].max()
        pad = 0.05 * (high - low) + 0.05
        setter(low - pad, high + pad)
    ax3d.invert_yaxis()  # y grows downwards in the image
    ax3d.set(xlabel="x [µm]", ylabel="y [µm]", zlabel="z [µm]", title="3D trajectories")
    lines_xy = LineCollection(segments[:, :, :2], cmap="viridis", norm=norm, linewidths=0.8)
    lines_xy.set_array(times)
    ax_xy.add_collection(lines_xy)
    ax_xy.autoscale()
    ax_xy.set_aspect("equal")
    ax_xy.invert_yaxis()
    ax_xy.set(xlabel="x [µm]", ylabel="y [µm]", title="top view (x–y)")
    width_um = float(np.ptp(xyz_um[:, 0])) or 1.0
    add_scale_bar(ax_xy, 1.0, width_um, colour="black")
    figure.colorbar(lines_xy, ax=[ax3d, ax_xy], shrink=0.8).set_label("time [s]")
    return figure


def msd_figure(curves: MSDCurves, fit: DiffusionFit, settings: TrackingSettings) -> Figure:
    """Per-track MSD curves (grey), the ensemble MSD ± 1 s.d. across tracks and the fitted line, log–log."""
    from dstorm3d.visualization import new_figure

    figure = new_figure(6.5, 5.0)
    ax = figure.add_subplot(1, 1, 1)
    ax.set(xlabel="lag time [s]", ylabel="MSD [µm²]", xscale="log", yscale="log")
    if curves.ensemble.empty:
        ax.text(0.5, 0.5, "no tracks with steps", ha="center", transform=ax.transAxes)
        return figure
    for index, (_, curve) in enumerate(curves.per_track.groupby(TRACK_ID)):
        label = "single tracks" if index == 0 else None
        ax.plot(curve[LAG_S], curve[MSD_UM2], color="0.7", linewidth=0.6, label=label)
    ensemble = curves.ensemble
    lag_s, mean, sd = ensemble[LAG_S], ensemble[MSD_UM2], ensemble["sd [µm²]"].fillna(0.0)
    ax.fill_between(lag_s, np.maximum(mean - sd, mean * 1e-2), mean + sd, color="C0", alpha=0.25, lw=0)
    ax.plot(lag_s, mean, "o-", color="C0", markersize=3, label="ensemble (± 1 s.d. across tracks)")
    if np.isfinite(fit.diffusion_um2_per_s):
        line = fit.msd_um2(lag_s)
        shown = line > 0
        error = "" if np.isnan(fit.localization_error_nm) else f", σ ≈ {fit.localization_error_nm:.0f} nm"
        ax.plot(
            lag_s[shown],
            line[shown],
            "--",
            color="C3",
            label=f"fit lags 1–{fit.fit_lags}: D = {fit.diffusion_um2_per_s:.3g} µm²/s{error}",
        )
    ax.set_title(
        f"MSD of {curves.per_track[TRACK_ID].nunique()} tracks, Δt = {settings.frame_interval_s:g} s"
    )
    ax.legend(fontsize=8, loc="upper left")
    return figure


# ---------------------------------------------------------------------------------------- the whole analysis
@dataclass
class TrackingResult:
    """What :func:`run_tracking` computed and wrote."""

    tracks: pd.DataFrame
    curves: MSDCurves
    fit: DiffusionFit
    summary: dict[str, Any]
    files: dict[str, Path]


def tracking_summary(
    table: pd.DataFrame,
    tracks: pd.DataFrame,
    curves: MSDCurves,
    fit: DiffusionFit,
    settings: TrackingSettings,
) -> dict[str, Any]:
    """``tracking.json``: settings, counts, the D fit and the spread of per-track D."""
    from dstorm3d.evaluation.report import json_safe

    lengths = tracks.groupby(TRACK_ID).size().to_numpy()
    per_track_d = per_track_diffusion(curves.per_track, settings.fit_lags)["D [µm²/s]"].dropna().to_numpy()
    quartiles = np.percentile(per_track_d, [25, 50, 75]) if len(per_track_d) else [np.nan] * 3
    return json_safe(
        {
            "settings": settings.to_dict(),
            "counts": {
                "localizations": len(table),
                "frames": int(table[FRAME].nunique()) if len(table) else 0,
                "tracks": len(lengths),
                "localizations_in_tracks": int(lengths.sum()),
                "steps": int(lengths.sum() - len(lengths)),
                "track_length_mean": float(lengths.mean()) if len(lengths) else np.nan,
                "track_length_max": int(lengths.max()) if len(lengths) else 0,
            },
            "diffusion": fit.to_dict(),
            "per_track_diffusion_um2_per_s": {
                "tracks": len(per_track_d),
                "q25": quartiles[0],
                "median": quartiles[1],
                "q75": quartiles[2],
            },
            "units": {"positions": "nm", "msd": "µm²", "D": "µm²/s", "time": "s (frame 1 at 0)"},
            "files": list(OUTPUT_FILES),
        }
    )


def analyse_tracks(table: pd.DataFrame, settings: TrackingSettings) -> TrackingResult:
    """Track ``table`` (localizations: frame, x/y/z [nm]) and compute the MSDs and D; nothing is written
    (``files`` is empty; :func:`tracking_writers` gives the writers)."""
    tracks = track(table, settings.max_distance_nm, settings.max_gap_frames, settings.min_length)
    tracks = tracks.drop(columns=[TIME], errors="ignore")
    tracks.insert(2, TIME, (tracks[FRAME].to_numpy(float) - 1) * settings.frame_interval_s)
    curves = msd(tracks, settings.frame_interval_s, settings.max_lag)
    fit = diffusion_coefficient(curves.ensemble, settings.fit_lags)
    summary = tracking_summary(table, tracks, curves, fit, settings)
    return TrackingResult(tracks, curves, fit, summary, {})


def tracking_writers(result: TrackingResult, settings: TrackingSettings) -> dict[str, Callable[[Path], None]]:
    """``{file name: write(path)}`` for :data:`OUTPUT_FILES` of an :func:`analyse_tracks` result."""
    tracks_plot, msd_plot = (
        tracks_figure(result.tracks, settings),
        msd_figure(result.curves, result.fit, settings),
    )
    summary_text = json.dumps(result.summary, indent=2) + "\n"
    return {
        TRACKS_FILE: lambda p: result.tracks.to_csv(p, index=False),
        MSD_FILE: lambda p: result.curves.to_frame().to_csv(p, index=False),
        SUMMARY_FILE: lambda p: p.write_text(summary_text),
        TRACKS_FIGURE: lambda p: tracks_plot.savefig(p, format="png"),
        MSD_FIGURE: lambda p: msd_plot.savefig(p, format="png"),
    }


def run_tracking(
    table: pd.DataFrame, settings: TrackingSettings, out_dir: str | Path, overwrite: bool = False
) -> TrackingResult:
    """:func:`analyse_tracks`, then write :data:`OUTPUT_FILES` into ``out_dir``, each atomically. Existing
    files there are refused before any work (``FileExistsError``) unless ``overwrite``."""
    folder = Path(out_dir)
    existing = [name for name in OUTPUT_FILES if (folder / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{folder / existing[0]} exists; refusing to overwrite it (pass overwrite=true or choose "
            "another out=<folder>)"
        )
    result = analyse_tracks(table, settings)
    for name, write in tracking_writers(result, settings).items():
        atomic_write(folder / name, write, overwrite=True)
        result.files[name] = folder / name
    return result
