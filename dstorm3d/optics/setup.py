"""One validated description of a microscope with a 4f phase-mask (PSF engineering) path.

Units: wavelength, pixel sizes at the sample, z and NFP in **µm**; camera and mask pixels in µm on the
physical chip/element; the 4f focal length in **mm**.

Pupil sampling is tied to the camera (reference.md §3): with camera pitch Δx at the sample and an
N × N discrete Fourier transform, the pupil pitch is ``Δf = 1 / (N·Δx)`` (cycles/µm) and one DFT
period spans ``N`` camera pixels. The pupil radius in grid samples is ``R = ρ_max·N·Δx/λ`` where
``ρ_max`` is the aperture's numerical aperture (``min(NA, n_sample)`` for the water-limited aperture
the paper used, ``NA`` for the objective aperture). The natural grid size, where one mask pixel is one
pupil sample, is ``N = λ·f_4f / (Δ_mask·Δ_camera)`` (203 for the STORM setup, 329 for the telomere one).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from dstorm3d.errors import UserInputError

Aperture = Literal["water", "objective"]


class SetupError(UserInputError):
    """An optical setup that is physically impossible or cannot be sampled."""


@dataclass(frozen=True)
class OpticalSetup:
    """Microscope + 4f system + camera, validated on construction.

    Attributes:
        wavelength_um: emission wavelength λ (µm).
        na: objective numerical aperture.
        n_immersion: immersion-medium refractive index (oil 1.518).
        n_sample: sample-medium refractive index (water 1.33).
        camera_pixel_um: physical camera pixel (µm).
        magnification: total magnification from the sample to the camera.
        f4f_mm: focal length of the 4f lenses (mm).
        mask_pixel_um: phase-mask (SLM) pixel (µm).
        nfp_um: nominal focal plane: focus position of the objective above the coverslip (µm).
        z_range_um: (z_min, z_max) axial range of emitters above the coverslip (µm).
        pupil_grid: DFT size N (pupil samples per side). ``None`` takes the natural size
            ``round(λ·f_4f/(Δ_mask·Δ_camera))``.
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
    f4f_mm: float
    mask_pixel_um: float
    nfp_um: float
    z_range_um: tuple[float, float]
    pupil_grid: int | None = None
    aperture: Aperture = "water"
    name: str = "custom"

    def __post_init__(self) -> None:
        object.__setattr__(self, "z_range_um", tuple(float(v) for v in self.z_range_um))
        if self.pupil_grid is None:
            object.__setattr__(self, "pupil_grid", self.natural_grid())
        object.__setattr__(self, "pupil_grid", int(self.pupil_grid))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        positive = (
            "wavelength_um",
            "na",
            "n_immersion",
            "n_sample",
            "camera_pixel_um",
            "magnification",
            "f4f_mm",
            "mask_pixel_um",
        )
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SetupError(f"optics.{name} must be a positive number, got {value!r}")
        if self.aperture not in ("water", "objective"):
            raise SetupError(f"optics.aperture must be 'water' or 'objective', got {self.aperture!r}")
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
    def natural_grid(self) -> int:
        """``N = λ·f_4f/(Δ_mask·Δ_camera)``: the DFT size where one mask pixel is one pupil sample."""
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
    def mask_scale(self) -> float:
        """Mask pixel in pupil samples, ``N·Δ_mask·Δ_camera/(λ·f_4f)`` (1 at the natural grid)."""
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
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise SetupError(f"unknown optical-setup field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> OpticalSetup:
        """A copy with some fields changed (re-validated). Changing λ, f or pixels keeps an explicit N."""
        return replace(self, **changes)


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
