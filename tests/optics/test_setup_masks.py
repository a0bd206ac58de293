"""Optical setups (validation, presets) and phase masks (built-ins, files, fitting, saving)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path
from scipy.io import savemat

from dstorm3d.optics.masks import (
    MaskError,
    clear_mask,
    fit_mask_to_setup,
    load_phase_mask,
    read_mask_file,
    save_phase_mask,
    support_radius,
    tetrapod_mask,
)
from dstorm3d.optics.setup import OpticalSetup, SetupError, preset, storm_setup, telomere_setup
from dstorm3d.optics.zernike import noll_to_nm, zernike_basis


def phase_fidelity(a: np.ndarray, b: np.ndarray, support: np.ndarray) -> float:
    return float(np.abs(np.mean(np.exp(1j * (a[support] - b[support])))) ** 2)


# ------------------------------------------------------------------------------------------ setups
def test_presets_match_the_paper():
    storm, telomere = storm_setup(), telomere_setup()
    assert storm.pupil_grid == storm.natural_grid() == 203
    assert telomere.pupil_grid == telomere.natural_grid() == 329
    assert storm.pixel_size_um == pytest.approx(0.11)
    assert storm.pupil_radius_px == pytest.approx(1.33 * 203 * 0.11 / 0.67)
    assert preset("psf_learning").z_range_um == (0.0, 5.0)
    assert OpticalSetup.from_dict(storm.to_dict()) == storm


@pytest.mark.parametrize(
    "changes, fragment",
    [
        (dict(na=1.6), "smaller than optics.n_immersion"),
        (dict(magnification=20.0), "does not fit"),
        (dict(z_range_um=(3.0, 1.0)), "z_max > z_min"),
        (dict(z_range_um=(-1.0, 1.0)), "below the coverslip"),
        (dict(wavelength_um=-0.5), "positive number"),
        (dict(aperture="iris"), "'water' or 'objective'"),
        (dict(pupil_grid=8), "too small"),
    ],
)
def test_impossible_setups_raise_a_clear_error(changes, fragment):
    with pytest.raises(SetupError, match=fragment):
        storm_setup(**changes)


def test_window_larger_than_the_dft_period_is_rejected():
    with pytest.raises(SetupError, match="wrap around"):
        storm_setup().check_window(256)
    with pytest.raises(SetupError, match="unknown optical preset"):
        preset("confocal")


# ------------------------------------------------------------------------------------------ Zernike
def test_noll_ordering_and_orthonormality():
    assert [noll_to_nm(j) for j in (1, 2, 3, 4, 5, 6, 11, 22, 28)] == [
        (0, 0),
        (1, 1),
        (1, -1),
        (2, 0),
        (2, -2),
        (2, 2),
        (4, 0),
        (6, 0),
        (6, 6),
    ]
    basis = zernike_basis(list(range(1, 16)), 401, 200.0)
    rho = np.hypot(*np.mgrid[-200:201, -200:201]) / 200.0
    disc = rho < 1
    gram = np.einsum("ip,jp->ij", basis[:, disc], basis[:, disc]) / disc.sum()
    np.testing.assert_allclose(gram, np.eye(15), atol=0.02)


# ------------------------------------------------------------------------------------------ masks
def test_builtin_tetrapod_equals_the_paper_model_mask():
    reference = read_mask_file(shared_path("masks", "mask_tetrapod.mat"))
    ours = tetrapod_mask(telomere_setup())
    support = reference != 0
    assert phase_fidelity(ours, reference, support) >= 0.999
    # and it is not an accident of a weak criterion: a sign flip of one coefficient breaks it
    assert phase_fidelity(-ours, reference, support) < 0.5


def test_paper_masks_load_on_their_own_setups():
    printed = load_phase_mask(shared_path("masks", "mask_tetrapod_printed.mat"), storm_setup())
    learned = load_phase_mask(shared_path("masks", "mask_learned.mat"), telomere_setup())
    assert printed.shape == (203, 203) and learned.shape == (329, 329)
    assert abs(support_radius(printed) - storm_setup().pupil_radius_px) < 1.5


def test_mask_for_another_pupil_is_rejected_or_resampled():
    path = shared_path("masks", "mask_learned.mat")
    with pytest.raises(MaskError, match="resample_mask=true"):
        load_phase_mask(path, storm_setup())
    resampled = load_phase_mask(path, storm_setup(), resample=True)
    assert resampled.shape == (203, 203)
    assert abs(support_radius(resampled) - storm_setup().pupil_radius_px) < 1.5
    # resampling the model Tetrapod from the 329 grid reproduces the built-in one on the 203 grid
    tetra = fit_mask_to_setup(tetrapod_mask(telomere_setup()), storm_setup(), resample=True)
    target = tetrapod_mask(storm_setup())
    assert phase_fidelity(tetra, target, np.hypot(*np.mgrid[-101:102, -101:102]) < 42) > 0.99


def test_same_scale_masks_are_cropped_or_padded():
    setup = storm_setup()
    mask = tetrapod_mask(setup)
    padded = np.pad(mask, 20)
    np.testing.assert_array_equal(fit_mask_to_setup(padded, setup), mask)


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".mat"])
def test_save_and_reload_is_bit_identical(tmp_path, suffix):
    setup = storm_setup()
    mask = tetrapod_mask(setup) + 0.123456789
    mask[~(np.hypot(*np.mgrid[-101:102, -101:102]) < 44)] = 0.0
    path = save_phase_mask(mask, tmp_path / f"mask{suffix}", setup=setup)
    np.testing.assert_array_equal(read_mask_file(path), mask)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_phase_mask(mask, path)
    save_phase_mask(clear_mask(setup), path, overwrite=True)
    assert not read_mask_file(path).any()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_bad_mask_files_give_one_line_errors(tmp_path):
    with pytest.raises(MaskError, match="not found"):
        read_mask_file(tmp_path / "missing.npy")
    np.save(tmp_path / "cube.npy", np.zeros((3, 4, 5)))
    with pytest.raises(MaskError, match="square 2-D"):
        read_mask_file(tmp_path / "cube.npy")
    savemat(tmp_path / "two.mat", {"a": np.zeros((5, 5)), "b": np.ones((5, 5))})
    with pytest.raises(MaskError, match="variable=<name>"):
        read_mask_file(tmp_path / "two.mat")
    assert read_mask_file(tmp_path / "two.mat", variable="b").sum() == 25
    nan = np.zeros((5, 5))
    nan[2, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(MaskError, match="NaN"):
        read_mask_file(tmp_path / "nan.npy")
    (tmp_path / "mask.png").write_bytes(b"x")
    with pytest.raises(MaskError, match="unsupported"):
        read_mask_file(tmp_path / "mask.png")
