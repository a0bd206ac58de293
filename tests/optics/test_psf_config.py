"""The PSF model of an ``optics`` config (:func:`psf_from_config`): presets, setups without a 4f system,
the pixel size at the sample, and PSF calibration files (``optics.pupil``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_hydra import composed

from dstorm3d.errors import UserInputError
from dstorm3d.optics.config import check_optics, psf_from_config, setup_from_config
from dstorm3d.optics.masks import MaskError, load_phase_mask, mask_sample_um, tetrapod_mask
from dstorm3d.optics.psf_model import PSFFileError, ScalarPupilPSF, save_psf
from dstorm3d.optics.pupil import PupilModel
from dstorm3d.optics.setup import (
    APERTURE_MARGIN,
    OpticalSetup,
    SetupError,
    automatic_pupil_grid,
    is_5_smooth,
    storm_setup,
    telomere_setup,
)
from dstorm3d.optics.show import describe_mask_source
from dstorm3d.optics.zernike import pupil_polar_grid

WIDEFIELD = dict(
    wavelength_um=0.66,
    na=1.49,
    n_immersion=1.518,
    n_sample=1.33,
    pixel_size_um=0.1,
    nfp_um=0.6,
    z_range_um=[0.0, 1.2],
)


def optics_config(preset: str, workdir, *overrides: str) -> dict:
    """The ``optics`` group of a preset as the commands compose it (Hydra defaults applied)."""
    from omegaconf import OmegaConf

    with composed("show.yaml", [f"optics={preset}", *overrides], workdir) as cfg:
        return OmegaConf.to_container(cfg.optics, resolve=True)


def calibration(setup: OpticalSetup, blur: float = 0.8) -> ScalarPupilPSF:
    """A calibrated-looking model: the Tetrapod with an apodisation and a blur."""
    rho, _ = pupil_polar_grid(setup.pupil_grid, setup.pupil_radius_px)
    return ScalarPupilPSF(setup, tetrapod_mask(setup), np.exp(-0.5 * rho**2), blur, label="beads 2025-01")


# ---------------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize(
    "preset, setup, grid", [("storm", storm_setup(), 203), ("telomere", telomere_setup(), 329)]
)
def test_the_paper_presets_render_bit_for_bit_as_before(preset, setup, grid, tmp_path):
    """The presets' PSF model is the scalar pupil of their setup and Tetrapod, rendered exactly as the
    PupilModel the code built before the PSF model (bit-identical, float32 and float64)."""
    model = psf_from_config(optics_config(preset, tmp_path))
    assert model.setup == setup and model.setup.pupil_grid == grid and model.setup.has_4f
    assert model.amplitude is None and model.blur_sigma_px == 0.0 and model.label == "tetrapod"
    z = np.linspace(*setup.z_range_um, 4)
    for dtype in (torch.float32, torch.float64):
        before = PupilModel(setup, tetrapod_mask(setup), dtype=dtype).psf_zstack(z, 33)
        assert torch.equal(model.pupil_model(dtype).psf_zstack(z, 33), before)
    assert torch.equal(
        model.zstack(z, 33), PupilModel(setup, tetrapod_mask(setup), dtype=torch.float64).psf_zstack(z, 33)
    )


# ---------------------------------------------------------------------------------------------- no 4f system
def test_a_microscope_without_a_4f_system_gets_an_automatic_pupil_grid():
    """NA 1.49, λ 0.66 µm, 100 nm pixels: N = 128 (≥ 128, 5-smooth, the aperture box K = 53 with a margin);
    a command rendering 137 px at once (a 121-px frame + filter margins) gets 144."""
    setup = OpticalSetup.from_dict(WIDEFIELD)
    assert not setup.has_4f and setup.pupil_grid == 128 and setup.mask_scale is None
    assert mask_sample_um(setup) is None
    assert 2 * int(np.ceil(setup.pupil_radius_px)) + 1 + 2 * APERTURE_MARGIN <= setup.pupil_grid
    assert (
        setup_from_config({**WIDEFIELD, "pupil_grid": None, "mask": "clear"}, window_px=137).pupil_grid == 144
    )
    assert (
        setup_from_config({**WIDEFIELD, "pupil_grid": 100, "mask": "clear"}, window_px=137).pupil_grid == 100
    )
    for window in (1, 129, 250, 601):
        n = automatic_pupil_grid(0.66, 1.33, 0.1, window)
        assert is_5_smooth(n) and n >= max(128, window)
        assert not any(is_5_smooth(m) for m in range(max(128, window), n))
    with pytest.raises(SetupError, match="Nyquist"):
        OpticalSetup.from_dict({**WIDEFIELD, "pixel_size_um": 0.26})
    camera = {k: v for k, v in WIDEFIELD.items() if k != "pixel_size_um"}
    with pytest.raises(SetupError, match="needs both"):
        OpticalSetup.from_dict({**camera, "camera_pixel_um": 6.5, "magnification": 65.0, "f4f_mm": 100.0})


def test_the_pixel_size_at_the_sample_stands_for_camera_pixel_and_magnification():
    setup = OpticalSetup.from_dict(WIDEFIELD)
    assert setup.camera_pixel_um == 0.1 and setup.magnification == 1.0 and setup.pixel_size_um == 0.1
    agreeing = {**storm_setup().to_dict(), "pixel_size_um": 0.11}
    assert OpticalSetup.from_dict(agreeing) == storm_setup()
    with pytest.raises(SetupError, match="contradicts"):
        OpticalSetup.from_dict({**storm_setup().to_dict(), "pixel_size_um": 0.1})
    with pytest.raises(SetupError, match="physical pixel"):
        OpticalSetup.from_dict(
            {**storm_setup().to_dict(), "camera_pixel_um": None, "magnification": None, "pixel_size_um": 0.11}
        )


def test_without_a_4f_system_a_mask_file_must_be_on_the_pupil_grid(tmp_path):
    setup = OpticalSetup.from_dict(WIDEFIELD)
    on_grid = tetrapod_mask(setup)
    np.save(tmp_path / "on_grid.npy", on_grid)
    np.testing.assert_array_equal(load_phase_mask(tmp_path / "on_grid.npy", setup), on_grid)
    np.save(tmp_path / "padded.npy", np.pad(on_grid, 10))
    with pytest.raises(MaskError, match="no 4f system"):
        load_phase_mask(tmp_path / "padded.npy", setup, resample=True)
    other = tetrapod_mask(OpticalSetup.from_dict({**WIDEFIELD, "pixel_size_um": 0.08, "pupil_grid": 128}))
    np.save(tmp_path / "other_scale.npy", other)
    with pytest.raises(MaskError, match="not resampled"):
        load_phase_mask(tmp_path / "other_scale.npy", setup, resample=True)


# ---------------------------------------------------------------------------------------------- pupil files
@pytest.fixture
def storm_file(tmp_path):
    """A calibration of the STORM setup on a 96-sample grid, z 1–2 µm."""
    model = calibration(storm_setup(pupil_grid=96, z_range_um=(1.0, 2.0)))
    return model, save_psf(tmp_path / "storm.npz", model, metadata={"beads": 9})


def test_a_pupil_file_that_agrees_with_the_config_gives_its_whole_model(storm_file, tmp_path):
    model, path = storm_file
    optics = optics_config(
        "storm", tmp_path, "optics.pupil_grid=96", f"optics.pupil={path}", "optics.z_range_um=[0.5,3.0]"
    )
    psf = psf_from_config(optics)
    assert psf.to_dict()["phase"] == model.to_dict()["phase"] and psf.blur_sigma_px == 0.8
    np.testing.assert_array_equal(psf.amplitude, model.amplitude)
    assert psf.label == "beads 2025-01" and psf.setup.z_range_um == (0.5, 3.0)  # the config's axial range
    assert psf.setup == model.setup.replace(z_range_um=(0.5, 3.0))
    assert setup_from_config(optics) == psf.setup
    assert describe_mask_source(optics) == {"kind": "pupil file", "path": str(path.resolve())}


def test_optics_calibrated_takes_every_field_from_the_file(tmp_path):
    model = calibration(OpticalSetup.from_dict({**WIDEFIELD, "name": "astigmatic"}))
    path = save_psf(tmp_path / "widefield.npz", model)
    psf = psf_from_config(optics_config("calibrated", tmp_path, f"optics.pupil={path}"))
    assert psf.to_dict() == model.to_dict()


def test_a_pupil_file_that_disagrees_with_the_config_is_refused_naming_the_fields(storm_file, tmp_path):
    _, path = storm_file
    optics = optics_config("storm", tmp_path, f"optics.pupil={path}", "optics.na=1.4")
    with pytest.raises(
        PSFFileError,
        match=r"with na = 1.45, pupil_grid = 96.*says na = 1.4, pupil_grid = 203.*optics=calibrated",
    ):
        psf_from_config(optics)
    model = calibration(OpticalSetup.from_dict(WIDEFIELD))
    other = save_psf(tmp_path / "widefield.npz", model)
    with pytest.raises(PSFFileError, match=r"pixel size at the sample \(µm\) = 0.1.*= 0.11"):
        psf_from_config(
            optics_config("calibrated", tmp_path, f"optics.pupil={other}", "optics.pixel_size_um=0.11")
        )


@pytest.mark.parametrize(
    "preset, overrides, message",
    [
        ("storm_printed", [], "both give the pupil phase"),
        ("storm", ["optics.mask=/some/mask.npy"], "both give the pupil phase"),
        ("storm", ["optics.mask_variable=phase"], "mask_variable"),
        ("storm", ["optics.resample_mask=true"], "mask_variable and optics.resample_mask"),
    ],
)
def test_a_pupil_file_with_a_mask_file_or_its_options_is_refused(
    storm_file, tmp_path, preset, overrides, message
):
    _, path = storm_file
    optics = optics_config(preset, tmp_path, *overrides, f"optics.pupil={path}")
    with pytest.raises(UserInputError, match=message):
        check_optics(optics)


@pytest.mark.parametrize(
    "pupil, message",
    [("missing.npz", "no such file"), ("mask.npy", r"must be a \.npz file"), ("", "path of a .npz file")],
)
def test_bad_pupil_settings_are_one_line_errors_before_anything_is_read(tmp_path, pupil, message):
    (tmp_path / "mask.npy").write_bytes(b"not read")
    optics = {**storm_setup().to_dict(), "mask": "tetrapod", "pupil": str(tmp_path / pupil) if pupil else ""}
    with pytest.raises(UserInputError, match=message):
        psf_from_config(optics)
    with pytest.raises(UserInputError, match=r"unknown key\(s\) \['pupil_file'\]"):
        check_optics({**storm_setup().to_dict(), "mask": "clear", "pupil_file": "x.npz"})
    with pytest.raises(UserInputError, match="optics.pupil=<file.npz>"):
        psf_from_config({**storm_setup().to_dict(), "mask": None, "pupil": None})


def test_a_file_that_is_no_psf_file_is_one_line(tmp_path):
    np.savez(tmp_path / "other.npz", data=np.zeros(3))
    with pytest.raises(PSFFileError, match="not a dstorm3d PSF file"):
        psf_from_config({"mask": None, "pupil": str(tmp_path / "other.npz")})
