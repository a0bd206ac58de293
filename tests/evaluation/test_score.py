"""``python -m dstorm3d.score``: a hand-built truth and localization table whose every score is known exactly
(library in-process), the command in-process, bad tables and settings, and the real CLI in subprocesses.

The tables (nm; photons; frames from 1). Ground truth, with ``min_photons=6000``:

    frame 1: A (1000, 1000,  500) 10000 ph  B (3000, 1000, 1500) 20000 ph  C (5000, 5000, 2500) 4000 ph (dim)
    frame 2: D (2000, 2000, 1000)  8000 ph  E (6000, 2000, 3000) 30000 ph
    frame 3: F (1000, 6000, 3500) 12000 ph
    frame 5: G (4000, 4000, 2000) 15000 ph  (no localizations in frame 5)

Localizations: A + (30, 40, 0), B + (0, 0, -60), C + (10, 0, 20) (on the dim emitter: ignored), D + (-30, 0,
40), one far from everything in frame 2, F + (200, 0, 0) (beyond 150 nm in 3D, within the SMLM challenge's
250 nm lateral), and one in frame 4 (no truth in frame 4).

150 nm: TP A, B, D; FN E, F, G; FP the far one, F + 200, frame 4; 1 ignored → Jaccard 3/9, precision 3/6,
recall 3/6; errors (30, 40, 0), (0, 0, -60), (-30, 0, 40) nm. SMLM rule: F is found too (dx 200).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_hydra import composed

from dstorm3d.errors import UserInputError
from dstorm3d.evaluation.score import (
    BIN_COLUMNS,
    OUTPUT_FILES,
    SCORE_KEYS,
    ScoreSettings,
    bin_edges,
    per_bin,
    read_table,
    score_tables,
)
from dstorm3d.score import score
from dstorm3d.utils.paths import REPO_ROOT

TRUTH_HEADER = ("id", "frame", "x [nm]", "y [nm]", "z [nm]", "intensity [photon]")
LOCS_HEADER = ("id", "frame", "x [nm]", "y [nm]", "z [nm]", "intensity [photon]", "confidence")
TRUTH = [  # frame, x, y, z, photons
    (1, 1000, 1000, 500, 10000),  # A
    (1, 3000, 1000, 1500, 20000),  # B
    (1, 5000, 5000, 2500, 4000),  # C: dim, not ground truth with min_photons=6000
    (2, 2000, 2000, 1000, 8000),  # D
    (2, 6000, 2000, 3000, 30000),  # E: missed
    (3, 1000, 6000, 3500, 12000),  # F: its localization is 200 nm off
    (5, 4000, 4000, 2000, 15000),  # G: a frame without localizations
]
LOCS = [  # frame, x, y, z (listed out of frame order: the reader sorts)
    (4, 500, 500, 500),  # a frame without truth: FP
    (1, 1030, 1040, 500),  # A + (30, 40, 0)
    (1, 3000, 1000, 1440),  # B + (0, 0, -60)
    (1, 5010, 5000, 2520),  # C + (10, 0, 20): on the dim emitter, ignored
    (2, 1970, 2000, 1040),  # D + (-30, 0, 40)
    (2, 8000, 8000, 2000),  # far from everything: FP
    (3, 1200, 6000, 3500),  # F + (200, 0, 0): FP and F an FN at 150 nm; a pair under the SMLM rule
]
SETTINGS = ScoreSettings(
    matching_nm=150.0,
    min_photons=6000.0,
    photon_bins=(6000, 10000, 20000, 40000),
    z_bins=(0, 1000, 2000, 4000),
)
BIN_ARGS = ["min_photons=6000", "photon_bins=[6000,10000,20000,40000]", "z_bins=[0,1000,2000,4000]"]


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> Path:
    lines = [",".join(f'"{name}"' for name in header)]
    lines += [",".join(str(v) for v in (i + 1, *row)) for i, row in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tables(tmp_path) -> tuple[Path, Path]:
    """``(localizations.csv, ground_truth.csv)`` as infer.py and simulate write them."""
    locs = write_csv(tmp_path / "localizations.csv", LOCS_HEADER, [(*r, 5000.0, 0.9) for r in LOCS])
    return locs, write_csv(tmp_path / "ground_truth.csv", TRUTH_HEADER, TRUTH)


def efficiency(jaccard: float, rmse_nm: float, alpha: float) -> float:
    """The SMLM-challenge formula (reference.md §8), written out."""
    return 100.0 - math.sqrt((100.0 - 100.0 * jaccard) ** 2 + (alpha * rmse_nm) ** 2)


def scored(tables: tuple[Path, Path], settings: ScoreSettings = SETTINGS):
    locs, truth = read_table(tables[0], "locs"), read_table(tables[1], "truth")
    return truth, score_tables(locs, truth, settings)


# ---------------------------------------------------------------------------------------- exact scores
def test_hand_built_tables_score_exactly(tables):
    _, result = scored(tables)
    s = result.scores
    assert (s["tp"], s["fp"], s["fn"], s["ignored"]) == (3, 3, 3, 1)
    assert s["jaccard"] == pytest.approx(3 / 9) and s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(0.5)
    rmse_lat, rmse_ax = math.sqrt((2500 + 0 + 900) / 3), math.sqrt((0 + 3600 + 1600) / 3)
    assert s["rmse_lat_nm"] == pytest.approx(rmse_lat, abs=1e-9)
    assert s["rmse_ax_nm"] == pytest.approx(rmse_ax, abs=1e-9)
    assert s["rmse_3d_nm"] == pytest.approx(math.sqrt(8600 / 3), abs=1e-9)
    assert (s["bias_x_nm"], s["bias_y_nm"], s["bias_z_nm"]) == pytest.approx((0.0, 40 / 3, -20 / 3), abs=1e-9)
    e_lat, e_ax = efficiency(3 / 9, rmse_lat, 1.0), efficiency(3 / 9, rmse_ax, 0.5)
    assert s["efficiency_lat"] == pytest.approx(e_lat) and s["efficiency_ax"] == pytest.approx(e_ax)
    assert s["efficiency_3d"] == pytest.approx(0.5 * (e_lat + e_ax))
    assert result.frames == {
        "scored": 5,
        "with_truth": 4,
        "with_localizations": 4,
        "only_in_truth": 1,
        "only_in_localizations": 1,
    }
    assert result.rows == {"localizations": 7, "truth": 7, "truth_labelled": 6, "truth_unlabelled": 1}
    # which truth rows were found (A, B, D) and their errors, in the truth's row order
    assert result.matched.tolist() == [True, True, False, True, False, False, False]
    np.testing.assert_allclose(result.pair_errors_nm, [[30, 40, 0], [0, 0, -60], [-30, 0, 40]], atol=1e-9)


def test_the_smlm_challenge_rule_also_finds_the_200nm_pair(tables):
    _, result = scored(tables)
    c = result.challenge
    assert (c["tp"], c["fp"], c["fn"], c["ignored"]) == (4, 2, 2, 1)
    assert c["jaccard"] == pytest.approx(0.5)
    rmse_lat, rmse_ax = math.sqrt((3400 + 200**2) / 4), math.sqrt(5200 / 4)
    assert c["rmse_lat_nm"] == pytest.approx(rmse_lat, abs=1e-9)
    assert c["efficiency_3d"] == pytest.approx(
        0.5 * (efficiency(0.5, rmse_lat, 1.0) + efficiency(0.5, rmse_ax, 0.5))
    )


def test_without_min_photons_the_dim_emitter_is_ground_truth(tables):
    _, result = scored(tables, ScoreSettings(matching_nm=150.0))
    s = result.scores
    assert (s["tp"], s["fp"], s["fn"], s["ignored"]) == (4, 3, 3, 0)
    assert s["jaccard"] == pytest.approx(4 / 10)
    assert s["rmse_lat_nm"] == pytest.approx(math.sqrt((3400 + 100) / 4), abs=1e-9)


def test_a_wider_matching_radius_takes_the_200nm_pair(tables):
    _, result = scored(tables, ScoreSettings(matching_nm=250.0, min_photons=6000.0))
    assert (result.scores["tp"], result.scores["fp"], result.scores["fn"]) == (4, 2, 2)


def test_recall_and_rmse_per_bin(tables):
    truth, result = scored(tables)
    rows = [{k: r[k] for k in BIN_COLUMNS} for r in per_bin(truth, result, SETTINGS)]
    nan = math.nan
    expected = [  # quantity, unit, low, high, truths, pairs, recall, rmse lateral, rmse axial
        ("intensity", "photon", 6000, 10000, 1, 1, 1.0, 30.0, 40.0),  # D
        ("intensity", "photon", 10000, 20000, 3, 1, 1 / 3, 50.0, 0.0),  # A found; F, G not
        ("intensity", "photon", 20000, 40000, 2, 1, 0.5, 0.0, 60.0),  # B found; E not
        ("z", "nm", 0, 1000, 1, 1, 1.0, 50.0, 0.0),  # A
        ("z", "nm", 1000, 2000, 2, 2, 1.0, math.sqrt(900 / 2), math.sqrt(5200 / 2)),  # D (1000), B
        ("z", "nm", 2000, 4000, 3, 0, 0.0, nan, nan),  # G (2000), E, F (3500: the last bin is closed)
    ]
    assert len(rows) == len(expected)
    for row, values in zip(rows, expected):
        assert [row[k] for k in BIN_COLUMNS[:6]] == list(values[:6])
        np.testing.assert_allclose(
            [row["recall"], row["rmse_lat_nm"], row["rmse_ax_nm"]], values[6:], atol=1e-9, equal_nan=True
        )


def test_default_bins_hold_equal_counts_of_photons_and_equal_widths_of_z():
    np.testing.assert_allclose(bin_edges(np.array([1.0, 2.0, 3.0, 4.0]), 2, quantiles=True), [1.0, 2.5, 4.0])
    np.testing.assert_allclose(bin_edges(np.array([0.0, 1.0, 4.0]), 4, quantiles=False), [0, 1, 2, 3, 4])
    np.testing.assert_allclose(bin_edges(np.array([7.0, 7.0]), 8, quantiles=True), [7.0, 7.0])  # one bin
    assert len(bin_edges(np.zeros(0), 8, quantiles=True)) == 0
    np.testing.assert_allclose(bin_edges(np.zeros(0), (0.0, 5.0), quantiles=True), [0.0, 5.0])


# ---------------------------------------------------------------------------------------- the command
def test_command_writes_the_three_files_and_keeps_them(tables, tmp_path, capsys):
    out = tmp_path / "scores"
    args = [f"locs={tables[0]}", f"truth={tables[1]}", f"out={out}", *BIN_ARGS]
    with composed("score.yaml", args, tmp_path) as cfg:
        record = score(cfg)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)  # no temporary files left
    saved = json.loads((out / "score.json").read_text())
    assert saved == record
    assert saved["locs"] == str(tables[0].resolve()) and saved["truth"] == str(tables[1].resolve())
    assert set(SCORE_KEYS) <= set(saved) and set(SCORE_KEYS) <= set(saved["challenge"])
    assert saved["jaccard"] == pytest.approx(1 / 3) and saved["fn"] == 3
    assert saved["settings"]["matching_nm"] == 150.0 and saved["settings"]["min_photons"] == 6000.0
    assert saved["settings"]["z_bin_edges_nm"] == [0.0, 1000.0, 2000.0, 4000.0]
    lines = (out / "per_bin.csv").read_text().splitlines()
    assert lines[0] == ",".join(BIN_COLUMNS) and len(lines) == 7
    assert lines[-1] == "z,nm,2000.0,4000.0,3,0,0.0,nan,nan"
    assert (out / "score.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and printed[0].startswith("Jaccard 0.333") and str(out) in printed[1]

    before = (out / "score.json").read_bytes()
    with composed("score.yaml", args, tmp_path) as cfg, pytest.raises(UserInputError, match="overwrite=true"):
        score(cfg)
    assert (out / "score.json").read_bytes() == before
    with composed("score.yaml", [*args, "matching_nm=250", "overwrite=true"], tmp_path) as cfg:
        assert score(cfg)["tp"] == 4


def test_the_default_output_folder_is_the_run_folder(tables, tmp_path):
    with composed("score.yaml", [f"locs={tables[0]}", f"truth={tables[1]}"], tmp_path / "run") as cfg:
        record = score(cfg)
    assert all((tmp_path / "run" / name).is_file() for name in OUTPUT_FILES)
    assert record["settings"]["intensity_bin_edges"][0] == 4000.0  # 8 quantile bins of all 7 truths
    assert record["settings"]["photon_bins"] == 8 and record["settings"]["min_photons"] is None


# ---------------------------------------------------------------------------------------- bad input
BAD_TABLES = {  # content → what the one-line error names
    "missing column": ('"frame","x [nm]","y [nm]"\n1,2,3\n', 'no column "z [nm]"'),
    "not a number": (
        '"frame","x [nm]","y [nm]","z [nm]"\n1,2,3,4\n1,2,abc,4\n',
        "\"y [nm]\" has 'abc' in data row 2",
    ),
    "short row": ('"frame","x [nm]","y [nm]","z [nm]"\n1,2,3\n', "data row 1 has 3 values"),
    "frame 0": ('"frame","x [nm]","y [nm]","z [nm]"\n0,2,3,4\n', 'column "frame" has 0 in data row 1'),
    "fractional frame": ('"frame","x [nm]","y [nm]","z [nm]"\n2.5,2,3,4\n', '"frame" has 2.5'),
    "NaN position": ('"frame","x [nm]","y [nm]","z [nm]"\n1,2,3,nan\n', '"z [nm]" has nan in data row 1'),
    "empty file": ("", "is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_tables_are_one_line_errors_naming_file_and_column(case, tmp_path):
    content, expected = BAD_TABLES[case]
    path = tmp_path / "table.csv"
    path.write_text(content)
    with pytest.raises(UserInputError) as error:
        read_table(path, "locs")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"locs={path}") and expected in message, message


def test_a_table_with_a_header_only_is_empty_not_an_error(tmp_path, tables):
    empty = write_csv(tmp_path / "none.csv", LOCS_HEADER, [])
    locs, truth = read_table(empty, "locs"), read_table(tables[1], "truth")
    result = score_tables(locs, truth, SETTINGS)
    assert (result.scores["tp"], result.scores["fp"], result.scores["fn"]) == (0, 0, 6)
    assert result.scores["jaccard"] == 0.0 and math.isnan(result.scores["rmse_lat_nm"])


def test_min_photons_needs_the_truth_intensity_column(tmp_path):
    path = write_csv(tmp_path / "gt.csv", ("id", "frame", "x [nm]", "y [nm]", "z [nm]"), [(1, 0, 0, 0)])
    assert read_table(path, "truth").intensity is None
    with pytest.raises(UserInputError, match='no column "intensity \\[photon\\]".*min_photons=null'):
        read_table(path, "truth", need_intensity=True)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("matching_nm", 0, "matching_nm=0: must be a number > 0"),
        ("min_photons", -1, "min_photons=-1: must be a number ≥ 0 or null"),
        ("photon_bins", 0, "photon_bins=0: must be a whole number ≥ 1"),
        ("z_bins", [3, 2], "z_bins=[3, 2]: edges must be at least two increasing numbers in nm"),
    ],
)
def test_bad_settings_are_refused_before_any_table_is_read(key, value, expected, tmp_path):
    args = ["locs=missing.csv", "truth=missing.csv", f"out={tmp_path / 'out'}", f"{key}={value}"]
    with composed("score.yaml", args, tmp_path) as cfg, pytest.raises(UserInputError) as error:
        score(cfg)
    assert str(error.value).startswith(expected)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- the real CLI
def run_score(args: list[str], workdir: Path, expect: int) -> subprocess.CompletedProcess:
    """``python -m dstorm3d.score`` with its Hydra logs under ``workdir``; asserts the exit code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            "DSTORM3D_LOG_DIR": str(workdir / "logs"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1",
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "dstorm3d.score", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_cli_scores_the_tables(tables, tmp_path):
    result = run_score(
        ["locs=localizations.csv", "truth=ground_truth.csv", "out=scores", *BIN_ARGS], tmp_path, 0
    )
    assert result.stdout.splitlines()[0].startswith(
        "Jaccard 0.333 (precision 0.500, recall 0.500; TP 3, FP 3"
    )
    assert all((tmp_path / "scores" / name).stat().st_size > 0 for name in OUTPUT_FILES)
    saved = json.loads((tmp_path / "scores" / "score.json").read_text())
    assert saved["challenge"]["tp"] == 4 and saved["command"].startswith("python -m dstorm3d.score locs=")


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, args, expected",
    [
        ("missing file", ["locs=nowhere.csv"], "error: locs=nowhere.csv: no such file"),
        ("missing column", ["locs=bad.csv"], 'error: locs=bad.csv has no column "z [nm]"'),
        ("matching_nm=0", ["locs=localizations.csv", "matching_nm=0"], "error: matching_nm=0: must be"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_no_outputs(case, args, expected, tables, tmp_path):
    (tmp_path / "bad.csv").write_text('"id","frame","x [nm]","y [nm]"\n1,1,2,3\n')
    result = run_score([*args, "truth=ground_truth.csv", "out=scores"], tmp_path, 2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert result.stdout.strip() == ""
    out = tmp_path / "scores"
    assert not out.exists() or list(out.iterdir()) == []  # at most the empty folder the write check made
