"""Background images in expected photons per pixel, ``(B, H, W)`` float32 tensors.

With the paper's readout camera one count is one photon, so the paper's "20–150 counts" are 20–150
photons per pixel here. Every function draws its randomness from the optional ``torch.Generator``
(``device`` defaults to the generator's device) and validates its arguments with one-line errors.

* :func:`uniform_background`: one level per frame.
* :func:`super_gaussian_background`: the paper's non-uniform background (telomere setup): a
  flat-topped, possibly elliptic and rotated super-Gaussian blob per frame.
* :func:`cell_like_background`: a smooth Gaussian random field plus soft-edged cell-sized blobs.

:func:`background_from_config` builds a :class:`BackgroundModel` from plain data.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dstorm3d.simulation.camera import smooth_unit_field

Level = float | tuple[float, float]


# ---------------------------------------------------------------------------------------------- helpers
def _device(device: torch.device | str | None, generator: torch.Generator | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def _check_frames(batch: int, shape: Sequence[int]) -> tuple[int, int, int]:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise ValueError(f"background batch must be an integer ≥ 0, got {batch!r}")
    if len(shape) != 2 or any(isinstance(s, bool) or int(s) != s or int(s) < 1 for s in shape):
        raise ValueError(f"background shape must be (H, W) with H, W ≥ 1, got {tuple(shape)}")
    return batch, int(shape[0]), int(shape[1])


def _as_range(
    name: str,
    value: Any,
    minimum: float | None = 0.0,
    maximum: float | None = None,
    strictly_positive: bool = False,
) -> tuple[float, float]:
    """A number (→ (v, v)) or a (lo, hi) pair, validated."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(f"background.{name} must be a number or a (lo, hi) pair, got {list(value)}")
        lo, hi = value
    else:
        lo = hi = value
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f"background.{name} must be a number or a (lo, hi) pair, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"background.{name} must be finite with lo ≤ hi, got {value!r}")
    if minimum is not None and (lo < minimum or (strictly_positive and lo <= minimum)):
        bound = f"> {minimum}" if strictly_positive else f"≥ {minimum}"
        raise ValueError(f"background.{name} must be {bound}, got {value!r}")
    if maximum is not None and hi > maximum:
        raise ValueError(f"background.{name} must be ≤ {maximum}, got {value!r}")
    return lo, hi


def _uniform(
    batch: int,
    bounds: tuple[float, float],
    generator: torch.Generator | None,
    device: torch.device,
    extra: Sequence[int] = (),
) -> Tensor:
    """``(batch, *extra)`` draws from U(lo, hi)."""
    u = torch.rand((batch, *extra), generator=generator, device=device)
    return bounds[0] + (bounds[1] - bounds[0]) * u


def _frame_subrange(
    batch: int, level_range: tuple[float, float], generator: torch.Generator | None, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Per-frame ``[lo_f, hi_f] ⊂ level_range`` (two sorted uniforms), each ``(B, 1, 1)``."""
    pair = _uniform(batch, level_range, generator, device, extra=(2,)).sort(dim=1).values
    return pair[:, 0].view(batch, 1, 1), pair[:, 1].view(batch, 1, 1)


def _rescale(unit_or_raw: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Min–max scale every frame of ``(B, H, W)`` to exactly [lo_f, hi_f] (flat frames: the middle)."""
    fmin = unit_or_raw.amin(dim=(-2, -1), keepdim=True)
    span = unit_or_raw.amax(dim=(-2, -1), keepdim=True) - fmin
    unit = torch.where(
        span > 0, (unit_or_raw - fmin) / span.clamp_min(1e-30), torch.full_like(unit_or_raw, 0.5)
    )
    return lo + (hi - lo) * unit


def _pixel_centres(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Column (x) and row (y) pixel-centre coordinates in px, ``(1, H, W)`` each."""
    y = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    x = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return xx.unsqueeze(0), yy.unsqueeze(0)


def _elliptic_radius2(
    xx: Tensor, yy: Tensor, cx: Tensor, cy: Tensor, major: Tensor, minor: Tensor, angle: Tensor
) -> Tensor:
    """Squared normalised radius ``(u/major)² + (v/minor)²`` of rotated ellipses; parameters ``(B, K, 1, 1)``,
    grids ``(1, 1, H, W)``; returns ``(B, K, H, W)``."""
    dx, dy = xx - cx, yy - cy
    cos, sin = torch.cos(angle), torch.sin(angle)
    u = cos * dx + sin * dy
    v = -sin * dx + cos * dy
    return (u / major) ** 2 + (v / minor) ** 2


# ---------------------------------------------------------------------------------------------- models
def zero_background(
    batch: int,
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """No background: zeros ``(B, H, W)`` (the paper's STORM setup)."""
    b, h, w = _check_frames(batch, shape)
    return torch.zeros(b, h, w, device=_device(device, generator))


def uniform_background(
    batch: int,
    shape: Sequence[int],
    level: Level,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A flat background per frame, ``(B, H, W)`` photons/px.

    ``level``: a number, or a (lo, hi) range from which each frame's level is drawn uniformly.
    """
    b, h, w = _check_frames(batch, shape)
    bounds = _as_range("level", level)
    dev = _device(device, generator)
    levels = _uniform(b, bounds, generator, dev)
    return levels.view(b, 1, 1).expand(b, h, w).contiguous()


def super_gaussian_background(
    batch: int,
    shape: Sequence[int],
    level_range: Level = (20.0, 150.0),
    width_fraction: Level = (0.3, 0.8),
    order: Level = (2.0, 4.0),
    aspect: Level = (0.6, 1.0),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The paper's non-uniform background: one flat-topped super-Gaussian blob per frame, ``(B, H, W)``.

    Per frame: blob ``exp(-(ρ²)^p)`` with ρ² = (u/w)² + (v/(a·w))² in a frame rotated by a random angle,
    centre uniform over the frame, width ``w = width_fraction · max(H, W)`` px, order p ∈ ``order`` (1 is a
    Gaussian, 2–4 flat-topped) and aspect ratio a ∈ ``aspect`` (1 = round); then the frame is scaled to span
    exactly [lo_f, hi_f], a random sub-range of ``level_range`` (photons/px; paper: 20–150). Each range
    parameter may also be a single number.
    """
    b, h, w = _check_frames(batch, shape)
    levels = _as_range("level_range", level_range)
    widths = _as_range("width_fraction", width_fraction, strictly_positive=True)
    orders = _as_range("order", order, strictly_positive=True)
    aspects = _as_range("aspect", aspect, maximum=1.0, strictly_positive=True)
    dev = _device(device, generator)
    lo, hi = _frame_subrange(b, levels, generator, dev)
    params = torch.rand(b, 6, generator=generator, device=dev).view(b, 6, 1, 1, 1)
    cx, cy = params[:, 0] * w, params[:, 1] * h
    major = (widths[0] + (widths[1] - widths[0]) * params[:, 2]) * max(h, w)
    minor = major * (aspects[0] + (aspects[1] - aspects[0]) * params[:, 3])
    p = orders[0] + (orders[1] - orders[0]) * params[:, 4]
    angle = math.pi * params[:, 5]
    xx, yy = _pixel_centres(h, w, dev)
    rho2 = _elliptic_radius2(xx.unsqueeze(0), yy.unsqueeze(0), cx, cy, major, minor, angle)[:, 0]
    blob = torch.exp(-(rho2 ** p[:, 0]))
    return _rescale(blob, lo, hi)


def cell_like_background(
    batch: int,
    shape: Sequence[int],
    level_range: Level = (20.0, 150.0),
    correlation_px: float = 10.0,
    cell_count: Level = (0, 3),
    cell_radius_px: Level = (10.0, 30.0),
    cell_aspect: Level = (0.5, 1.0),
    edge_px: float = 3.0,
    cell_contrast: Level = (0.5, 1.5),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Cell-like background: smooth random field + soft-edged elliptic cells, ``(B, H, W)`` photons/px.

    The field is white noise low-pass filtered with a Gaussian of ``correlation_px`` pixels (scaled to
    [0, 1]); each frame adds a uniform integer number of cells in ``cell_count``, each an ellipse of
    radius ``cell_radius_px`` (aspect ``cell_aspect``, random orientation, centre anywhere in the frame)
    with a logistic edge ``edge_px`` wide and height ``cell_contrast`` (relative to the field's span). The sum
    is scaled per frame to span a random sub-range of ``level_range``.
    """
    b, h, w = _check_frames(batch, shape)
    levels = _as_range("level_range", level_range)
    counts = _as_range("cell_count", cell_count)
    if counts[0] != int(counts[0]) or counts[1] != int(counts[1]):
        raise ValueError(f"background.cell_count must be integers, got {cell_count!r}")
    radii = _as_range("cell_radius_px", cell_radius_px, strictly_positive=True)
    aspects = _as_range("cell_aspect", cell_aspect, maximum=1.0, strictly_positive=True)
    contrasts = _as_range("cell_contrast", cell_contrast)
    edge = _as_range("edge_px", edge_px, strictly_positive=True)[0]
    dev = _device(device, generator)
    lo, hi = _frame_subrange(b, levels, generator, dev)
    total = smooth_unit_field((b, h, w), correlation_px, generator, dev)
    k_max = int(counts[1])
    if k_max > 0:
        n_cells = torch.floor(_uniform(b, (counts[0], counts[1] + 1), generator, dev)).clamp_max(counts[1])
        params = torch.rand(b, k_max, 6, generator=generator, device=dev)
        shape4 = (b, k_max, 1, 1)
        cx, cy = (params[..., 0] * w).view(shape4), (params[..., 1] * h).view(shape4)
        radius = (radii[0] + (radii[1] - radii[0]) * params[..., 2]).view(shape4)
        minor = radius * (aspects[0] + (aspects[1] - aspects[0]) * params[..., 3]).view(shape4)
        height = (contrasts[0] + (contrasts[1] - contrasts[0]) * params[..., 4]).view(shape4)
        angle = (math.pi * params[..., 5]).view(shape4)
        xx, yy = _pixel_centres(h, w, dev)
        rho = torch.sqrt(_elliptic_radius2(xx.unsqueeze(0), yy.unsqueeze(0), cx, cy, radius, minor, angle))
        cells = torch.sigmoid((1.0 - rho) * radius / edge)  # ≈ signed distance to the edge in px / edge
        present = (torch.arange(k_max, device=dev).view(1, k_max) < n_cells.view(b, 1)).view(shape4)
        total = total + (height * cells * present).sum(dim=1)
    return _rescale(total, lo, hi)


# ---------------------------------------------------------------------------------------------- config
BACKGROUNDS: dict[str, Callable[..., Tensor]] = {
    "none": zero_background,
    "uniform": uniform_background,
    "super_gaussian": super_gaussian_background,
    "cell_like": cell_like_background,
}
_CALL_ARGS = ("batch", "shape", "generator", "device")


def _plain(value: Any) -> Any:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class BackgroundModel:
    """A background function with its settings; call it as ``model(batch, (H, W), generator, device)``."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __call__(
        self,
        batch: int,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``(B, H, W)`` background in photons/px."""
        return BACKGROUNDS[self.kind](batch, shape, generator=generator, device=device, **self.params)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: _plain(v) for k, v in self.params.items()}}


def background_from_config(config: Mapping[str, Any]) -> BackgroundModel:
    """A :class:`BackgroundModel` from plain data, e.g. ``{"kind": "uniform", "level": [50, 150]}``.

    Keys are the chosen function's keyword arguments (other than batch, shape, generator, device); the
    settings are validated immediately by drawing one tiny frame with a private generator.
    """
    if not isinstance(config, Mapping):
        raise ValueError(
            f"background config must be a mapping with a 'kind' key, got {type(config).__name__}"
        )
    kind = config.get("kind")
    if kind not in BACKGROUNDS:
        raise ValueError(f"background.kind must be one of {sorted(BACKGROUNDS)}, got {kind!r}")
    signature = inspect.signature(BACKGROUNDS[kind])
    allowed = [name for name in signature.parameters if name not in _CALL_ARGS]
    params = {
        k: (tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v)
        for k, v in config.items()
        if k != "kind"
    }
    for key in params:
        if key not in allowed:
            raise ValueError(f"unknown background key {key!r} for kind {kind!r}; allowed keys: {allowed}")
    for name in allowed:
        if signature.parameters[name].default is inspect.Parameter.empty and name not in params:
            raise ValueError(f"background kind {kind!r} needs the key {name!r}")
    model = BackgroundModel(kind, params)
    model(1, (4, 4), generator=torch.Generator().manual_seed(0))  # validates the settings
    return model
