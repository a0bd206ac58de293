"""Shot noise and camera models: expected photons per pixel in, camera counts (ADU) out, and back.

Every model maps an expected image ``mu_photons`` (signal + background, photons per pixel, any shape;
frames are ``(B, H, W)`` or ``(H, W)``) to a noisy camera reading with ``sample`` and maps a reading back
to photons with ``to_photons``. ``to_photons`` inverts the *expectation* (E[to_photons(sample(μ))] = μ),
not a single noisy draw.

Randomness comes only from the optional ``torch.Generator`` passed in, which must live on the input's
device; without one, torch's global generator is used. ``differentiable=True`` replaces every discrete
or non-smooth step by a reparameterised Gaussian with the same mean and variance, so gradients flow to
``mu_photons`` (used for PSF learning).

Models (reference.md §4):

* :class:`IdealCamera`: Poisson only, output in photons.
* :class:`ReadoutCamera`: the paper's STORM model: Poisson, + baseline, + Gaussian read noise
  (1 count = 1 photon).
* :class:`EMCCD`: Poisson(QE·μ + spurious) e⁻ → Gamma EM register → read noise → ADC (floor) → baseline.
* :class:`SCMOS`: per-pixel offset, gain and read-noise variance maps.

:func:`camera_from_config` builds any of them from plain data (``{"kind": "emccd", ...}``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor

from dstorm3d.utils.validate import is_number

Range = tuple[float, float]
#: A camera parameter: a number, a ``(lo, hi)`` range drawn uniformly per frame, or a tensor that
#: broadcasts against the frames (``(H, W)`` per-pixel map, ``(B, 1, 1)`` per frame, ``(B, H, W)``).
Param = float | Range | Tensor

_SQRT_FLOOR = 1e-12  # smallest argument given to sqrt in differentiable mode (keeps gradients finite)


# ---------------------------------------------------------------------------------------------- helpers
def _as_float_tensor(x: Tensor | float) -> Tensor:
    """``x`` as a floating tensor (integers become float32)."""
    t = torch.as_tensor(x)
    return t if t.is_floating_point() else t.float()


def _default_device(device: torch.device | str | None, generator: torch.Generator | None) -> torch.device:
    """``device`` if given, else the generator's device, else the CPU."""
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def _plain(value: Any) -> Any:
    """Tensors, arrays and tuples as plain Python data (numbers and lists)."""
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _check_keys(cls: type, data: Mapping[str, Any], extra: Sequence[str] = ()) -> None:
    """Raise on an unknown key or a ``kind`` that is not ``cls.kind``."""
    allowed = sorted({f.name for f in fields(cls)} | {"kind"} | set(extra))
    for key in data:
        if key not in allowed:
            raise ValueError(f"unknown camera key {key!r} for kind {cls.kind!r}; allowed keys: {allowed}")
    if "kind" in data and data["kind"] != cls.kind:
        raise ValueError(f"camera.kind {data['kind']!r} does not match {cls.__name__} (kind {cls.kind!r})")


def _as_param(name: str, value: Any, minimum: float | None = None) -> Param:
    """Normalise a camera parameter: number → float, pair → (lo, hi) range, nested list/array → tensor."""
    if isinstance(value, Tensor):
        t = _as_float_tensor(value)
    elif is_number(value):
        value = float(value)
        if not math.isfinite(value) or (minimum is not None and value < minimum):
            raise ValueError(f"camera.{name} must be a finite number ≥ {minimum}, got {value!r}")
        return value
    elif (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(is_number(v) for v in value)
    ):
        lo, hi = float(value[0]), float(value[1])
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"camera.{name} range must be (lo, hi) with lo ≤ hi, got {list(value)}")
        if minimum is not None and lo < minimum:
            raise ValueError(f"camera.{name} range must lie at or above {minimum}, got {list(value)}")
        return (lo, hi)
    elif isinstance(value, (np.ndarray, Sequence)) and not isinstance(value, str):
        try:
            t = torch.as_tensor(np.asarray(value, dtype=np.float32))
        except (TypeError, ValueError):
            raise ValueError(
                f"camera.{name} must be a number, a (lo, hi) pair or a numeric array, got {value!r}"
            ) from None
    else:
        raise ValueError(f"camera.{name} must be a number, a (lo, hi) pair or a tensor, got {value!r}")
    if not torch.isfinite(t).all():
        raise ValueError(f"camera.{name} contains non-finite values")
    if minimum is not None and t.numel() and float(t.min()) < minimum:
        raise ValueError(f"camera.{name} must be ≥ {minimum} everywhere, got a minimum of {float(t.min())}")
    return t


def _check_positive(name: str, value: Any, upper: float | None = None) -> float:
    if not is_number(value) or not math.isfinite(float(value)) or float(value) <= 0:
        raise ValueError(f"camera.{name} must be a positive number, got {value!r}")
    if upper is not None and float(value) > upper:
        raise ValueError(f"camera.{name} must be at most {upper}, got {value!r}")
    return float(value)


def _check_non_negative(name: str, value: Any) -> float:
    if not is_number(value) or not math.isfinite(float(value)) or float(value) < 0:
        raise ValueError(f"camera.{name} must be a number ≥ 0, got {value!r}")
    return float(value)


def _broadcast_param(name: str, value: Tensor, like: Tensor) -> Tensor:
    """A tensor parameter on ``like``'s device/dtype; it must broadcast to ``like``'s shape."""
    t = value.to(device=like.device, dtype=like.dtype)
    try:
        shape = torch.broadcast_shapes(t.shape, like.shape)
    except RuntimeError:
        shape = None
    if shape != like.shape:
        raise ValueError(
            f"camera.{name} of shape {tuple(t.shape)} does not broadcast to frames of shape "
            f"{tuple(like.shape)}"
        )
    return t


def _floor_straight_through(x: Tensor) -> Tensor:
    """``floor(x)`` in the forward pass, identity gradient in the backward pass."""
    return x + (torch.floor(x) - x).detach()


# ---------------------------------------------------------------------------------------------- noise
def shot_noise(mu: Tensor, generator: torch.Generator | None = None, differentiable: bool = False) -> Tensor:
    """Poisson shot noise on expected counts ``mu`` (any shape, ≥ 0). Returns ``mu``'s shape.

    Exact mode draws ``Poisson(mu)`` (no gradient; small negative values from rendering round-off count
    as 0). Differentiable mode returns ``mu + sqrt(mu)·ε``, ε ~ N(0, 1): same mean and variance, gradients
    flow to ``mu`` and stay finite at ``mu = 0`` (the sqrt argument is clamped at 1e-12).
    """
    mu = _as_float_tensor(mu)
    if differentiable:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.sqrt(mu.clamp_min(_SQRT_FLOOR)) * eps
    return torch.poisson(mu.detach().clamp_min(0.0), generator=generator)


def sample_gamma(
    concentration: Tensor,
    scale: float | Tensor = 1.0,
    generator: torch.Generator | None = None,
    max_rounds: int = 100,
) -> Tensor:
    """Gamma(shape = ``concentration``, ``scale``) draws, elementwise, using ``generator``.

    Marsaglia & Tsang (2000) squeeze-free rejection, vectorised: every round redraws only the rejected
    entries (acceptance ≥ 95 %). Shapes below 1 use the boost ``G(α) = G(α + 1)·U^(1/α)``; shape 0 gives
    exactly 0. ``concentration``: any shape, ≥ 0; ``scale`` broadcasts against it. Returns float32
    (float64 for float64 input) of ``concentration``'s shape. Not differentiable.
    """
    alpha = _as_float_tensor(concentration).detach()
    if alpha.dtype != torch.float64:
        alpha = alpha.float()
    if not torch.isfinite(alpha).all() or bool((alpha < 0).any()):
        raise ValueError("gamma shape (concentration) must be finite and ≥ 0 everywhere")
    flat_alpha = alpha.reshape(-1)
    boosted = flat_alpha < 1
    a = torch.where(boosted, flat_alpha + 1, flat_alpha)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    pending = torch.arange(a.numel(), device=a.device)
    for _ in range(max_rounds):
        if pending.numel() == 0:
            break
        x = torch.randn(pending.shape, generator=generator, device=a.device, dtype=a.dtype)
        u = torch.rand(pending.shape, generator=generator, device=a.device, dtype=a.dtype)
        dp, t = d[pending], c[pending] * x
        inside = t > -1  # v = (1 + t)^3 > 0
        log1p_t = torch.log1p(t.clamp_min(-1 + 1e-6))
        # log acceptance bound 0.5x² + d(1 − v + log v), written without cancellation for large d
        bound = 0.5 * x * x + dp * (3.0 * log1p_t - t * (3.0 + 3.0 * t + t * t))
        accept = inside & (torch.log(u) < bound)
        out[pending[accept]] = (dp * (1 + t) ** 3)[accept]
        pending = pending[~accept]
    else:
        if pending.numel():
            raise RuntimeError(f"gamma sampler did not converge in {max_rounds} rounds")
    u = torch.rand(a.shape, generator=generator, device=a.device, dtype=a.dtype)
    boost = torch.where(
        boosted & (flat_alpha > 0), u ** (1.0 / flat_alpha.clamp_min(1e-30)), torch.ones_like(u)
    )
    out = torch.where(flat_alpha == 0, torch.zeros_like(out), out * boost)
    return out.reshape(alpha.shape) * torch.as_tensor(scale, dtype=out.dtype, device=out.device)


def smooth_unit_field(
    shape: Sequence[int],
    correlation_px: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Smooth random fields of shape ``(..., H, W)``, each min–max scaled to exactly [0, 1].

    White Gaussian noise low-pass filtered in Fourier space by a Gaussian kernel of standard deviation
    ``correlation_px`` pixels (features are about that size; 0 gives white noise). The noise is drawn on a
    grid padded by ``3·correlation_px`` (at most the frame size) and cropped, so the field does not wrap
    around the frame edges. Every leading index is an independent field.
    """
    *lead, h, w = (int(s) for s in shape)
    if h < 1 or w < 1:
        raise ValueError(f"field shape must end in (H, W) with H, W ≥ 1, got {tuple(shape)}")
    if not is_number(correlation_px) or not math.isfinite(correlation_px) or correlation_px < 0:
        raise ValueError(f"correlation_px must be a number ≥ 0, got {correlation_px!r}")
    device = _default_device(device, generator)
    pad = min(int(math.ceil(3 * correlation_px)), max(h, w))
    ph, pw = h + pad, w + pad
    noise = torch.randn((*lead, ph, pw), generator=generator, device=device, dtype=dtype)
    if correlation_px > 0:
        rows = lowpass_matrix(h, ph, correlation_px).to(device=device, dtype=dtype)
        cols = (
            rows
            if (w, pw) == (h, ph)
            else lowpass_matrix(w, pw, correlation_px).to(device=device, dtype=dtype)
        )
        field = rows @ noise @ cols.transpose(0, 1)
    else:
        field = noise[..., :h, :w]
    lo = field.amin(dim=(-2, -1), keepdim=True)
    span = field.amax(dim=(-2, -1), keepdim=True) - lo
    unit = (field - lo) / span.clamp_min(torch.finfo(dtype).tiny)
    return torch.where(span > 0, unit, torch.full_like(field, 0.5))


@functools.lru_cache(maxsize=16)
def lowpass_matrix(keep: int, period: int, correlation_px: float) -> Tensor:
    """``(keep, period)`` rows of the circulant matrix that filters a length-``period`` periodic signal by
    the Gaussian transfer exp(−2π²σ²ν²) (σ = ``correlation_px``): the same result as filtering with FFTs,
    as matrix products that compute only the ``keep`` samples used (cheaper on CPUs than FFTs here).
    Float64 on the CPU, cached (callers convert; do not modify the result in place)."""
    nu = torch.fft.fftfreq(period, dtype=torch.float64)
    taps = torch.fft.ifft(torch.exp(-2 * math.pi**2 * correlation_px**2 * nu**2)).real  # c[m]
    lag = torch.remainder(torch.arange(keep).unsqueeze(1) - torch.arange(period).unsqueeze(0), period)
    return taps[lag]


def smooth_random_map(
    shape: Sequence[int],
    lo: float | Tensor,
    hi: float | Tensor,
    correlation_px: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """A smooth random field of shape ``(..., H, W)`` spanning exactly [lo, hi] (each field separately).

    ``lo``/``hi`` are numbers or tensors broadcasting to ``(..., 1, 1)`` (e.g. per-frame ``(B, 1, 1)``).
    Usable for read-noise σ maps and backgrounds; see :func:`smooth_unit_field` for ``correlation_px``.
    """
    lo_t, hi_t = torch.as_tensor(lo, dtype=dtype), torch.as_tensor(hi, dtype=dtype)
    if bool((lo_t > hi_t).any()):
        raise ValueError(f"smooth_random_map needs lo ≤ hi, got lo={lo}, hi={hi}")
    unit = smooth_unit_field(shape, correlation_px, generator, device, dtype)
    lo_t, hi_t = lo_t.to(unit.device), hi_t.to(unit.device)
    return lo_t + (hi_t - lo_t) * unit


def _per_frame_uniform(bounds: Range, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """One U(lo, hi) value per frame of ``like`` (``(..., H, W)``), shaped ``(..., 1, 1)``."""
    shape = (*like.shape[:-2], 1, 1) if like.ndim >= 2 else ()
    u = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    return bounds[0] + (bounds[1] - bounds[0]) * u


# ---------------------------------------------------------------------------------------------- cameras
class Camera(Protocol):
    """What every camera model offers."""

    kind: ClassVar[str]

    def sample(
        self, mu_photons: Tensor, generator: torch.Generator | None = None, differentiable: bool = False
    ) -> Tensor: ...

    def to_photons(self, adu: Tensor) -> Tensor: ...

    def expected_counts(self, mu_photons: Tensor) -> Tensor: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class IdealCamera:
    """Poisson shot noise only; the output is in photons."""

    kind: ClassVar[str] = "ideal"

    def sample(
        self, mu_photons: Tensor, generator: torch.Generator | None = None, differentiable: bool = False
    ) -> Tensor:
        """Noisy photons, shape of ``mu_photons``."""
        return shot_noise(mu_photons, generator, differentiable)

    def to_photons(self, adu: Tensor) -> Tensor:
        """The identity (the output is already in photons)."""
        return _as_float_tensor(adu)

    def expected_counts(self, mu_photons: Tensor) -> Tensor:
        """The identity: the mean reading of ``mu_photons``."""
        return _as_float_tensor(mu_photons)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IdealCamera:
        _check_keys(cls, data)
        return cls()


@dataclass(frozen=True, eq=False)
class ReadoutCamera:
    """The paper's STORM camera model: Poisson shot noise, + baseline, + Gaussian read noise (counts).

    One count is one photon. ``baseline`` and ``read_noise`` (σ, counts) are each a number, a tensor
    broadcasting against the frames (``(H, W)`` map, ``(B, 1, 1)`` per frame, ``(B, H, W)``), or a
    ``(lo, hi)`` range drawn anew for every frame by ``sample``: the baseline uniformly per frame; σ as a
    smooth random map spanning [lo, hi] with features of ``read_noise_correlation_px`` pixels
    (spatially varying read noise), or uniformly per frame when that is ``None``. Defaults follow the
    paper (baseline 20–40, σ 8–12 counts); the correlation length is our choice. Compared by identity
    (fields may be tensors).
    """

    baseline: Param = (20.0, 40.0)
    read_noise: Param = (8.0, 12.0)
    read_noise_correlation_px: float | None = 16.0
    kind: ClassVar[str] = "readout"

    def __post_init__(self) -> None:
        object.__setattr__(self, "baseline", _as_param("baseline", self.baseline))
        object.__setattr__(self, "read_noise", _as_param("read_noise", self.read_noise, minimum=0.0))
        if self.read_noise_correlation_px is not None:
            correlation = _check_non_negative("read_noise_correlation_px", self.read_noise_correlation_px)
            object.__setattr__(self, "read_noise_correlation_px", correlation)

    def draw_parameters(
        self, mu_photons: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Baseline and σ for these frames, each broadcasting against ``mu_photons`` (ranges are drawn)."""
        mu = _as_float_tensor(mu_photons)
        if isinstance(self.baseline, tuple):
            baseline = _per_frame_uniform(self.baseline, mu, generator)
        else:
            baseline = _broadcast_param("baseline", torch.as_tensor(self.baseline), mu)
        if isinstance(self.read_noise, tuple):
            lo, hi = self.read_noise
            if self.read_noise_correlation_px is None or mu.ndim < 2:
                sigma = _per_frame_uniform(self.read_noise, mu, generator)
            else:
                sigma = smooth_random_map(
                    mu.shape, lo, hi, self.read_noise_correlation_px, generator, mu.device, mu.dtype
                )
        else:
            sigma = _broadcast_param("read_noise", torch.as_tensor(self.read_noise), mu)
        return baseline, sigma

    def sample(
        self, mu_photons: Tensor, generator: torch.Generator | None = None, differentiable: bool = False
    ) -> Tensor:
        """Counts = Poisson(μ) + baseline + N(0, σ²), shape of ``mu_photons``."""
        mu = _as_float_tensor(mu_photons)
        baseline, sigma = self.draw_parameters(mu, generator)
        photons = shot_noise(mu, generator, differentiable)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return photons + baseline + sigma * eps

    def expected_baseline(self) -> float | Tensor:
        """The baseline's expectation: the number, the map, or the middle of a range."""
        if isinstance(self.baseline, tuple):
            return 0.5 * (self.baseline[0] + self.baseline[1])
        return self.baseline

    def to_photons(self, adu: Tensor) -> Tensor:
        """Counts minus the expected baseline (photons). With a range baseline its midpoint is used."""
        adu = _as_float_tensor(adu)
        baseline = self.expected_baseline()
        if isinstance(baseline, Tensor):
            baseline = _broadcast_param("baseline", baseline, adu)
        return adu - baseline

    def expected_counts(self, mu_photons: Tensor) -> Tensor:
        """Mean reading ``μ + baseline`` (a range baseline at its midpoint): :meth:`to_photons`'s inverse."""
        mu = _as_float_tensor(mu_photons)
        baseline = self.expected_baseline()
        if isinstance(baseline, Tensor):
            baseline = _broadcast_param("baseline", baseline, mu)
        return mu + baseline

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "baseline": _plain(self.baseline),
            "read_noise": _plain(self.read_noise),
            "read_noise_correlation_px": self.read_noise_correlation_px,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReadoutCamera:
        """From plain data: a flat pair is a (lo, hi) range, a nested list a per-pixel/per-frame tensor."""
        _check_keys(cls, data)
        return cls(**{k: v for k, v in data.items() if k != "kind"})


@dataclass(frozen=True)
class EMCCD:
    """Electron-multiplying CCD.

    sample: e⁻ = Poisson(QE·μ + spurious) → EM register Gamma(shape = e⁻, scale = gain) (0 e⁻ → 0) →
    + N(0, read_noise_e²) → ÷ e⁻ per ADU → floor → + baseline (ADU). The Gamma register gives the
    excess-noise factor F² = 2 at any gain. Differentiable mode: Gaussian with the same mean and variance,
    ``gain·λ + sqrt(2·gain²·λ + read²)·ε`` with λ = QE·μ + spurious, then a straight-through floor.

    Attributes:
        qe: quantum efficiency (0, 1].
        em_gain: EM gain (≥ 1).
        read_noise_e: read noise (e⁻ rms, after the EM register).
        e_per_adu: electrons per ADU (ADC sensitivity).
        baseline_adu: offset added to every pixel (ADU).
        spurious_charge_e: clock-induced charge (mean e⁻ per pixel per frame, before the EM register).
    """

    qe: float = 0.9
    em_gain: float = 100.0
    read_noise_e: float = 74.0
    e_per_adu: float = 45.0
    baseline_adu: float = 100.0
    spurious_charge_e: float = 0.0
    kind: ClassVar[str] = "emccd"

    def __post_init__(self) -> None:
        object.__setattr__(self, "qe", _check_positive("qe", self.qe, upper=1.0))
        object.__setattr__(self, "em_gain", _check_positive("em_gain", self.em_gain))
        if self.em_gain < 1:
            raise ValueError(f"camera.em_gain must be ≥ 1, got {self.em_gain}")
        object.__setattr__(self, "read_noise_e", _check_non_negative("read_noise_e", self.read_noise_e))
        object.__setattr__(self, "e_per_adu", _check_positive("e_per_adu", self.e_per_adu))
        object.__setattr__(self, "baseline_adu", _check_non_negative("baseline_adu", self.baseline_adu))
        object.__setattr__(
            self, "spurious_charge_e", _check_non_negative("spurious_charge_e", self.spurious_charge_e)
        )

    def expected_electrons(self, mu_photons: Tensor) -> Tensor:
        """λ = QE·μ + spurious charge: mean photo-electrons entering the EM register, shape of μ."""
        return self.qe * _as_float_tensor(mu_photons) + self.spurious_charge_e

    def amplified_electrons(self, mu_photons: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Electrons leaving the EM register (before read noise): Gamma(Poisson(λ), gain), shape of μ."""
        lam = self.expected_electrons(mu_photons).detach().clamp_min(0.0)
        electrons = torch.poisson(lam, generator=generator)
        return sample_gamma(electrons, self.em_gain, generator)

    def sample(
        self, mu_photons: Tensor, generator: torch.Generator | None = None, differentiable: bool = False
    ) -> Tensor:
        """ADU, shape of ``mu_photons`` (integer-valued floats)."""
        mu = _as_float_tensor(mu_photons)
        if differentiable:
            lam = self.expected_electrons(mu.clamp_min(0.0))
            var = 2 * self.em_gain**2 * lam + self.read_noise_e**2
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            out_e = self.em_gain * lam + torch.sqrt(var.clamp_min(_SQRT_FLOOR)) * eps
            return _floor_straight_through(out_e / self.e_per_adu) + self.baseline_adu
        out_e = self.amplified_electrons(mu, generator).to(mu.dtype)
        read = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return torch.floor((out_e + self.read_noise_e * read) / self.e_per_adu) + self.baseline_adu

    def to_photons(self, adu: Tensor) -> Tensor:
        """Expectation inverse: ``((adu − baseline + ½)·e⁻/ADU / gain − spurious) / QE`` (the ½ undoes the
        mean of the floor)."""
        electrons = (_as_float_tensor(adu) - self.baseline_adu + 0.5) * self.e_per_adu / self.em_gain
        return (electrons - self.spurious_charge_e) / self.qe

    def expected_counts(self, mu_photons: Tensor) -> Tensor:
        """Mean reading ``gain·(QE·μ + spurious)/(e⁻/ADU) + baseline − ½`` (ADU): :meth:`to_photons`'s
        inverse."""
        electrons = self.expected_electrons(mu_photons) * self.em_gain
        return electrons / self.e_per_adu + self.baseline_adu - 0.5

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EMCCD:
        _check_keys(cls, data)
        return cls(**{k: v for k, v in data.items() if k != "kind"})


_SCMOS_DRAW_KEYS = (
    "shape",
    "seed",
    "offset_mean",
    "offset_std",
    "gain_mean",
    "gain_std",
    "read_var_mean",
    "read_var_std",
)


@dataclass(frozen=True, eq=False)
class SCMOS:
    """sCMOS camera with per-pixel calibration maps.

    sample: ADU = gain·Poisson(QE·μ) + N(0, read_var) + offset (no ADC rounding). Maps are numbers or
    ``(H, W)`` tensors (all tensor maps of one shape, which must match the frames' last two dims).
    Differentiable mode uses the reparameterised shot noise of :func:`shot_noise`. Compared by identity.

    Attributes:
        offset_adu: per-pixel offset (ADU).
        gain_adu_per_e: per-pixel gain (ADU per e⁻), > 0.
        read_var_adu2: per-pixel read-noise variance (ADU²), ≥ 0.
        qe: quantum efficiency (0, 1].
    """

    offset_adu: float | Tensor = 100.0
    gain_adu_per_e: float | Tensor = 2.2
    read_var_adu2: float | Tensor = 4.0
    qe: float = 0.8
    kind: ClassVar[str] = "scmos"

    def __post_init__(self) -> None:
        maps = {"offset_adu": None, "gain_adu_per_e": 1e-12, "read_var_adu2": 0.0}
        for name, minimum in maps.items():
            value = _as_param(name, getattr(self, name), minimum=minimum)
            if isinstance(value, tuple):
                raise ValueError(f"camera.{name} must be a number or an (H, W) map, not a (lo, hi) range")
            if isinstance(value, Tensor) and value.ndim != 2:
                raise ValueError(f"camera.{name} map must be (H, W), got shape {tuple(value.shape)}")
            object.__setattr__(self, name, value)
        shapes = {tuple(getattr(self, n).shape) for n in maps if isinstance(getattr(self, n), Tensor)}
        if len(shapes) > 1:
            raise ValueError(f"sCMOS maps must share one (H, W) shape, got {sorted(shapes)}")
        object.__setattr__(self, "qe", _check_positive("qe", self.qe, upper=1.0))

    @property
    def frame_shape(self) -> tuple[int, int] | None:
        """``(H, W)`` of the maps, or ``None`` when all are numbers."""
        for name in ("offset_adu", "gain_adu_per_e", "read_var_adu2"):
            value = getattr(self, name)
            if isinstance(value, Tensor):
                return tuple(value.shape)  # type: ignore[return-value]
        return None

    @classmethod
    def random(
        cls,
        shape: Sequence[int],
        generator: np.random.Generator | torch.Generator | None = None,
        *,
        qe: float = 0.8,
        offset_mean: float = 100.0,
        offset_std: float = 1.0,
        gain_mean: float = 2.2,
        gain_std: float = 0.1,
        read_var_mean: float = 4.0,
        read_var_std: float = 4.0,
        device: torch.device | str | None = None,
    ) -> SCMOS:
        """Calibration maps of ``shape = (H, W)`` drawn per pixel.

        offset ~ N(offset_mean, offset_std²); gain ~ N(gain_mean, gain_std²) clipped at 5 % of the mean;
        read variance ~ log-normal with mean ``read_var_mean`` and standard deviation ``read_var_std``
        (sCMOS read noise has a long tail of noisy pixels). ``generator`` is a numpy or torch generator.
        """
        if len(shape) != 2 or any(int(s) < 1 for s in shape):
            raise ValueError(f"sCMOS shape must be (H, W) with H, W ≥ 1, got {tuple(shape)}")
        h, w = int(shape[0]), int(shape[1])
        _check_non_negative("offset_std", offset_std)
        _check_non_negative("gain_std", gain_std)
        _check_non_negative("read_var_std", read_var_std)
        _check_positive("gain_mean", gain_mean)
        _check_positive("read_var_mean", read_var_mean)
        sigma_ln = math.sqrt(math.log1p((read_var_std / read_var_mean) ** 2))
        mu_ln = math.log(read_var_mean) - 0.5 * sigma_ln**2
        if isinstance(generator, np.random.Generator):
            z = torch.as_tensor(generator.standard_normal((3, h, w)), dtype=torch.float32, device=device)
        else:
            z = torch.randn((3, h, w), generator=generator, device=_default_device(device, generator))
        offset = offset_mean + offset_std * z[0]
        gain = (gain_mean + gain_std * z[1]).clamp_min(0.05 * gain_mean)
        read_var = torch.exp(mu_ln + sigma_ln * z[2])
        return cls(offset_adu=offset, gain_adu_per_e=gain, read_var_adu2=read_var, qe=qe)

    def _maps(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shape = self.frame_shape
        if shape is not None and (like.ndim < 2 or tuple(like.shape[-2:]) != shape):
            raise ValueError(f"frames of shape {tuple(like.shape)} do not match the sCMOS maps {shape}")
        return tuple(
            torch.as_tensor(getattr(self, n), device=like.device, dtype=like.dtype)  # type: ignore
            for n in ("offset_adu", "gain_adu_per_e", "read_var_adu2")
        )

    def sample(
        self, mu_photons: Tensor, generator: torch.Generator | None = None, differentiable: bool = False
    ) -> Tensor:
        """ADU, shape of ``mu_photons`` (``(..., H, W)``)."""
        mu = _as_float_tensor(mu_photons)
        offset, gain, read_var = self._maps(mu)
        electrons = shot_noise(self.qe * mu, generator, differentiable)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return gain * electrons + torch.sqrt(read_var) * eps + offset

    def to_photons(self, adu: Tensor) -> Tensor:
        """Expectation inverse: ``(adu − offset) / gain / QE`` per pixel."""
        adu = _as_float_tensor(adu)
        offset, gain, _ = self._maps(adu)
        return (adu - offset) / gain / self.qe

    def expected_counts(self, mu_photons: Tensor) -> Tensor:
        """Mean reading ``gain·QE·μ + offset`` per pixel (ADU): :meth:`to_photons`'s inverse."""
        mu = _as_float_tensor(mu_photons)
        offset, gain, _ = self._maps(mu)
        return gain * self.qe * mu + offset

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SCMOS:
        """Explicit maps (``offset_adu``, ``gain_adu_per_e``, ``read_var_adu2``, ``qe``), or drawn maps when
        ``shape`` is given (keys ``shape, seed, qe, offset_mean, offset_std, gain_mean, gain_std,
        read_var_mean, read_var_std``; ``seed`` feeds ``numpy.random.default_rng``)."""
        _check_keys(cls, data, extra=_SCMOS_DRAW_KEYS)
        params = {k: v for k, v in data.items() if k != "kind"}
        if "shape" not in params:
            stray = sorted(set(params) & set(_SCMOS_DRAW_KEYS))
            if stray:
                raise ValueError(f"camera keys {stray} need 'shape' (drawn sCMOS maps)")
            return cls(**params)
        explicit = sorted(set(params) & {"offset_adu", "gain_adu_per_e", "read_var_adu2"})
        if explicit:
            raise ValueError(f"camera keys {explicit} cannot be combined with 'shape', which draws the maps")
        shape = params.pop("shape")
        rng = np.random.default_rng(params.pop("seed", None))
        return cls.random(tuple(shape), rng, **params)


CAMERAS: dict[str, type] = {"ideal": IdealCamera, "readout": ReadoutCamera, "emccd": EMCCD, "scmos": SCMOS}


def camera_from_config(config: Mapping[str, Any]) -> Camera:
    """Any camera model from plain data, e.g. ``{"kind": "emccd", "em_gain": 200}``."""
    if not isinstance(config, Mapping):
        raise ValueError(f"camera config must be a mapping with a 'kind' key, got {type(config).__name__}")
    kind = config.get("kind")
    if kind not in CAMERAS:
        raise ValueError(f"camera.kind must be one of {sorted(CAMERAS)}, got {kind!r}")
    return CAMERAS[kind].from_dict(config)
