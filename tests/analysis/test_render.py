"""The Gaussian render: spot widths follow each localization's precision, the density counts
localizations, the colour is the z, the TIFFs are calibrated in µm — and a sparse recording (the black
infer render of issue 18) gives a visible image."""

from __future__ import annotations

import numpy as np
import pytest

from dstorm3d.analysis.render import (
    RenderSettings,
    gaussian_density,
    render_localizations,
    render_png_figure,
    render_tiffs,
)
from dstorm3d.inference.outputs import super_resolution_render
from dstorm3d.utils.files import atomic_write
from dstorm3d.utils.tiff import read_tiff_calibration

PIXEL = 10.0


def spot_width_nm(image: np.ndarray, pixel_nm: float) -> float:
    """Standard deviation (nm) of an image's intensity along x, about its centroid."""
    x = (np.arange(image.shape[1]) + 0.5) * pixel_nm
    profile = image.sum(axis=0) / image.sum()
    centre = (profile * x).sum()
    return float(np.sqrt((profile * (x - centre) ** 2).sum()))


@pytest.mark.parametrize("sigma_nm", [20.0, 60.0])
def test_each_spot_is_as_wide_as_its_precision(sigma_nm):
    xy = np.array([[1005.0, 1005.0]])  # the centre of pixel (100, 100)
    image = gaussian_density(xy, np.array([sigma_nm]), (201, 201), PIXEL)
    assert image.sum() == pytest.approx(1.0, rel=1e-4)  # one localization per unit of density
    # Measured: 19.5 and 61.1 nm, the σ groups' 1.1^7 = 1.95 px and 1.1^19 = 6.12 px (steps of 10 %).
    assert spot_width_nm(image, PIXEL) == pytest.approx(sigma_nm, rel=0.05)


def test_the_density_counts_localizations_and_the_colour_is_z(sim):
    locs = sim.table([(1, 500, 500, 100, 1), (1, 1500, 500, 900, 1), (2, 1000, 1500, 500, 1)])
    locs.precision_nm[2, :2] = 40.0
    render = render_localizations(
        locs, (2000.0, 2000.0), RenderSettings(pixel_nm=PIXEL, z_range_nm=(100, 900))
    )
    assert render.density.sum() == pytest.approx(3.0, rel=1e-4)
    assert render.density.shape == (200, 200) and render.rgb.shape == (200, 200, 3)
    for x, y, z in locs.xyz_nm:
        assert render.mean_z_nm[int(y // PIXEL), int(x // PIXEL)] == pytest.approx(z, abs=1e-3)
    blue_end, red_end = render.rgb[50, 50], render.rgb[50, 150]  # turbo: z 100 → dark blue, 900 → red
    assert blue_end[2] > blue_end[0] and red_end[0] > red_end[2]
    wide = render.density[150, 100]
    assert wide < render.density[50, 50] / 3  # the 40 nm spot: a quarter of the 10 nm peak height or less


def test_a_sparse_recording_gives_a_visible_image(sim):
    """124 localizations in a 54 × 36.5 µm field at 20 nm pixels (2706 × 1826 px): infer's histogram render
    lights 124 pixels (the black render.png of the issue); the Gaussian render must be visible."""
    rng = np.random.default_rng(3)
    rows = [(1, x, y, z, 1000.0) for x, y, z in rng.uniform([500, 500, 2000], [53500, 36000, 6000], (124, 3))]
    locs = sim.table(rows, precision=(20.0, 20.0, 50.0))
    field = (2706 * 20.0, 1826 * 20.0)
    histogram_rgb, counts, _ = super_resolution_render(*locs.xyz_nm.T, field, 20.0, (2000.0, 6000.0))
    render = render_localizations(locs, field, RenderSettings(pixel_nm=20.0))
    brightness = render.rgb.max(axis=2) / 255.0
    histogram_lit = int((counts > 0).sum())
    gaussian_lit = int((brightness > 0.1).sum())
    # Measured: 124 lit pixels in the histogram; 1,516 pixels brighter than 10 % in the Gaussian render
    # (0.07 % of the image), and the localizations' own pixels at brightness 0.95 (median; 5th percentile
    # 0.50: a localization near a pixel corner): auto contrast takes the 99.5th percentile of lit pixels.
    assert histogram_lit == 124 and gaussian_lit > 10 * histogram_lit
    centres = brightness[(locs.xyz_nm[:, 1] // 20).astype(int), (locs.xyz_nm[:, 0] // 20).astype(int)]
    assert np.median(centres) > 0.85, np.percentile(centres, [5, 50, 95])
    assert render.record()["lit_pixel_fraction"] > 5e-4


def test_render_tiffs_are_calibrated_in_micrometres(sim, tmp_path):
    locs = sim.table([(1, 500, 500, 100, 1), (1, 1500, 700, 900, 1)])
    render = render_localizations(locs, (2000.0, 1000.0), RenderSettings(pixel_nm=15.0))
    for name, write in render_tiffs(render, {"locs": "t.csv"}).items():
        atomic_write(tmp_path / name, write)
    rgb = read_tiff_calibration(tmp_path / "render.tif")
    assert rgb.unit == "micron" and rgb.pixel_size == pytest.approx(0.015) and rgb.shape == (67, 134, 3)
    channels = read_tiff_calibration(tmp_path / "render_density_zmean.tif")
    assert channels.axes == "CYX" and channels.labels[1] == "mean z (nm)"
    figure = render_png_figure(render, "two localizations")
    assert "mean z (nm)" in figure.axes[1].get_ylabel()
    figure.savefig(tmp_path / "render.png")
    assert (tmp_path / "render.png").read_bytes()[:4] == b"\x89PNG"
