"""Scalar pupil model of a PSF-engineered microscope and exact PSF evaluation on camera pixels.

For an emitter at lateral position r0 and depth z above the coverslip, imaged with nominal focal plane
NFP, the pupil field is (reference.md §3, ρ = λ|f|, k0 = 2π/λ)

    P(f) = A(f) · exp{ i [ Φ_mask(f) + k0 (z·√(n_s² − ρ²) − NFP·√(n_i² − ρ²)) ] }

and the field on the camera is its forward Fourier transform ``E(r) = Σ_f P(f)·exp(−2πi f·(r − r0))``:
an emitter at +x appears at +x (higher column index). The transform's sign fixes the orientation of a
mask array relative to the image (mask[row, col] ↔ (f_y, f_x)); the forward sign is the one the
paper's masks were made with: re-rendering the authors' localizations of the real mito frames with the
printed Tetrapod fits the frames clearly better this way than with the opposite sign, which rotates
every PSF by 180° (tests/optics/test_mask_convention.py). Intensity ``|E|²`` is normalised so that one
DFT period (N × N pixels) sums to the photon count, which makes it independent of z, mask and position.

Evaluation (the cheapest exact method): rather than an N × N FFT per emitter, the transform is a
matrix DFT from the K × K box that holds the aperture (K = 2⌈R⌉ + 1 ≪ N) onto only the P × P camera
pixels of a window around the emitter: two shared matrix products per emitter. Folding each pupil's
+k and −k frequencies together first makes the DFT matrices real (cos and sin halves), so the products
cost 2·K·P·(K + P) real multiply-adds, half a complex product's (:meth:`PupilModel.field_planes`);
the pupils never exist as complex numbers. The sub-pixel position enters exactly through the phase
ramp (no interpolation), the integer position through the window's place in the frame. With P = N the
window is one full DFT period and the result equals the FFT model exactly; smaller windows drop only
the PSF tail beyond the window (see :func:`window_energy`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .setup import OpticalSetup


def _pupil_box(setup: OpticalSetup) -> tuple[int, int]:
    """Half-width h and size K = 2h + 1 of the square that holds the aperture (centred at N//2)."""
    half = int(math.ceil(setup.pupil_radius_px))
    return half, 2 * half + 1


class Workspace:
    """Scratch tensors reused by the untracked (no-autograd) evaluation of emitters in chunks.

    A renderer that evaluates its emitters chunk by chunk passes one workspace to every chunk, so each
    large intermediate (pupil planes, half-transformed planes, fields) is allocated once per call instead
    of once per chunk, and the chunks keep reusing memory that is still in cache. With the in-place steps
    of :meth:`PupilModel.pupil_planes` and :meth:`PupilModel.field_planes` this speeds up exact CPU
    rendering (benchmarks/simulation.py measures it). A tensor returned by a method that was given
    a workspace is only valid until the next call that uses the same workspace.
    """

    def __init__(self) -> None:
        self._tensors: dict[str, Tensor] = {}

    def remember(self, name: str, make: Callable[[], Tensor]) -> Tensor:
        """``make()`` on first use, the same tensor afterwards (values shared by every chunk of a call)."""
        if name not in self._tensors:
            self._tensors[name] = make()
        return self._tensors[name]

    def take(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised tensor of ``shape`` with ``like``'s dtype and device, reused when possible."""
        shape = tuple(shape)
        held = self._tensors.get(name)
        if held is None or held.shape != shape or held.dtype != like.dtype or held.device != like.device:
            held = like.new_empty(shape)
            self._tensors[name] = held
        return held


class PupilModel(nn.Module):
    """The pupil of one optical setup with a (fixed or learnable) phase mask.

    Args:
        setup: the optical setup.
        phase_mask: ``(N, N)`` phase in rad (numpy or tensor); ``None`` = clear pupil.
        learnable: register the mask as an ``nn.Parameter`` (PSF design) instead of a buffer.
        dtype: real dtype of buffers (float32 default; float64 for gradient checks).
        pupil_amplitude: optional ``(N, N)`` relative field amplitude (apodisation, ≥ 0) inside the
            aperture; ``None`` = uniform. It is rescaled to a mean square of 1 over the aperture, so the
            photon normalisation is that of the uniform pupil.

    Buffers (all on the K × K aperture box, K = 2⌈R⌉ + 1):
        ``kappa`` ``(K,)`` spatial frequency in cycles per camera pixel, ``(k − N//2)/N``;
        ``kz_sample`` ``(K, K)`` rad/µm, k0·Re√(n_s² − ρ²); ``decay`` ``(K, K)`` 1/µm, k0·Im√(n_s² − ρ²)
        (evanescent super-critical light, objective aperture only); ``base_phase`` ``(K, K)`` rad,
        −k0·NFP·√(n_i² − ρ²) modulo 2π; ``amplitude`` ``(K, K)`` aperture times the (normalised) pupil
        amplitude (0 outside).
    """

    def __init__(
        self,
        setup: OpticalSetup,
        phase_mask: np.ndarray | Tensor | None = None,
        learnable: bool = False,
        dtype: torch.dtype = torch.float32,
        pupil_amplitude: np.ndarray | Tensor | None = None,
    ) -> None:
        super().__init__()
        self.setup = setup
        # the amplitude as given (None or (N, N) float64), for copies in another dtype (see fixed_copy)
        self.pupil_amplitude = (
            None
            if pupil_amplitude is None
            else np.array(
                pupil_amplitude.detach().cpu() if isinstance(pupil_amplitude, Tensor) else pupil_amplitude,
                dtype=np.float64,
            )
        )
        n = setup.pupil_grid
        half, k = _pupil_box(setup)
        self.box_half, self.box_size = half, k
        lo = n // 2 - half
        self._box = slice(lo, lo + k)

        idx = np.arange(k, dtype=np.float64) - half
        kappa = idx / n  # cycles per camera pixel
        fy, fx = np.meshgrid(kappa, kappa, indexing="ij")
        freq = np.hypot(fx, fy) / setup.pixel_size_um  # cycles/µm
        rho = setup.wavelength_um * freq
        k0 = 2 * np.pi / setup.wavelength_um
        amplitude = (rho < setup.aperture_na).astype(np.float64)
        if pupil_amplitude is not None:
            amplitude = amplitude * _normalised_amplitude(pupil_amplitude, n, amplitude, self._box)
        kz_immersion = k0 * np.sqrt(np.clip(setup.n_immersion**2 - rho**2, 0.0, None))
        base_phase = -setup.nfp_um * kz_immersion

        def buf(a: np.ndarray) -> Tensor:
            return torch.as_tensor(np.where(amplitude > 0, a, 0.0), dtype=dtype)

        self.register_buffer("kappa", torch.as_tensor(kappa, dtype=dtype), persistent=False)
        # folded order of the box axes (frequency indices 0, 1 … h, −1 … −h) and its inverse
        fold = np.concatenate([np.arange(half, k), np.arange(half - 1, -1, -1)])
        self.register_buffer("_fold", torch.as_tensor(fold), persistent=False)
        # the phase ramps' frequencies in folded order: index k − N//2 and κ (cycles per camera pixel)
        self.register_buffer("_frequency_index_folded", torch.as_tensor(fold - half), persistent=False)
        self.register_buffer("_kappa_folded", self.kappa[fold], persistent=False)
        self.register_buffer("_unfold", torch.as_tensor(np.argsort(fold)), persistent=False)
        self.register_buffer("amplitude", torch.as_tensor(amplitude, dtype=dtype), persistent=False)
        support = (rho < setup.aperture_na).astype(np.float64)
        self.register_buffer("support", torch.as_tensor(support, dtype=dtype), persistent=False)
        # The constant defocus phase only enters through exp(i·), so it is kept modulo 2π: smaller angles
        # keep more float32 precision when the depth and ramp phases are added to it.
        self.register_buffer("base_phase", buf(np.mod(base_phase, 2 * np.pi)), persistent=False)
        kz = k0 * np.sqrt((setup.n_sample**2 - rho**2).astype(np.complex128))
        self.register_buffer("kz_sample", buf(kz.real), persistent=False)
        self.register_buffer("decay", buf(kz.imag), persistent=False)
        self.has_decay = bool((self.decay > 0).any())
        # the same four buffers with both axes in folded order, as pupil_planes uses them
        for name in ("base_phase", "kz_sample", "amplitude", "decay"):
            natural = getattr(self, name)
            self.register_buffer(
                f"_{name}_folded", natural[self._fold][:, self._fold].contiguous(), persistent=False
            )
        # Σ_r |E(r)|² over one period = N²·Σ_f |P(f)|² (Parseval); |P| = amplitude at z = 0.
        self.energy_norm = float(n * n * np.square(amplitude).sum())

        mask = (
            torch.zeros(n, n, dtype=dtype)
            if phase_mask is None
            else torch.as_tensor(
                np.asarray(phase_mask) if not isinstance(phase_mask, Tensor) else phase_mask
            ).to(dtype)
        )
        if tuple(mask.shape) != (n, n):
            raise ValueError(
                f"phase mask has shape {tuple(mask.shape)}; setup '{setup.name}' needs ({n}, {n})"
            )
        if learnable:
            self.phase_mask = nn.Parameter(mask.clone())
        else:
            self.register_buffer("phase_mask", mask.clone())

    def fixed_copy(self, dtype: torch.dtype) -> PupilModel:
        """This pupil with its current mask as a fixed buffer, in ``dtype``, on the same device (the pupil
        amplitude kept)."""
        mask = self.phase_mask.detach().cpu().to(dtype)
        return PupilModel(self.setup, mask, dtype=dtype, pupil_amplitude=self.pupil_amplitude).to(
            self.kappa.device
        )

    # ------------------------------------------------------------------ pupil
    def amplitude_in_box(self) -> Tensor:
        """The model's pupil amplitude on the ``(K, K)`` aperture box (natural order, 0 outside)."""
        return self.amplitude

    def mask_in_box(self, phase_mask: Tensor | None = None) -> Tensor:
        """The mask's ``(K, K)`` aperture box (rad)."""
        mask = self.phase_mask if phase_mask is None else phase_mask
        return mask[self._box, self._box]

    def pupil_field(
        self,
        z: Tensor,
        shift_px: Tensor | None = None,
        phase_mask: Tensor | None = None,
        amplitude_scale: Tensor | None = None,
    ) -> Tensor:
        """Complex pupils ``(E, K, K)`` for depths ``z (E,)`` µm and sub-pixel shifts ``shift_px (E, 2)``
        = (column, row) position of the evaluation grid's origin pixel centre minus the emitter, in pixels.

        ``P = a·A·exp(i(Φ_mask − k0·NFP·√(n_i² − ρ²) + z·k0·√(n_s² − ρ²) − 2π κ·shift))``, with an optional
        per-emitter amplitude factor ``a = amplitude_scale (E,)``.
        """
        planes = self.pupil_planes(z, shift_px, phase_mask, amplitude_scale)
        field = torch.complex(planes[0], planes[1])
        return field[:, self._unfold][:, :, self._unfold]

    def pupil_planes(
        self,
        z: Tensor,
        shift_px: Tensor | None = None,
        phase_mask: Tensor | None = None,
        amplitude_scale: Tensor | None = None,
        workspace: Workspace | None = None,
        amplitude_box: Tensor | None = None,
    ) -> Tensor:
        """The pupils of :meth:`pupil_field` as real and imaginary planes ``(2, E, K, K)``, both axes in
        *folded order* (frequency indices 0, 1 … h, −1 … −h; see :meth:`field_planes`). The phases are
        summed as real numbers and turned into cos/sin once (one pass over the E × K × K pupils). Without
        autograd everything happens in place in the result (the phase is summed in the imaginary plane);
        ``workspace`` then supplies that tensor (:class:`Workspace`). ``amplitude_box`` ``(K, K)`` (natural
        order) replaces the model's own pupil amplitude, e.g. one being fitted; the caller keeps its mean
        square over the aperture at 1 (:meth:`amplitude_in_box` gives the model's own)."""
        z = z.reshape(-1, 1, 1)
        if workspace is None:
            fixed = self.fixed_phase(phase_mask)
        else:  # the same for every chunk of a call
            fixed = workspace.remember("fixed_phase", lambda: self.fixed_phase(phase_mask))
        ramps = None if shift_px is None else self._ramp_angle(shift_px)  # (E, 2, K)
        scale = None if amplitude_scale is None else amplitude_scale.to(fixed.dtype).reshape(-1, 1, 1)
        aperture = (
            self._amplitude_folded
            if amplitude_box is None
            else (amplitude_box * self.support)[self._fold][:, self._fold]
        )
        if _tracked(fixed, z, aperture, *(t for t in (ramps, scale) if t is not None)):
            angle = torch.addcmul(fixed, z, self._kz_sample_folded)
            if ramps is not None:
                angle = angle + ramps[:, 1].unsqueeze(2) + ramps[:, 0].unsqueeze(1)
            magnitude = aperture if scale is None else aperture * scale
            if self.has_decay:
                magnitude = magnitude * self._evanescent_decay(z)
            return torch.stack([torch.cos(angle), torch.sin(angle)]) * magnitude
        # no graph to keep: one (2, E, K, K) tensor, every step in place
        shape = (2, z.shape[0], *fixed.shape)
        planes = fixed.new_empty(shape) if workspace is None else workspace.take("pupil", shape, fixed)
        angle = torch.addcmul(fixed, z, self._kz_sample_folded, out=planes[1])
        if ramps is not None:
            angle.add_(ramps[:, 1].unsqueeze(2)).add_(ramps[:, 0].unsqueeze(1))
        torch.cos(angle, out=planes[0])
        angle.sin_()
        planes.mul_(aperture)
        if scale is not None:
            planes.mul_(scale)
        if self.has_decay:
            planes.mul_(self._evanescent_decay(z))
        return planes

    def _evanescent_decay(self, z: Tensor) -> Tensor:
        """Amplitude factor ``(E, K, K)`` of light beyond the critical angle (objective aperture only)."""
        return torch.exp(-z.clamp_min(0) * self._decay_folded)

    def fixed_phase(self, phase_mask: Tensor | None = None) -> Tensor:
        """The depth-independent pupil phase ``(K, K)`` (rad), mask plus the focus term, in folded order."""
        order = self._fold
        return self.mask_in_box(phase_mask)[order][:, order] + self._base_phase_folded

    def _ramp_angle(self, shift_px: Tensor) -> Tensor:
        """Phase −2π κ_k s (rad) of the ramps for shifts ``(E, 2)`` in pixels → ``(E, 2, K)``, k in folded
        order. The whole-pixel part of s is reduced modulo the DFT period in integer arithmetic, so float32
        keeps full precision far from the origin."""
        whole = torch.round(shift_px.detach())
        frac = shift_px - whole
        n = self.setup.pupil_grid
        cycles = torch.remainder(whole.long().unsqueeze(-1) * self._frequency_index_folded, n).to(frac.dtype)
        return torch.addcmul(cycles / n, frac.unsqueeze(-1), self._kappa_folded).mul_(-2 * math.pi)

    # ------------------------------------------------------------------ transform
    def folded_dft_matrix(self, size: int) -> Tensor:
        """``(K, P)`` real matrix [C; S]: C[k, j] = cos(2π k (j − P//2)/N) for k = 0 … h and S the sines
        for k = 1 … h (cached per size, device and dtype). The phase k·j is reduced modulo N in integers."""
        key = (size, self.kappa.device, self.kappa.dtype)
        cache = self.__dict__.setdefault("_dft_cache", {})
        if key not in cache:
            j = torch.arange(size, device=self.kappa.device) - size // 2
            k = torch.arange(self.box_half + 1, device=self.kappa.device)
            n = self.setup.pupil_grid
            angle = 2 * math.pi * torch.remainder(k.unsqueeze(1) * j.unsqueeze(0), n).to(self.kappa.dtype) / n
            cache[key] = torch.cat([torch.cos(angle), torch.sin(angle[1:])])
        return cache[key]

    def field_planes(
        self, planes: Tensor, shape: tuple[int, int], workspace: Workspace | None = None
    ) -> Tensor:
        """Camera fields ``(2, E, H, W)`` (real, imaginary) of pupils ``(2, E, K, K)`` in folded order, on
        an H × W pixel grid whose pixel ``(H//2, W//2)`` is the origin of the pupils' phase ramps.

        The transform E(r, c) = Σ_ky Σ_kx P(ky, kx)·W(ky, r)·W(kx, c) with W(k, j) = exp(−2πi k j/N) is
        done as two matrix products. As W(±k, j) = C(k, j) ∓ i·S(k, j), each product first folds the
        pupil's +k and −k entries together (Σ_k W·X = C·(X₊ + X₋) − i·S·(X₊ − X₋)) and then multiplies by
        the real matrix [C; S] of :meth:`folded_dft_matrix`: half the arithmetic of a complex product.
        With a ``workspace`` (untracked evaluation only) the intermediates are its reusable tensors and
        ``planes`` itself is folded in place (:class:`Workspace`).
        """
        height, width = shape
        if max(height, width) > self.setup.pupil_grid:
            raise ValueError(
                f"a {height}×{width}-pixel grid exceeds the DFT period of {self.setup.pupil_grid} pixels, "
                "so the PSF would wrap around: render through windows (optics window ≤ pupil_grid) or use "
                "a larger pupil_grid"
            )
        cols = self.folded_dft_matrix(width)
        rows = cols if height == width else self.folded_dft_matrix(height)
        # the optics stays in the pupil's precision under mixed-precision training (no bf16 products)
        with torch.autocast(planes.device.type, enabled=False):
            if workspace is None or _tracked(planes):
                half_planes = self._fold_pairs(planes, -1) @ cols  # (2, E, K, W): Σ over kx
                return rows.transpose(0, 1) @ self._fold_pairs(half_planes, -2)  # (2, E, H, W): Σ over ky
            two, count, size, _ = planes.shape
            h = self.box_half
            half_planes = workspace.take("half", (two, count, size, width), planes)
            fields = workspace.take("field", (two, count, height, width), planes)
            self._fold_pairs_in_place(planes, -1, workspace.take("fold_x", (count, size, h), planes))
            torch.matmul(planes, cols, out=half_planes)
            self._fold_pairs_in_place(half_planes, -2, workspace.take("fold_y", (count, h, width), planes))
            return torch.matmul(rows.transpose(0, 1), half_planes, out=fields)

    def _fold_pairs(self, planes: Tensor, dim: int) -> Tensor:
        """Fold (real, imag) planes ``(2, …)`` along ``dim`` (folded order) for the [C; S] product:
        real → [X_r(0), X_r(+k) + X_r(−k), X_i(+k) − X_i(−k)], imag → [X_i(0), X_i(+k) + X_i(−k),
        −(X_r(+k) − X_r(−k))]."""
        if not _tracked(planes):
            return self._fold_pairs_in_place(planes.clone(), dim)
        h = self.box_half
        positive, negative = planes.narrow(dim, 1, h), planes.narrow(dim, h + 1, h)
        sign = torch.tensor([1.0, -1.0], dtype=planes.dtype, device=planes.device)
        swapped = (positive - negative).flip(0) * sign.reshape(2, *[1] * (planes.ndim - 1))
        return torch.cat([planes.narrow(dim, 0, 1), positive + negative, swapped], dim)

    def _fold_pairs_in_place(self, planes: Tensor, dim: int, scratch: Tensor | None = None) -> Tensor:
        """:meth:`_fold_pairs` overwriting ``planes`` (no autograd), with ``scratch`` shaped like one plane's
        +k block as temporary storage. Returns ``planes``."""
        h = self.box_half
        positive, negative = planes.narrow(dim, 1, h), planes.narrow(dim, h + 1, h)
        difference = torch.sub(positive[1], negative[1], out=scratch)  # X_i(+k) − X_i(−k), for the real plane
        positive[1].add_(negative[1])
        torch.sub(negative[0], positive[0], out=negative[1])
        positive[0].add_(negative[0])
        negative[0].copy_(difference)
        return planes

    def fields_on_grid(self, pupil: Tensor, shape: tuple[int, int]) -> Tensor:
        """Complex camera fields ``(E, H, W)`` of complex pupils ``(E, K, K)`` (natural order; see
        :meth:`field_planes`)."""
        order = self._fold
        planes = torch.stack([pupil.real, pupil.imag])[:, :, order][:, :, :, order]
        field = self.field_planes(planes, shape)
        return torch.complex(field[0], field[1])

    def intensity_per_photon(self, field: Tensor) -> Tensor:
        """|E|² normalised so one full DFT period sums to 1."""
        return intensity(field) / self.energy_norm

    # ------------------------------------------------------------------ PSFs on pixel grids
    def psf_on_grid(
        self,
        xyz_um: Tensor,
        corner: Tensor,
        shape: tuple[int, int],
        phase_mask: Tensor | None = None,
        photons: Tensor | None = None,
        workspace: Workspace | None = None,
        amplitude_box: Tensor | None = None,
    ) -> Tensor:
        """PSFs (intensity per photon, or expected photons per pixel) of emitters on pixel grids.

        Args:
            xyz_um: ``(E, 3)`` positions (µm; x, y from the frame's top-left corner, z above the coverslip).
            corner: ``(E, 2)`` or ``(2,)`` int (row, column) of each grid's top-left pixel in the frame.
            shape: (H, W) of the grids, each ≤ N.
            phase_mask: optional ``(N, N)`` mask overriding the pupil's own.
            photons: optional ``(E,)`` photon counts; the result is then in photons per pixel (the count
                enters the pupil amplitude as √photons unless a gradient w.r.t. the photons is needed).
            workspace: reusable scratch tensors for untracked evaluation (:class:`Workspace`); the result
                then lives in the workspace and is overwritten by its next use.
            amplitude_box: optional ``(K, K)`` pupil amplitude replacing the model's (see
                :meth:`pupil_planes`).
        Returns:
            ``(E, H, W)``; entry [e, i, j] is the intensity at the centre of frame pixel corner_e + (i, j).
        """
        height, width = shape
        origin = torch.as_tensor(corner, device=xyz_um.device).to(xyz_um.dtype).reshape(-1, 2)
        origin = origin + torch.tensor([height // 2, width // 2], dtype=xyz_um.dtype, device=xyz_um.device)
        pixel = xyz_um[:, :2] / self.setup.pixel_size_um  # (column, row), continuous
        shift = origin.flip(-1) + 0.5 - pixel  # grid origin pixel centre minus emitter, (column, row) px
        # photons (and the normalisation) enter the pupil amplitude as a square root, unless a gradient
        # w.r.t. the photons is wanted
        in_amplitude = photons is not None and not photons.requires_grad
        scale = (photons.to(xyz_um.dtype) / self.energy_norm).sqrt() if in_amplitude else None
        pupils = self.pupil_planes(xyz_um[:, 2], shift, phase_mask, scale, workspace, amplitude_box)
        planes = self.field_planes(pupils, shape, workspace)
        if _tracked(planes):
            power = torch.addcmul(planes[0].square(), planes[1], planes[1])  # |E|²
        else:
            power = planes[0].square_().addcmul_(planes[1], planes[1])
        if in_amplitude:
            return power
        psf = power / self.energy_norm
        return psf if photons is None else psf * photons.to(psf.dtype).reshape(-1, 1, 1)

    def window_corner(self, xyz_um: Tensor, window: int) -> Tensor:
        """``(E, 2)`` int64 (row, column) top-left pixel of a ``window``² grid centred on each emitter's
        pixel: ``floor(position/Δx) − window//2``."""
        pixel = torch.floor(xyz_um[:, :2].detach() / self.setup.pixel_size_um).long()
        return pixel.flip(-1) - window // 2

    def psf_zstack(self, z_um: Tensor | np.ndarray, window: int, phase_mask: Tensor | None = None) -> Tensor:
        """``(Z, P, P)`` PSFs (per photon) of an emitter at the centre of pixel ``(P//2, P//2)``."""
        z = torch.as_tensor(z_um, dtype=self.kappa.dtype, device=self.kappa.device).reshape(-1)
        centre = (window // 2 + 0.5) * self.setup.pixel_size_um
        xyz = torch.stack([torch.full_like(z, centre), torch.full_like(z, centre), z], dim=1)
        corner = torch.zeros(2, dtype=torch.long, device=z.device)
        return self.psf_on_grid(xyz, corner, (window, window), phase_mask)


def _normalised_amplitude(
    pupil_amplitude: np.ndarray | Tensor, n: int, aperture: np.ndarray, box: slice
) -> np.ndarray:
    """The ``(K, K)`` box of an ``(N, N)`` amplitude map, scaled to a mean square of 1 on the aperture."""
    values = np.asarray(
        pupil_amplitude.detach().cpu() if isinstance(pupil_amplitude, Tensor) else pupil_amplitude,
        dtype=np.float64,
    )
    if values.shape != (n, n):
        raise ValueError(f"pupil amplitude has shape {values.shape}; the pupil grid needs ({n}, {n})")
    values = values[box, box]
    inside = aperture > 0
    if not np.all(np.isfinite(values[inside])) or np.any(values[inside] < 0):
        raise ValueError("pupil amplitude must be finite and non-negative inside the aperture")
    mean_square = float(np.mean(values[inside] ** 2))
    if mean_square <= 0:
        raise ValueError("pupil amplitude is zero everywhere inside the aperture")
    return values / math.sqrt(mean_square)


def _tracked(*tensors: Tensor) -> bool:
    """Whether autograd records operations on these tensors (then no in-place shortcuts)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def intensity(field: Tensor) -> Tensor:
    """|E|² of complex fields (one fused pass: re² + im·im)."""
    return torch.addcmul(field.real.square(), field.imag, field.imag)


def window_energy(pupil: PupilModel, window: int, z_um: np.ndarray | Tensor) -> Tensor:
    """Fraction of each depth's photons that falls inside a ``window``² patch (1 = nothing truncated)."""
    with torch.no_grad():
        return pupil.psf_zstack(z_um, window).sum(dim=(-2, -1))
