"""Zernike polynomials in Noll's ordering and normalisation (Noll, JOSA 66, 1976).

``Z_j(ρ, θ)`` with ``j ≥ 1``: ``n`` the radial order, ``m`` the azimuthal frequency; even ``j`` carry
``cos(mθ)``, odd ``j`` carry ``sin(mθ)``; normalised so that the mean of ``Z_j²`` over the unit disc is 1.
"""

from __future__ import annotations

import math

import numpy as np


def noll_to_nm(j: int) -> tuple[int, int]:
    """Noll index ``j ≥ 1`` → (n, m) with signed m (m < 0 for the sine terms)."""
    if j < 1:
        raise ValueError(f"Noll indices start at 1, got {j}")
    n = 0
    while (n + 1) * (n + 2) // 2 < j:
        n += 1
    p = j - n * (n + 1) // 2 - 1  # position within order n, 0-based
    m_abs = 2 * ((p + 1) // 2) if n % 2 == 0 else 2 * (p // 2) + 1
    if m_abs == 0:
        return n, 0
    return n, (m_abs if j % 2 == 0 else -m_abs)


def zernike_radial(n: int, m_abs: int, rho: np.ndarray) -> np.ndarray:
    """Radial polynomial ``R_n^|m|(ρ)``."""
    out = np.zeros_like(rho, dtype=np.float64)
    for k in range((n - m_abs) // 2 + 1):
        coeff = (
            (-1) ** k
            * math.factorial(n - k)
            / (
                math.factorial(k)
                * math.factorial((n + m_abs) // 2 - k)
                * math.factorial((n - m_abs) // 2 - k)
            )
        )
        out += coeff * rho ** (n - 2 * k)
    return out


def zernike(j: int, rho: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Noll-normalised Zernike polynomial ``Z_j`` at polar coordinates (ρ on the unit disc, θ in rad)."""
    n, m = noll_to_nm(j)
    radial = zernike_radial(n, abs(m), rho)
    if m == 0:
        return math.sqrt(n + 1) * radial
    angular = np.cos(m * theta) if m > 0 else np.sin(-m * theta)
    return math.sqrt(2 * (n + 1)) * radial * angular


def pupil_polar_grid(size: int, radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(ρ, θ) on a ``size × size`` grid centred at index ``size // 2``: ρ in units of ``radius_px``,
    θ = atan2(row − c, col − c)."""
    c = size // 2
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = rows - c, cols - c
    return np.hypot(dx, dy) / radius_px, np.arctan2(dy, dx)


def zernike_phase(coefficients: dict[int, float], size: int, radius_px: float) -> np.ndarray:
    """Σ_j a_j·Z_j over a ``size²`` grid (rad), evaluated everywhere (callers apply the aperture)."""
    rho, theta = pupil_polar_grid(size, radius_px)
    phase = np.zeros((size, size), dtype=np.float64)
    for j, a in coefficients.items():
        if a != 0.0:
            phase += float(a) * zernike(int(j), rho, theta)
    return phase


def zernike_basis(indices: list[int], size: int, radius_px: float) -> np.ndarray:
    """``(len(indices), size, size)`` stack of Noll Zernike polynomials on the grid."""
    rho, theta = pupil_polar_grid(size, radius_px)
    return np.stack([zernike(j, rho, theta) for j in indices])


# The model Tetrapod (4 µm range): Noll index -> coefficient in rad on the water-limited unit disc.
TETRAPOD_COEFFICIENTS: dict[int, float] = {
    4: 1.815,
    5: -0.579,
    6: 0.858,
    11: 0.531,
    12: -1.772,
    13: 1.226,
    14: 0.045,
    15: -0.138,
    22: 0.070,
    23: 0.102,
    24: -0.137,
    25: 0.042,
    26: -0.027,
    27: -0.170,
    28: -0.038,
}
