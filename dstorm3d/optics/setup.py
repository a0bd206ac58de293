"""One validated description of a microscope, with or without a 4f phase-mask (PSF engineering) path.

Units: wavelength, pixel sizes at the sample, z and NFP in **µm**; camera and mask pixels in µm on the
physical chip/element; the 4f focal length in **mm**.

Pupil sampling is tied to the camera (reference.md §3): with camera pitch Δx at the sample and an
N × N discrete Fourier transform, the pupil pitch is ``Δf = 1 / (N·Δx)`` (cycles/µm) and one DFT
period spans ``N`` camera pixels. The pupil radius in grid samples is ``R = ρ_max·N·Δx/λ`` where
``ρ_max`` is the aperture's numerical aperture (``min(NA, n_sample)`` for the water-limited aperture
the paper used, ``NA`` for the objective aperture). The natural grid size, where one mask pixel is one
pupil sample, is ``N = λ·f_4f / (Δ_mask·Δ_camera)`` (203 for the STORM setup, 329 for the telomere one).

A microscope without a 4f system (``f4f_mm`` and ``mask_pixel_um`` null: no SLM, e.g. a calibrated
astigmatic or plain PSF) has no natural grid. Its ``pupil_grid: null`` is chosen by
:func:`automatic_pupil_grid`: the smallest 5-smooth N (2^a·3^b·5^c) that is at least
:data:`AUTOMATIC_GRID_MIN` (128) and at least the largest pixel grid a command renders in one piece (its
render window, or whole frame plus filter margins: ``window_px``), and that holds the aperture box with a
margin of :data:`APERTURE_MARGIN` samples on each side. A grid only has to hold the PSF (one DFT period is
N camera pixels), so the result does not depend on N once N holds it; commands that render more than 128
pixels at once raise N to fit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from dstorm3d.errors import UserInputError

Aperture = Literal["water", "objective"]

#: Smallest automatic pupil grid (samples per side; a DFT period of 128 camera pixels).
AUTOMATIC_GRID_MIN = 128
#: Free pupil samples kept on each side of the aperture box by an automatic grid.
APERTURE_MARGIN = 8
#: Largest automatic pupil grid.
AUTOMATIC_GRID_MAX = 2048


class SetupError(UserInputError):
    """An optical setup that is physically impossible or cannot be sampled."""


@dataclass(frozen=True)
class OpticalSetup:
    """Microscope + camera (+ 4f system), validated on construction.

    Attributes:
        wavelength_um: emission wavelength λ (µm).
        na: objective numerical aperture.
        n_immersion: immersion-medium refractive index (oil 1.518).
        n_sample: sample-medium refractive index (water 1.33).
        camera_pixel_um: physical camera pixel (µm).
        magnification: total magnification from the sample to the camera.
        nfp_um: nominal focal plane: focus position of the objective above the coverslip (µm).
        z_range_um: (z_min, z_max) axial range of emitters above the coverslip (µm).
        f4f_mm: focal length of the 4f lenses (mm); ``None`` = no 4f system (then no ``mask_pixel_um``).
        mask_pixel_um: phase-mask (SLM) pixel (µm); ``None`` = no SLM.
        pupil_grid: DFT size N (pupil samples per side). ``None`` takes the natural size
            ``round(λ·f_4f/(Δ_mask·Δ_camera))`` with a 4f system, else :func:`automatic_pupil_grid`
            (for a 128-pixel window; :func:`dstorm3d.optics.config.setup_from_config` passes a
            command's larger window).
        aperture: ``"water"`` (ρ < min(NA, n_sample), no super-critical light, as the paper) or
            ``"objective"`` (ρ < NA).
        name: free-form label (preset name).
    """

    wavelength_um: float
    na: float
    n_immersion: float
    n_sample: float
    camera_pixel_um: float
    magnification: float
    nfp_um: float
    z_range_um: tuple[float, float]
    f4f_mm: float | None = None
    mask_pixel_um: float | None = None
    pupil_grid: int | None = None
    aperture: Aperture = "water"
    name: str = "custom"

    def __post_init__(self) -> None:
        object.__setattr__(self, "z_range_um", tuple(float(v) for v in self.z_range_um))
        self._validate_numbers()
        if self.pupil_grid is None:
            grid = (
                self.natural_grid()
                if self.has_4f
                else automatic_pupil_grid(self.wavelength_um, self.aperture_na, self.pixel_size_um)
            )
            object.__setattr__(self, "pupil_grid", grid)
        object.__setattr__(self, "pupil_grid", int(self.pupil_grid))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate_numbers(self) -> None:
        """The fields every derived quantity needs: positive numbers, and a 4f system whole or absent."""
        positive = ("wavelength_um", "na", "n_immersion", "n_sample", "camera_pixel_um", "magnification")
        optional = ("f4f_mm", "mask_pixel_um")
        for name in (*positive, *optional):
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if not _positive_number(value):
                raise SetupError(f"optics.{name} must be a positive number, got {value!r}")
        if (self.f4f_mm is None) != (self.mask_pixel_um is None):
            raise SetupError(
                f"optics.f4f_mm = {self.f4f_mm} and optics.mask_pixel_um = {self.mask_pixel_um}: a 4f "
                "phase-mask path needs both; set both to null for a microscope without one"
            )
        if self.aperture not in ("water", "objective"):
            raise SetupError(f"optics.aperture must be 'water' or 'objective', got {self.aperture!r}")

    def _validate(self) -> None:
        if self.na >= self.n_immersion:
            raise SetupError(
                f"optics.na = {self.na} must be smaller than optics.n_immersion = {self.n_immersion} "
                "(no objective collects light beyond its immersion index): lower na or raise n_immersion"
            )
        z0, z1 = self.z_range_um
        if not (len(self.z_range_um) == 2 and z1 > z0):
            raise SetupError(
                f"optics.z_range_um must be (z_min, z_max) with z_max > z_min, got {self.z_range_um}"
            )
        if z0 < 0:
            raise SetupError(f"optics.z_range_um starts below the coverslip (z_min = {z0} µm): use z_min ≥ 0")
        if self.pupil_grid < 16:
            raise SetupError(
                f"optics.pupil_grid = {self.pupil_grid} is too small: use at least 16 (203 or more "
                "keeps the model within 2 % of the exact integral)"
            )
        if 2 * math.ceil(self.pupil_radius_px) + 1 > self.pupil_grid:
            raise SetupError(
                f"the pupil (radius {self.pupil_radius_px:.1f} samples) does not fit the "
                f"{self.pupil_grid}² grid: the camera pixel at the sample "
                f"({self.pixel_size_um * 1e3:.1f} nm) exceeds the field's Nyquist "
                f"limit λ/(2·NA) = {self.wavelength_um / (2 * self.aperture_na) * 1e3:.1f} nm; "
                "raise the magnification or use a smaller camera pixel"
            )

    # ------------------------------------------------------------------ derived quantities
    @property
    def has_4f(self) -> bool:
        """Whether the setup has a 4f phase-mask path (an SLM or printed mask whose pixel is known)."""
        return self.f4f_mm is not None and self.mask_pixel_um is not None

    def natural_grid(self) -> int:
        """``N = λ·f_4f/(Δ_mask·Δ_camera)``: the DFT size where one mask pixel is one pupil sample."""
        if not self.has_4f:
            raise SetupError(
                f"setup '{self.name}' has no 4f system (optics.f4f_mm and optics.mask_pixel_um are null), "
                "so it has no natural pupil grid"
            )
        n = self.wavelength_um * (self.f4f_mm * 1e3) / (self.mask_pixel_um * self.camera_pixel_um)
        return int(n + 1e-9)  # the original truncates (329.5 -> 329)

    @property
    def pixel_size_um(self) -> float:
        """Camera pixel at the sample, Δx (µm)."""
        return self.camera_pixel_um / self.magnification

    @property
    def aperture_na(self) -> float:
        """Largest ρ = n·sinθ passed by the aperture."""
        return min(self.na, self.n_sample) if self.aperture == "water" else self.na

    @property
    def pupil_pitch(self) -> float:
        """Δf = 1/(N·Δx), pupil sample spacing in cycles/µm."""
        return 1.0 / (self.pupil_grid * self.pixel_size_um)

    @property
    def pupil_radius_px(self) -> float:
        """Aperture radius in pupil samples, ``ρ_max·N·Δx/λ``."""
        return self.aperture_na * self.pupil_grid * self.pixel_size_um / self.wavelength_um

    @property
    def zernike_radius_px(self) -> float:
        """Radius of the unit disc of Zernike polynomials: the water-limited disc ``ρ = min(NA, n_s)``."""
        return min(self.na, self.n_sample) * self.pupil_grid * self.pixel_size_um / self.wavelength_um

    @property
    def mask_scale(self) -> float | None:
        """Mask pixel in pupil samples, ``N·Δ_mask·Δ_camera/(λ·f_4f)`` (1 at the natural grid); ``None``
        without a 4f system."""
        if not self.has_4f:
            return None
        return (
            self.pupil_grid
            * self.mask_pixel_um
            * self.camera_pixel_um
            / (self.wavelength_um * self.f4f_mm * 1e3)
        )

    @property
    def z_span_um(self) -> float:
        return self.z_range_um[1] - self.z_range_um[0]

    def check_window(self, window_px: int) -> None:
        """Raise when a render window of ``window_px`` camera pixels would wrap around the DFT period."""
        if window_px > self.pupil_grid:
            raise SetupError(
                f"a {window_px}-pixel render window exceeds the DFT period of {self.pupil_grid} pixels, "
                f"so the PSF would wrap around: use a window of at most {self.pupil_grid} pixels or a larger "
                "optics.pupil_grid"
            )

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain data (numbers, strings, lists) for checkpoints and configs."""
        data = asdict(self)
        data["z_range_um"] = list(self.z_range_um)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpticalSetup:
        """A setup from plain data: :meth:`to_dict`'s fields, where ``pixel_size_um`` (the camera pixel at
        the sample, µm) may stand for ``camera_pixel_um`` and ``magnification`` (left out or null)."""
        data = dict(data)
        pixel = data.pop("pixel_size_um", None)
        if pixel is not None:
            data.update(_pixel_fields(pixel, data))
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise SetupError(f"unknown optical-setup field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> OpticalSetup:
        """A copy with some fields changed (re-validated). Changing λ, f or pixels keeps an explicit N."""
        return replace(self, **changes)


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def _pixel_fields(pixel_size_um: Any, data: dict[str, Any]) -> dict[str, float]:
    """``camera_pixel_um`` and ``magnification`` for a pixel size at the sample: the pixel itself and 1
    when neither is given; the given ones when they agree with it; else a :class:`SetupError`."""
    if not _positive_number(pixel_size_um):
        raise SetupError(f"optics.pixel_size_um must be a positive number (µm), got {pixel_size_um!r}")
    camera, magnification = data.get("camera_pixel_um"), data.get("magnification")
    if camera is None and magnification is None:
        if data.get("f4f_mm") is not None:
            raise SetupError(
                "optics.pixel_size_um cannot describe a camera behind a 4f system (its scale needs the "
                "physical pixel): give optics.camera_pixel_um and optics.magnification instead"
            )
        return {"camera_pixel_um": float(pixel_size_um), "magnification": 1.0}
    if not (_positive_number(camera) and _positive_number(magnification)):
        raise SetupError(
            "optics.pixel_size_um is given with only one of optics.camera_pixel_um and "
            "optics.magnification: give the pixel size at the sample alone (set both to null) or both"
        )
    if abs(camera / magnification - pixel_size_um) > 1e-9 * pixel_size_um:
        raise SetupError(
            f"optics.pixel_size_um = {pixel_size_um} µm contradicts optics.camera_pixel_um / "
            f"optics.magnification = {camera / magnification:g} µm: give one of the two (set "
            "optics.camera_pixel_um=null optics.magnification=null to use pixel_size_um)"
        )
    return {"camera_pixel_um": camera, "magnification": magnification}


def is_5_smooth(n: int) -> bool:
    """Whether ``n`` ≥ 1 has no prime factor above 5 (FFT-friendly sizes)."""
    for prime in (2, 3, 5):
        while n % prime == 0:
            n //= prime
    return n == 1


def automatic_pupil_grid(
    wavelength_um: float, aperture_na: float, pixel_size_um: float, window_px: int | None = None
) -> int:
    """The pupil grid of a setup without a 4f system: the smallest 5-smooth N ≥ max(128, ``window_px``)
    whose aperture box (K = 2⌈R⌉ + 1 samples, R = ρ_max·N·Δx/λ) leaves :data:`APERTURE_MARGIN` free
    samples on each side. Raises :class:`SetupError` when no grid can (pixels above the Nyquist limit)."""
    nyquist_um = wavelength_um / (2 * aperture_na)
    if pixel_size_um >= nyquist_um:
        raise SetupError(
            f"the camera pixel at the sample ({pixel_size_um * 1e3:.1f} nm) exceeds the field's Nyquist "
            f"limit λ/(2·NA) = {nyquist_um * 1e3:.1f} nm: no pupil grid holds the aperture; raise the "
            "magnification or use a smaller camera pixel"
        )
    n = max(AUTOMATIC_GRID_MIN, int(window_px or 0))
    while n <= AUTOMATIC_GRID_MAX:
        box = 2 * math.ceil(aperture_na * n * pixel_size_um / wavelength_um) + 1
        if is_5_smooth(n) and box + 2 * APERTURE_MARGIN <= n:
            return n
        n += 1
    raise SetupError(
        f"no pupil grid up to {AUTOMATIC_GRID_MAX} samples holds a {window_px or AUTOMATIC_GRID_MIN}-pixel "
        f"window and the aperture with a margin: the camera pixel at the sample ({pixel_size_um * 1e3:.1f} "
        f"nm) is too close to the Nyquist limit {nyquist_um * 1e3:.1f} nm; give optics.pupil_grid or "
        "use smaller pixels or windows"
    )


def storm_setup(**overrides: Any) -> OpticalSetup:
    """The paper's STORM (mitochondria, printed Tetrapod) setup, reference.md §2."""
    params: dict[str, Any] = dict(
        wavelength_um=0.67,
        na=1.45,
        n_immersion=1.518,
        n_sample=1.33,
        camera_pixel_um=11.0,
        magnification=100.0,
        f4f_mm=100.0,
        mask_pixel_um=30.0,
        nfp_um=1.5,
        z_range_um=(0.0, 4.0),
        pupil_grid=203,
        aperture="water",
        name="storm",
    )
    params.update(overrides)
    return OpticalSetup(**params)


def telomere_setup(**overrides: Any) -> OpticalSetup:
    """The paper's telomere (model Tetrapod / learned PSF) setup: z 2–6 µm, NFP 4.5 µm."""
    params: dict[str, Any] = dict(
        wavelength_um=0.58,
        na=1.45,
        n_immersion=1.518,
        n_sample=1.33,
        camera_pixel_um=11.0,
        magnification=100.0,
        f4f_mm=150.0,
        mask_pixel_um=24.0,
        nfp_um=4.5,
        z_range_um=(2.0, 6.0),
        pupil_grid=329,
        aperture="water",
        name="telomere",
    )
    params.update(overrides)
    return OpticalSetup(**params)


def psf_learning_setup(**overrides: Any) -> OpticalSetup:
    """The telomere optics with the paper's PSF-learning axial range: z 0–5 µm, NFP 2.5 µm."""
    params: dict[str, Any] = dict(nfp_um=2.5, z_range_um=(0.0, 5.0), name="psf_learning")
    params.update(overrides)
    return telomere_setup(**params)


PRESETS = {
    "storm": storm_setup,
    "telomere": telomere_setup,
    "psf_learning": psf_learning_setup,
}


def preset(name: str, **overrides: Any) -> OpticalSetup:
    """An optical setup by preset name (``storm``, ``telomere``, ``psf_learning``) with overrides."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise SetupError(f"unknown optical preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return factory(**overrides)
