"""``python -m dstorm3d.view``: the napari layers built from a small calibrated recording, a localization
table and a render — on napari's GUI-less ViewerModel and on a real ``napari.Viewer(show=False)`` under
``QT_QPA_PLATFORM=offscreen`` — and the one-line errors (napari missing, unknown pixel size, wrong recording).
Tests that need napari skip when it is not installed (``pip install 'dstorm3d[view]'``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_hydra import composed

from dstorm3d.utils.cli import UserInputError
from dstorm3d.utils.tiff import ImageJStackWriter, write_imagej_tiff
from dstorm3d.view import (
    INSTALL_HINT,
    ViewSettings,
    add_layers,
    points_data,
    read_inputs,
    render_geometry,
    view,
)

PIXEL_NM = 110.0
RENDER_NM = 20.0
FRAMES, HEIGHT, WIDTH = 3, 12, 16
#  frame, x nm, y nm, z nm: a point at the centre of pixel (row 2, column 5) of frame 1, one on frame 3
ROWS = [(1, 5.5 * PIXEL_NM, 2.5 * PIXEL_NM, 500.0), (3, 0.0, 0.0, 3500.0), (3, 1100.0, 660.0, 2000.0)]


def write_inputs(folder: Path, calibrated: bool = True) -> dict[str, str]:
    """A (FRAMES, HEIGHT, WIDTH) uint16 recording (µm-calibrated unless told), localizations.csv with
    uncertainty columns, and an RGB render.tif at RENDER_NM."""
    frames = np.arange(FRAMES * HEIGHT * WIDTH, dtype=np.uint16).reshape(FRAMES, HEIGHT, WIDTH)
    recording = folder / "recording.tif"
    with ImageJStackWriter(
        recording, frames.shape, np.uint16, pixel_um=PIXEL_NM / 1e3 if calibrated else None, axes="TYX"
    ) as tiff:
        for frame in frames:
            tiff.write(frame)
    locs = folder / "localizations.csv"
    lines = ['"id","frame","x [nm]","y [nm]","z [nm]","intensity [photon]","confidence","uncertainty_x [nm]"']
    lines += [f"{i + 1},{f},{x},{y},{z},1000,0.9,12.5" for i, (f, x, y, z) in enumerate(ROWS)]
    locs.write_text("\n".join(lines) + "\n")
    render = folder / "render.tif"
    rgb = np.zeros((66, 88, 3), dtype=np.uint8)
    rgb[10, 20] = (255, 0, 0)
    write_imagej_tiff(render, rgb, RENDER_NM / 1e3, "YXS")
    return {"locs": str(locs), "recording": str(recording), "render": str(render)}


def test_points_sit_on_their_pixels_and_frames():
    table = {key: np.array(values, dtype=float) for key, values in zip(("frame", "x", "y", "z"), zip(*ROWS))}
    data = points_data(table, PIXEL_NM)
    # napari draws pixel centres at whole coordinates: the centre of pixel (2, 5) of frame 1 is (0, 2, 5)
    assert np.allclose(data[0], [0.0, 2.0, 5.0])
    assert np.allclose(data[1], [2.0, -0.5, -0.5])  # the frame's corner
    assert np.allclose(data[2], [2.0, 5.5, 9.5])
    scale, translate = render_geometry(0.02, 0.11)
    assert scale == (0.02, 0.02)
    # render pixel 0 covers [0, 20) nm: its centre 10 nm, i.e. 10 − 55 nm from camera pixel 0's centre
    assert translate == pytest.approx((-0.045, -0.045))


def test_inputs_are_checked_with_one_line_errors(tmp_path):
    paths = write_inputs(tmp_path, calibrated=False)
    with pytest.raises(UserInputError, match="pixel_size_nm=<nm>"):
        read_inputs(ViewSettings.from_config({"locs": paths["locs"], "recording": paths["recording"]}))
    # the infer summary beside the table gives it
    (tmp_path / "summary.json").write_text(
        '{"optical_setup": {"camera_pixel_um": 16.0, "magnification": 100}}'
    )
    inputs = read_inputs(ViewSettings.from_config({"locs": paths["locs"], "recording": paths["recording"]}))
    assert inputs.pixel_nm == pytest.approx(160.0) and "summary.json" in inputs.pixel_source
    with pytest.raises(UserInputError, match="no such file"):
        ViewSettings.from_config({"locs": str(tmp_path / "nothing.csv")})
    with pytest.raises(UserInputError, match="not a matplotlib colormap"):
        ViewSettings.from_config({"locs": paths["locs"], "colormap": "rainbowish"})
    short = tmp_path / "short.tif"
    with ImageJStackWriter(short, (2, HEIGHT, WIDTH), np.uint16, pixel_um=0.11, axes="TYX") as tiff:
        for _ in range(2):
            tiff.write(np.zeros((HEIGHT, WIDTH), np.uint16))
    with pytest.raises(UserInputError, match="reach frame 3 but recording"):
        read_inputs(ViewSettings.from_config({"locs": paths["locs"], "recording": str(short)}))
    bad = tmp_path / "bad.csv"
    bad.write_text('"frame","x [nm]","y [nm]"\n1,2,3\n')
    with pytest.raises(UserInputError, match='no column "z \\[nm\\]"'):
        read_inputs(ViewSettings.from_config({"locs": str(bad), "pixel_size_nm": 100}))


def test_without_napari_the_command_says_how_to_install_it(tmp_path, monkeypatch):
    paths = write_inputs(tmp_path)
    monkeypatch.setitem(sys.modules, "napari", None)  # `import napari` now raises ImportError
    with composed("view.yaml", [f"locs={paths['locs']}"], tmp_path) as cfg:
        with pytest.raises(UserInputError) as caught:
            view(cfg, show=False)
    assert INSTALL_HINT in str(caught.value) and "\n" not in str(caught.value)
    assert INSTALL_HINT == "pip install 'dstorm3d[view]'"


def check_layers(viewer, paths: dict[str, str]) -> None:
    """The three layers with their data, scales (µm) and z colours."""
    from matplotlib import colormaps

    assert [layer.name for layer in viewer.layers] == ["recording", "render", "localizations"]
    recording, render, points = (viewer.layers[name] for name in ("recording", "render", "localizations"))
    assert recording.data.shape == (FRAMES, HEIGHT, WIDTH)
    assert np.asarray(recording.data[2]).ravel()[0] == 2 * HEIGHT * WIDTH  # frame 3, read lazily
    assert np.allclose(recording.scale, [1.0, 0.11, 0.11])
    assert render.rgb and render.data.shape == (66, 88, 3)
    assert np.allclose(render.scale, [0.02, 0.02]) and np.allclose(render.translate, [-0.045, -0.045])
    assert np.allclose(points.scale, [1.0, 0.11, 0.11])
    assert np.allclose(points.data, [[0, 2, 5], [2, -0.5, -0.5], [2, 5.5, 9.5]])
    z = np.array([row[3] for row in ROWS])
    expected = colormaps["turbo"]((z - z.min()) / (z.max() - z.min()))
    # napari's turbo is sampled at control points: within 0.009 of matplotlib's (measured)
    assert np.allclose(points.face_color, expected, atol=0.02)
    assert points.features["uncertainty_x"].tolist() == [12.5] * 3
    assert points.metadata["pixel_size_nm"] == pytest.approx(PIXEL_NM)
    assert "recording.tif" in points.metadata["pixel_size_from"]  # from the TIFF's calibration
    # a point shows on its own frame only
    viewer.dims.set_point(0, 0)
    assert list(points._view_indices) == [0]  # napari's public API has no query of what is drawn
    viewer.dims.set_point(0, 2)
    assert list(points._view_indices) == [1, 2]


def test_layers_on_a_gui_less_viewer(tmp_path):
    pytest.importorskip("napari", reason=f"napari is not installed ({INSTALL_HINT})")
    from napari.components import ViewerModel

    paths = write_inputs(tmp_path)
    settings = ViewSettings.from_config(paths)
    check_layers(add_layers(ViewerModel(), read_inputs(settings), settings), paths)


@pytest.fixture
def x_display(monkeypatch):
    """An X display for OpenGL (napari's image layers query GL even in a hidden window): the session's, or
    an Xvfb started here; skips when there is neither."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    if shutil.which("Xvfb") is None:
        pytest.skip(
            "napari.Viewer needs OpenGL through an X display: no DISPLAY and no Xvfb (apt-get install xvfb)"
        )
    read, write = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as handle:
        number = handle.readline().strip()
    if not number:
        server.kill()
        pytest.skip("Xvfb did not start")
    monkeypatch.setenv("DISPLAY", f":{number}")
    yield f":{number}"
    server.terminate()
    server.wait(timeout=10)


def build_hidden_viewer_and_check(folder: str) -> None:
    """Run in a child process (Qt keeps its X connection until the process ends)."""
    import napari

    from dstorm3d.view import build_viewer

    paths = write_inputs(Path(folder))
    viewer = build_viewer(napari, ViewSettings.from_config(paths), show=False)
    check_layers(viewer, paths)
    assert viewer.scale_bar.visible and viewer.dims.axis_labels == ("frame", "y (µm)", "x (µm)")
    assert str(viewer.layers["localizations"].units[1]) == "micrometer"
    viewer.close()


def test_a_hidden_napari_viewer_offscreen(tmp_path, x_display):
    pytest.importorskip("napari", reason=f"napari is not installed ({INSTALL_HINT})")
    tests = Path(__file__).resolve().parent
    code = (
        f"import sys; sys.path[:0] = [{str(tests)!r}]; import test_view; "
        "test_view.build_hidden_viewer_and_check(sys.argv[1])"
    )
    environment = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "DISPLAY": x_display}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
