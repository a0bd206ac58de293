"""The classical baseline: Poisson maximum-likelihood fitting with the same physical model as the network.

* :func:`fit_emitters` maximises the Poisson log-likelihood ``Σ_k d_k·log μ_k − μ_k`` of the expected
  counts ``μ = Σ_m N_m·h(x_m, y_m, z_m) + b (+ offset)`` over a ``window × window`` pixel window around
  each emitter, with the PSF ``h`` and its exact x/y/z derivatives taken from the pupil
  (:func:`dstorm3d.optics.crlb.psf_with_derivatives`). Steps are Levenberg–Marquardt steps on the
  Fisher-scoring system ``(JᵀWJ + λ·diag) δ = Jᵀ(d/μ − 1)``, ``W = 1/μ``; a step is kept only if it
  raises the likelihood. z is kept inside the setup's axial range, photons and background ≥ 0, and each
  emitter inside its window. Emitters are fitted alone or, with ``joint=True``, in groups whose windows
  overlap (one shared background; the Fisher information couples only overlapping windows); all groups
  of one size are one batch.

  Cameras with Gaussian read noise σ² (photons²) fit well with the usual shifted-Poisson approximation:
  add σ² to the frames and pass it as ``offset``.
* :class:`PsfZStack` and :func:`initial_guesses` detect and initialise without a network: normalised
  cross-correlation (NCC) of the frames with a precomputed PSF z-stack; the best slice gives z, the
  correlation peak x/y, a linear least-squares fit of ``N·h + b`` the photons.
* :func:`matching_pursuit` is the paper's MP comparison (Fig. 2, Supplementary Note 7): greedy
  fit-and-subtract until the likelihood ratio of the next emitter falls below a threshold.

Every public function takes the PSF as a :class:`~dstorm3d.optics.psf_model.PSFModel` (evaluated on the
CPU; its own blur combines in quadrature with ``blur_sigma_px``) or as a bare
:class:`~dstorm3d.optics.pupil.PupilModel` renderer (on its device; ``blur_sigma_px`` is then the only blur).

Conventions as everywhere in dstorm3d: positions in µm from the top-left corner of pixel (0, 0) (x along
columns, y along rows), z above the coverslip; frames, background and offsets in photons per pixel
(after camera preprocessing); photons = an emitter's signal over the whole image plane.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from ..emitters import Emitters
from ..optics.crlb import psf_with_derivatives
from ..optics.psf_model import PSFModel, renderer
from ..optics.pupil import PupilModel
from ..optics.render import filter_patches, intensity_filter, render_frames

__all__ = [
    "FitResult",
    "PsfZStack",
    "fit_emitters",
    "initial_guesses",
    "matching_pursuit",
    "pupil_with_dtype",
]

PARAMETERS_PER_EMITTER = 4  # x, y, z (µm), photons; one background per fit group follows them
#: Default MP stopping threshold on the log-likelihood ratio of the next emitter (nats). In pure Poisson
#: noise of 150 photons/px the best candidate of a 100 × 100 px frame fits to ≈ 5–15 nats (see tests).
DEFAULT_MIN_LOG_LIKELIHOOD_RATIO = 50.0
_MU_FLOOR = 1e-10  # expected counts are clamped here inside log μ
_MIN_DAMPING, _MAX_DAMPING = 1e-7, 1e10

FrameMap = float | Tensor | None


# ---------------------------------------------------------------------------------------------- results
@dataclass
class FitResult:
    """Fitted emitters, in the layout ``(B, M)`` of the initial emitters.

    Attributes:
        emitters: fitted positions (µm) and photons; ``score`` = ``log_likelihood_ratio``.
        background: ``(B, M)`` fitted background of each emitter's fit group, photons/px (NaN when the
            background was given).
        log_likelihood_ratio: ``(B, M)`` nats, log-likelihood of the fit minus that of the same model
            without the emitter (background refitted when it is free): the emitter's significance.
        converged: ``(B, M)`` bool, the last step was below the tolerance (or no step raised the
            likelihood any more).
        iterations: ``(B, M)`` int64, Levenberg–Marquardt iterations used.
        std: ``(B, M, 5)`` Cramér–Rao standard deviations at the estimate from the inverse Fisher
            information of the fit group: x, y, z (µm), photons, background.
    """

    emitters: Emitters
    background: Tensor
    log_likelihood_ratio: Tensor
    converged: Tensor
    iterations: Tensor
    std: Tensor


@dataclass
class _Groups:
    """Fit problems of equal size: each a set of M emitters sharing one background over the union of
    their windows (the region)."""

    data: Tensor  # (G, R, S) photons
    mask: Tensor  # (G, R, S) 1 on pixels that enter the likelihood (in the frame and in a member's window)
    offset: Tensor  # (G, R, S) fixed expected photons (known background, other emitters)
    region_corner: Tensor  # (G, 2) int64 frame (row, col) of the region's top-left pixel
    window_corner: Tensor  # (G, M, 2) int64 frame (row, col) of each member's window
    valid: Tensor  # (G, M) bool (all True: groups come in buckets of equal size)
    frame: Tensor  # (G,) int64
    slot: Tensor  # (G, M) int64 member's index in the input's M axis

    def subset(self, index: Tensor) -> _Groups:
        return _Groups(*(getattr(self, name)[index] for name in self.__dataclass_fields__))

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[-2]), int(self.data.shape[-1])


# ---------------------------------------------------------------------------------------------- helpers
def pupil_with_dtype(pupil: PupilModel, dtype: torch.dtype) -> PupilModel:
    """``pupil`` itself if its buffers have ``dtype``, else a fixed-mask copy in ``dtype`` on its device
    (its pupil amplitude kept)."""
    if pupil.kappa.dtype == dtype:
        return pupil
    return pupil.fixed_copy(dtype)


def _as_frames(frames: Tensor | np.ndarray, dtype: torch.dtype, device: torch.device) -> Tensor:
    out = torch.as_tensor(frames).to(device=device, dtype=dtype)
    if out.ndim == 2:
        out = out.unsqueeze(0)
    if out.ndim != 3:
        raise ValueError(f"frames must have shape (B, H, W) or (H, W), got {tuple(out.shape)}")
    return out


def _as_frame_map(value: FrameMap, frames: Tensor, name: str) -> Tensor | None:
    """A number, ``(B,)``, ``(H, W)``, ``(B, 1, 1)`` or ``(B, H, W)`` → ``(B, H, W)`` (or None)."""
    if value is None:
        return None
    t = torch.as_tensor(value).to(device=frames.device, dtype=frames.dtype)
    if t.ndim == 1 and t.shape[0] == frames.shape[0]:
        t = t.reshape(-1, 1, 1)
    try:
        return t.expand_as(frames)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} does not broadcast to frames {tuple(frames.shape)}"
        ) from None


def _as_emitters(
    initial: Emitters | Sequence[np.ndarray | Tensor], batch: int, dtype: torch.dtype, device: torch.device
) -> Emitters:
    """Emitters, or per-frame arrays ``(n_i, 3)`` (x, y, z µm) / ``(n_i, 4)`` (+ photons)."""
    if isinstance(initial, Emitters):
        emitters = initial.to(device, dtype)
    else:
        if len(initial) != batch:
            raise ValueError(f"initial has {len(initial)} frames, frames have {batch}")
        xyz, photons = [], []
        for item in initial:
            array = np.asarray(item.detach().cpu() if isinstance(item, Tensor) else item, dtype=np.float64)
            array = array.reshape(0, 3) if array.size == 0 else array.reshape(-1, array.shape[-1])
            if array.shape[1] not in (3, 4):
                raise ValueError(f"initial positions must be (n, 3) or (n, 4) arrays, got {array.shape}")
            xyz.append(array[:, :3])
            photons.append(array[:, 3] if array.shape[1] == 4 else np.full(len(array), np.nan))
        emitters = Emitters.from_lists(xyz, photons, device=device, dtype=dtype)
    if emitters.batch_size != batch:
        raise ValueError(f"initial emitters have {emitters.batch_size} frames, frames have {batch}")
    return emitters


def _crop(maps: Tensor, frame: Tensor, corner: Tensor, shape: tuple[int, int]) -> Tensor:
    """Regions ``(G, R, S)`` of ``maps (B, H, W)`` with top-left pixels ``corner (G, 2)``; outside → 0."""
    rows, cols = shape
    height, width = maps.shape[-2:]
    if frame.numel() == 0:
        return maps.new_zeros(0, rows, cols)
    pad = max(
        0,
        int(-corner.min()),
        int((corner[:, 0] + rows - height).max()),
        int((corner[:, 1] + cols - width).max()),
    )
    padded = F.pad(maps, (pad, pad, pad, pad)) if pad else maps
    r = corner[:, 0, None] + pad + torch.arange(rows, device=maps.device)
    c = corner[:, 1, None] + pad + torch.arange(cols, device=maps.device)
    return padded[frame[:, None, None], r[:, :, None], c[:, None, :]]


def _scatter_windows(
    patches: Tensor, corner: Tensor, target: Tensor, n_targets: int, shape: tuple[int, int]
) -> Tensor:
    """Sum windows ``(E, P, P)`` into ``(n_targets, R, S)`` at ``corner (E, 2)``; every window lies inside."""
    rows, cols = shape
    p = patches.shape[-1]
    offsets = (
        torch.arange(p, device=patches.device)[:, None] * cols
        + torch.arange(p, device=patches.device)[None, :]
    ).reshape(-1)
    start = target * (rows * cols) + corner[:, 0] * cols + corner[:, 1]
    index = (start[:, None] + offsets[None, :]).reshape(-1)
    out = patches.new_zeros(n_targets * rows * cols).index_add_(0, index, patches.reshape(-1))
    return out.reshape(n_targets, rows, cols)


def _log_likelihood(data: Tensor, mask: Tensor, mu: Tensor) -> Tensor:
    """Poisson log-likelihood without the data-only term, summed over the last two axes."""
    return (mask * (data * torch.log(mu.clamp_min(_MU_FLOOR)) - mu)).sum(dim=(-2, -1))


def _fit_constant(data: Tensor, mask: Tensor, base: Tensor, start: Tensor, iterations: int = 40) -> Tensor:
    """Maximum-likelihood constant ``b ≥ 0`` in ``μ = base + b`` (Newton on the concave 1-D problem).

    ``data, mask, base``: ``(n, R, S)``; ``start``: ``(n,)``. Returns ``(n,)``."""
    b = start.clamp_min(0.0).clone()
    for _ in range(iterations):
        mu = (base + b[:, None, None]).clamp_min(_MU_FLOOR)
        slope = (mask * (data / mu - 1.0)).sum(dim=(-2, -1))
        curvature = (mask * data / mu.square()).sum(dim=(-2, -1))  # −f''
        step = torch.where(curvature > 0, slope / curvature.clamp_min(1e-300), -torch.inf)
        b_next = (b + step).clamp_min(0.0)
        if bool(((b_next - b).abs() <= 1e-10 * (1.0 + b)).all()):
            return b_next
        b = b_next
    return b


# ---------------------------------------------------------------------------------------------- fit groups
def _cluster_members(corners: np.ndarray, window: int) -> np.ndarray:
    """Component labels of emitters whose ``window²`` windows (top-left ``corners (n, 2)``) overlap."""
    n = len(corners)
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    gap = np.abs(corners[:, None, :] - corners[None, :, :]).max(axis=-1)
    i, j = np.nonzero(gap < window)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _build_groups(
    frames: Tensor, emitters: Emitters, offset: Tensor | None, window: int, joint: bool, pupil: PupilModel
) -> list[_Groups]:
    """Split the emitters into fit groups (one per emitter, or per cluster of overlapping windows), in
    buckets of equal member count, each padded only to the pixels it needs."""
    device = frames.device
    batch, max_count = emitters.valid.shape
    corners = pupil.window_corner(emitters.xyz.reshape(-1, 3), window).reshape(batch, max_count, 2)
    frame_of, slot_of = emitters.valid.nonzero(as_tuple=True)
    if not joint:
        members = [(frame_of, slot_of[:, None])] if len(frame_of) else []
    else:
        clusters: dict[int, list[tuple[int, list[int]]]] = {}
        corners_np, frames_np, slots_np = corners.cpu().numpy(), frame_of.cpu().numpy(), slot_of.cpu().numpy()
        for b in np.unique(frames_np):
            slots = slots_np[frames_np == b]
            labels = _cluster_members(corners_np[b, slots], window)
            for label in np.unique(labels):
                cluster = slots[labels == label].tolist()
                clusters.setdefault(len(cluster), []).append((int(b), cluster))
        members = [
            (
                torch.tensor([b for b, _ in groups], dtype=torch.long, device=device),
                torch.tensor([slots for _, slots in groups], dtype=torch.long, device=device),
            )
            for _, groups in sorted(clusters.items())
        ]
    buckets = []
    for frame, slot in members:
        window_corner = corners[frame[:, None], slot]  # (G, M, 2)
        region_corner = window_corner.amin(dim=1)
        rows, cols = (window_corner.amax(dim=1) + window - region_corner).amax(dim=0).tolist()
        shape = (rows, cols)
        data = _crop(frames, frame, region_corner, shape)
        inside = _crop(torch.ones_like(frames[:1]).expand_as(frames), frame, region_corner, shape)
        n_groups, count = slot.shape
        relative = (window_corner - region_corner[:, None]).reshape(-1, 2)
        target = torch.arange(n_groups, device=device).repeat_interleave(count)
        covered = _scatter_windows(
            frames.new_ones(n_groups * count, window, window), relative, target, n_groups, shape
        )
        mask = inside * (covered > 0).to(frames.dtype)
        offset_regions = (
            _crop(offset, frame, region_corner, shape) if offset is not None else torch.zeros_like(data)
        )
        valid = torch.ones(n_groups, count, dtype=torch.bool, device=device)
        buckets.append(
            _Groups(data * mask, mask, offset_regions, region_corner, window_corner, valid, frame, slot)
        )
    return buckets


# ---------------------------------------------------------------------------------------------- the fitter
class _Model:
    """Expected counts of a bucket of fit groups (all members valid).

    θ ``(G, 4M + 1)`` holds x, y, z (µm) and photons N of each member, then the background b."""

    def __init__(
        self,
        pupil: PupilModel,
        window: int,
        blur_sigma_px: float | None,
        pixel_integration: bool,
        fit_background: bool,
    ) -> None:
        self.pupil, self.window = pupil, window
        self.blur_sigma_px, self.pixel_integration = blur_sigma_px, pixel_integration
        self.fit_background = fit_background

    def psf(self, groups: _Groups, theta: Tensor, derivatives: bool) -> tuple[Tensor, Tensor | None]:
        """PSFs per photon on the members' windows ``(G, M, P, P)`` and, with ``derivatives``, their x/y/z
        derivatives ``(G, M, 3, P, P)`` (per µm)."""
        n_groups, members = groups.valid.shape
        xyz = _member_parameters(theta)[..., :3].reshape(-1, 3)
        corner = groups.window_corner.reshape(-1, 2)
        shape = (self.window, self.window)
        if derivatives:
            h, dh = psf_with_derivatives(
                self.pupil, xyz, corner, shape, self.blur_sigma_px, self.pixel_integration
            )
            dh = dh.reshape(n_groups, members, 3, *shape)
        else:
            h = self.pupil.psf_on_grid(xyz, corner, shape)
            h, dh = filter_patches(h, _transfer(shape, self.blur_sigma_px, self.pixel_integration, h)), None
        return h.reshape(n_groups, members, *shape), dh

    def place(self, groups: _Groups, patches: Tensor, per_member: bool) -> Tensor:
        """Window patches ``(G, M, P, P)`` on the group regions: ``(G, M, R, S)`` or summed ``(G, R, S)``."""
        n_groups, members = groups.valid.shape
        relative = (groups.window_corner - groups.region_corner[:, None]).reshape(-1, 2)
        index = torch.arange(n_groups * members, device=patches.device)
        target = index if per_member else index // members
        placed = _scatter_windows(
            patches.reshape(-1, self.window, self.window),
            relative,
            target,
            n_groups * members if per_member else n_groups,
            groups.shape,
        )
        return placed.reshape(n_groups, members, *groups.shape) if per_member else placed

    def signals(self, groups: _Groups, theta: Tensor) -> Tensor:
        """Each member's expected photons on its group's region ``(G, M, R, S)``."""
        h, _ = self.psf(groups, theta, derivatives=False)
        return self.place(groups, _member_parameters(theta)[..., 3, None, None] * h, per_member=True)

    def evaluate(self, groups: _Groups, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``μ (G, R, S)`` and each member's ``∂μ/∂(x, y, z, N)`` on its window ``(G, M, 4, P, P)``."""
        h, dh = self.psf(groups, theta, derivatives=True)
        photons = _member_parameters(theta)[..., 3]
        signal = self.place(groups, photons[..., None, None] * h, per_member=False)
        mu = signal + theta[:, -1, None, None] + groups.offset
        return mu, torch.cat([photons[..., None, None, None] * dh, h[:, :, None]], dim=2)


def _member_parameters(theta: Tensor) -> Tensor:
    """View ``(G, M, 4)`` of the per-member parameters (x, y, z, photons) of θ ``(G, 4M + 1)``."""
    return theta[:, :-1].reshape(theta.shape[0], -1, PARAMETERS_PER_EMITTER)


def _transfer(
    window: tuple[int, int], blur_sigma_px: float | None, pixel_integration: bool, like: Tensor
) -> Tensor | None:
    """The rendering filter of :func:`dstorm3d.optics.render.intensity_filter` for one blur width."""
    sigma = None if blur_sigma_px is None else like.new_tensor([float(blur_sigma_px)])
    return intensity_filter(window, sigma, pixel_integration, like.dtype, like.device)


def _gather_windows(maps: Tensor, corner: Tensor, window: int) -> Tensor:
    """Windows ``(G, M, P, P)`` of region maps ``(G, R, S)`` at top-left pixels ``corner (G, M, 2)``."""
    pixel = torch.arange(window, device=maps.device)
    rows = (corner[..., 0, None] + pixel)[..., :, None]
    cols = (corner[..., 1, None] + pixel)[..., None, :]
    return maps[torch.arange(maps.shape[0], device=maps.device)[:, None, None, None], rows, cols]


@dataclass
class _Overlaps:
    """Member pairs (a, b) of a group whose windows overlap (a = b included): the Fisher information
    couples only these. ``index``/``inside`` map each pixel of a's window to b's window."""

    group: Tensor  # (n,)
    first: Tensor  # (n,)
    second: Tensor  # (n,)
    index: Tensor  # (n, P²) flat pixel of b's window at each pixel of a's window (clamped)
    inside: Tensor  # (n, P²) bool: that pixel lies in b's window

    @classmethod
    def of(cls, window_corner: Tensor, window: int) -> _Overlaps:
        shift = window_corner[:, :, None] - window_corner[:, None, :]  # (G, M, M, 2) corner_a − corner_b
        group, first, second = (shift.abs() < window).all(dim=-1).nonzero(as_tuple=True)
        offset = shift[group, first, second]
        pixel = torch.arange(window, device=window_corner.device)
        rows, cols = pixel + offset[:, :1], pixel + offset[:, 1:]  # (n, P) b-window row/col of a's
        inside = ((rows >= 0) & (rows < window))[:, :, None] & ((cols >= 0) & (cols < window))[:, None, :]
        index = rows.clamp(0, window - 1)[:, :, None] * window + cols.clamp(0, window - 1)[:, None, :]
        return cls(group, first, second, index.flatten(1), inside.flatten(1))

    def subset(self, index: Tensor, n_groups: int) -> _Overlaps:
        """The pairs of groups ``index``, renumbered to their positions in ``index``."""
        position = torch.full((n_groups,), -1, dtype=torch.long, device=index.device)
        position[index] = torch.arange(len(index), device=index.device)
        keep = position[self.group] >= 0
        return _Overlaps(
            position[self.group[keep]],
            self.first[keep],
            self.second[keep],
            self.index[keep],
            self.inside[keep],
        )


def _normal_equations(
    model: _Model, groups: _Groups, overlaps: _Overlaps, mu: Tensor, grads: Tensor
) -> tuple[Tensor, Tensor]:
    """Score ``(G, Q)`` of the Poisson log-likelihood and Fisher information ``(G, Q, Q)``, Q = 4M + 1.

    ``score = Jᵀ(d/μ − 1)``, ``F = Jᵀ diag(1/μ) J`` over the masked pixels, with J's member columns
    nonzero only on the member's window."""
    n_groups, members = groups.valid.shape
    mu = mu.clamp_min(_MU_FLOOR)
    weight = groups.mask / mu
    residual = groups.mask * (groups.data / mu - 1.0)
    relative = groups.window_corner - groups.region_corner[:, None]
    weight_windows = _gather_windows(weight, relative, model.window).flatten(-2)  # (G, M, P²)
    residual_windows = _gather_windows(residual, relative, model.window).flatten(-2)
    flat = grads.flatten(-2)  # (G, M, 4, P²)
    k = PARAMETERS_PER_EMITTER
    score = grads.new_zeros(n_groups, k * members + 1)
    score[:, :-1] = (flat * residual_windows[:, :, None]).sum(dim=-1).reshape(n_groups, -1)
    g, a, b = overlaps.group, overlaps.first, overlaps.second
    weighted = flat[g, a] * weight_windows[g, a][:, None]  # (n, 4, P²)
    other = flat[g, b].gather(-1, overlaps.index[:, None].expand(-1, k, -1)) * overlaps.inside[:, None]
    blocks = grads.new_zeros(n_groups, members, k, members, k)
    blocks[g, a, :, b, :] = weighted @ other.transpose(1, 2)
    fisher = grads.new_zeros(n_groups, k * members + 1, k * members + 1)
    fisher[:, :-1, :-1] = blocks.reshape(n_groups, k * members, k * members)
    if model.fit_background:
        score[:, -1] = residual.sum(dim=(-2, -1))
        cross = (flat * weight_windows[:, :, None]).sum(dim=-1).reshape(n_groups, -1)
        fisher[:, :-1, -1] = cross
        fisher[:, -1, :-1] = cross
        fisher[:, -1, -1] = weight.sum(dim=(-2, -1))
    return score, fisher


def _free_parameters(groups: _Groups, model: _Model) -> Tensor:
    """``(G, Q)`` bool: parameters the fit may change."""
    free = groups.valid.repeat_interleave(PARAMETERS_PER_EMITTER, dim=1)
    return torch.cat([free, free.new_full((free.shape[0], 1), model.fit_background)], dim=1)


def _bounds(
    groups: _Groups, pupil: PupilModel, window: int, z_range_um: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """Lower/upper bounds ``(G, Q)``: x, y inside the member's window (1 px margin), z in range, N, b ≥ 0."""
    n_groups, max_count = groups.valid.shape
    dtype, device = groups.data.dtype, groups.data.device
    pixel = pupil.setup.pixel_size_um
    lower = torch.zeros(n_groups, max_count, PARAMETERS_PER_EMITTER, dtype=dtype, device=device)
    upper = torch.full_like(lower, torch.inf)
    corner = groups.window_corner.to(dtype)
    lower[..., 0], upper[..., 0] = (corner[..., 1] + 1) * pixel, (corner[..., 1] + window - 1) * pixel
    lower[..., 1], upper[..., 1] = (corner[..., 0] + 1) * pixel, (corner[..., 0] + window - 1) * pixel
    lower[..., 2], upper[..., 2] = z_range_um
    tail = torch.tensor([[0.0]], dtype=dtype, device=device).expand(n_groups, 1)
    return (
        torch.cat([lower.reshape(n_groups, -1), tail], 1),
        torch.cat([upper.reshape(n_groups, -1), torch.full_like(tail, torch.inf)], 1),
    )


def _initial_theta(model: _Model, groups: _Groups, xyz: Tensor, photons: Tensor) -> Tensor:
    """θ ``(G, Q)`` from member positions/photons ``(G, M, 3)``, ``(G, M)``: photons that are missing
    (NaN or ≤ 0) and the background from a linear least-squares fit of ``Σ N_m h_m + b`` to the data."""
    n_groups, members = groups.valid.shape
    params = torch.cat([xyz, torch.ones_like(photons)[..., None]], dim=-1)
    theta = torch.cat([params.reshape(n_groups, -1), photons.new_zeros(n_groups, 1)], dim=1)
    pixels = groups.mask.flatten(1)
    constant = pixels if model.fit_background else torch.zeros_like(pixels)
    design = torch.cat([model.signals(groups, theta).flatten(2), constant[:, None]], dim=1)  # PSFs at N = 1
    design = design * pixels[:, None]
    target = (groups.data - groups.offset).flatten(1) * pixels
    gram = design @ design.transpose(1, 2)
    scale = torch.diagonal(gram, dim1=1, dim2=2).clamp_min(1e-30).rsqrt()
    ridge = 1e-9 * torch.eye(members + 1, dtype=gram.dtype, device=gram.device)
    gram = gram * scale[:, :, None] * scale[:, None, :] + ridge
    coef = torch.linalg.solve(gram, (design @ target[..., None]).squeeze(-1) * scale) * scale
    given = torch.isfinite(photons) & (photons > 0)
    params[..., 3] = torch.where(given, photons, coef[:, :-1].clamp_min(1.0))
    background = coef[:, -1].clamp_min(0.0) if model.fit_background else torch.zeros_like(coef[:, -1])
    return torch.cat([params.reshape(n_groups, -1), background[:, None]], dim=1)


def _levenberg_marquardt(
    model: _Model,
    groups: _Groups,
    overlaps: _Overlaps,
    theta: Tensor,
    lower: Tensor,
    upper: Tensor,
    max_iterations: int,
    tolerance: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Maximise the Poisson likelihood of every group; returns θ, μ, member derivatives, converged and
    iterations. Damping follows Nielsen: shrink by the gain ratio on success, double (and double the
    factor) on failure."""
    n_groups, q = theta.shape
    free = _free_parameters(groups, model)
    mu, grads = model.evaluate(groups, theta)
    loglik = _log_likelihood(groups.data, groups.mask, mu)
    damping = torch.full((n_groups,), 1e-3, dtype=theta.dtype, device=theta.device)
    growth = torch.full_like(damping, 2.0)
    converged = torch.zeros(n_groups, dtype=torch.bool, device=theta.device)
    iterations = torch.zeros(n_groups, dtype=torch.long, device=theta.device)
    eye = torch.eye(q, dtype=theta.dtype, device=theta.device)
    for _ in range(max_iterations):
        active = (~converged).nonzero(as_tuple=True)[0]
        if len(active) == 0:
            break
        sub = groups.subset(active)
        pairs = overlaps.subset(active, n_groups)
        score, fisher = _normal_equations(model, sub, pairs, mu[active], grads[active])
        diagonal = torch.diagonal(fisher, dim1=1, dim2=2)
        scale = torch.where(free[active] & (diagonal > 0), diagonal.clamp_min(1e-300).rsqrt(), 0.0)
        system = fisher * scale[:, :, None] * scale[:, None, :] + damping[active, None, None] * eye
        scaled_step, info = torch.linalg.solve_ex(system, score * scale)
        scaled_step = torch.where((info == 0)[:, None], scaled_step, 0.0)
        trial = (theta[active] + scaled_step * scale).clamp(lower[active], upper[active])
        mu_t, grads_t = model.evaluate(sub, trial)
        loglik_t = _log_likelihood(sub.data, sub.mask, mu_t)
        step = trial - theta[active]
        predicted = (step * score).sum(1) - 0.5 * torch.einsum("gi,gij,gj->g", step, fisher, step)
        gain = (loglik_t - loglik[active]) / predicted.clamp_min(1e-300)
        better = loglik_t > loglik[active]
        small = step.abs().mul(diagonal.clamp_min(0).sqrt()).where(free[active], 0.0).amax(1)
        keep = active[better]
        theta[keep], mu[keep] = trial[better], mu_t[better]
        grads[keep], loglik[keep] = grads_t[better], loglik_t[better]
        shrink = (1 - (2 * gain - 1).clamp(max=1.0) ** 3).clamp(min=1 / 3)
        damping[active] = torch.where(
            better, (damping[active] * shrink).clamp_min(_MIN_DAMPING), damping[active] * growth[active]
        )
        growth[active] = torch.where(better, 2.0, growth[active] * 2)
        iterations[active] += 1
        converged[active] = (small < tolerance) | (damping[active] > _MAX_DAMPING)
    return theta, mu, grads, converged, iterations


def _significance(model: _Model, groups: _Groups, theta: Tensor, mu: Tensor) -> Tensor:
    """Log-likelihood ratio ``(G, M)`` of each member: the fit against the fit without that member (the
    background refitted when it is free)."""
    n_groups, members = groups.valid.shape
    signal = model.signals(groups, theta)  # (G, M, R, S)
    data = groups.data[:, None].expand_as(signal).flatten(0, 1)
    mask = groups.mask[:, None].expand_as(signal).flatten(0, 1)
    full = mu[:, None].expand_as(signal).flatten(0, 1)
    without = full - signal.flatten(0, 1)
    if model.fit_background:
        background = theta[:, -1].repeat_interleave(members)
        base = without - background[:, None, None]
        area = mask.sum(dim=(-2, -1)).clamp_min(1.0)
        start = background + (signal.flatten(0, 1) * mask).sum(dim=(-2, -1)) / area
        without = base + _fit_constant(data, mask, base, start)[:, None, None]
    ratio = _log_likelihood(data, mask, full) - _log_likelihood(data, mask, without)
    return ratio.reshape(n_groups, members)


def _fisher_std(fisher: Tensor, free: Tensor) -> Tensor:
    """``(G, Q)`` square roots of the diagonal of the inverse Fisher information over free parameters."""
    outer = free[:, :, None] & free[:, None, :]
    eye = torch.eye(fisher.shape[-1], dtype=fisher.dtype, device=fisher.device).expand_as(fisher)
    inverse, info = torch.linalg.inv_ex(torch.where(outer, fisher, eye))
    variance = torch.diagonal(inverse, dim1=1, dim2=2).where((info == 0)[:, None], torch.nan)
    return variance.clamp_min(0).sqrt().where(free, torch.nan)


def fit_emitters(
    pupil: PSFModel | PupilModel,
    frames: Tensor | np.ndarray,
    initial: Emitters | Sequence[np.ndarray | Tensor],
    background: FrameMap = None,
    offset: FrameMap = None,
    window: int = 31,
    joint: bool = False,
    max_iterations: int = 50,
    tolerance: float = 1e-3,
    z_range_um: tuple[float, float] | None = None,
    blur_sigma_px: float | None = None,
    pixel_integration: bool = False,
    dtype: torch.dtype = torch.float64,
) -> FitResult:
    """Poisson maximum-likelihood estimates of (x, y, z, photons, background) for every emitter.

    Args:
        pupil: the PSF model or pupil (used as a fixed-mask copy in ``dtype``; see the module docstring).
        frames: ``(B, H, W)`` or ``(H, W)`` photons per pixel.
        initial: starting points: :class:`Emitters` ``(B, M)`` (positions µm; photons NaN or ≤ 0 =
            unknown), or per-frame arrays ``(n_i, 3)`` x, y, z (µm) or ``(n_i, 4)`` with photons. Each
            emitter's ``window × window`` fit window is centred on its initial pixel and stays fixed.
        background: ``None`` fits one constant background (photons/px) per fit group; a number or a map
            broadcastable to ``(B, H, W)`` fixes it.
        offset: known expected photons/px added to the model (e.g. emitters fitted elsewhere),
            broadcastable to ``(B, H, W)``.
        window: fit window side in pixels (odd, ≤ the setup's pupil grid).
        joint: fit emitters whose windows overlap together (one shared background over the union of
            their windows); otherwise each emitter alone on its own window.
        max_iterations: Levenberg–Marquardt iterations at most.
        tolerance: stop when no parameter moves by more than this many (Fisher) standard deviations.
        z_range_um: allowed z (default: the setup's axial range).
        blur_sigma_px, pixel_integration: the same PSF filters as in rendering.
        dtype: working precision.
    Returns:
        :class:`FitResult` in the layout ``(B, M)`` of ``initial``; padding entries are passed through.
    """
    pupil, blur_sigma_px = renderer(pupil, dtype, blur_sigma_px)
    device = pupil.kappa.device
    model_pupil = pupil_with_dtype(pupil, dtype)
    pupil.setup.check_window(window)
    data = _as_frames(frames, dtype, device)
    emitters = _as_emitters(initial, data.shape[0], dtype, device)
    fixed = _as_frame_map(offset, data, "offset")
    known_background = _as_frame_map(background, data, "background")
    if known_background is not None:
        fixed = known_background if fixed is None else fixed + known_background
    z_range = tuple(float(v) for v in (z_range_um or pupil.setup.z_range_um))
    start_xyz = emitters.xyz.clone()
    start_xyz[..., 2] = start_xyz[..., 2].clamp(*z_range)
    start = Emitters(start_xyz, emitters.photons, emitters.valid)

    buckets = _build_groups(data, start, fixed, window, joint, model_pupil)
    model = _Model(model_pupil, window, blur_sigma_px, pixel_integration, fit_background=background is None)
    batch, max_count = emitters.valid.shape
    xyz_out, photons_out = emitters.xyz.clone(), emitters.photons.clone()
    background_out = torch.full((batch, max_count), torch.nan, dtype=dtype, device=device)
    ratio_out = torch.full_like(background_out, torch.nan)
    std_out = torch.full((batch, max_count, 5), torch.nan, dtype=dtype, device=device)
    converged_out = torch.zeros(batch, max_count, dtype=torch.bool, device=device)
    iterations_out = torch.zeros(batch, max_count, dtype=torch.long, device=device)
    for groups in buckets:
        with torch.no_grad():
            g_idx, m_idx = groups.valid.nonzero(as_tuple=True)  # all members of a bucket are valid
            frame_of, slot_of = groups.frame[g_idx], groups.slot[g_idx, m_idx]
            theta = _initial_theta(
                model,
                groups,
                start.xyz[groups.frame[:, None], groups.slot],
                start.photons[groups.frame[:, None], groups.slot],
            )
            lower, upper = _bounds(groups, model_pupil, window, z_range)
            overlaps = _Overlaps.of(groups.window_corner, window)
            theta, mu, grads, converged, iterations = _levenberg_marquardt(
                model, groups, overlaps, theta.clamp(lower, upper), lower, upper, max_iterations, tolerance
            )
            ratio = _significance(model, groups, theta, mu)
            _, fisher = _normal_equations(model, groups, overlaps, mu, grads)
            std = _fisher_std(fisher, _free_parameters(groups, model))
        params = _member_parameters(theta)[g_idx, m_idx]
        xyz_out[frame_of, slot_of] = params[:, :3]
        photons_out[frame_of, slot_of] = params[:, 3]
        background_out[frame_of, slot_of] = theta[g_idx, -1] if background is None else torch.nan
        ratio_out[frame_of, slot_of] = ratio[g_idx, m_idx]
        member_std = _member_parameters(std)[g_idx, m_idx]
        std_out[frame_of, slot_of] = torch.cat([member_std, std[g_idx, -1:]], dim=1)
        converged_out[frame_of, slot_of] = converged[g_idx]
        iterations_out[frame_of, slot_of] = iterations[g_idx]
    fitted = Emitters(xyz_out, photons_out, emitters.valid.clone(), emitters.labelled, ratio_out)
    return FitResult(fitted, background_out, ratio_out, converged_out, iterations_out, std_out)


# ---------------------------------------------------------------------------------------------- detection
class PsfZStack:
    """PSF z-stack templates for normalised cross-correlation (NCC) with frames.

    Detection runs in two stages: an FFT correlation of whole frames with every ``search_z_step_um``
    slice gives a best-NCC map whose local maxima are candidates; at each candidate the data window is
    then compared with every ``z_step_um`` slice and the neighbouring pixels, which gives z and x/y.

    Args:
        pupil: the PSF model or pupil (see the module docstring).
        window: template side in pixels (the emitter sits at the centre of pixel ``(P//2, P//2)``).
        z_step_um: fine slice spacing; slices span ``z_range_um`` (default: the setup's range) inclusive.
        search_z_step_um: slice spacing of the whole-frame correlation (rounded to a multiple of z_step_um).
        blur_sigma_px, pixel_integration: the same PSF filters as in rendering.
        dtype: precision of the templates (float32 is plenty for detection).
    """

    def __init__(
        self,
        pupil: PSFModel | PupilModel,
        window: int = 31,
        z_step_um: float = 0.1,
        search_z_step_um: float = 0.2,
        z_range_um: tuple[float, float] | None = None,
        blur_sigma_px: float | None = None,
        pixel_integration: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        pupil, blur_sigma_px = renderer(pupil, torch.float64, blur_sigma_px)
        pupil.setup.check_window(window)
        model = pupil_with_dtype(pupil, torch.float64)
        z0, z1 = z_range_um or pupil.setup.z_range_um
        count = int(round((z1 - z0) / z_step_um)) + 1
        z = torch.linspace(z0, z1, count, dtype=torch.float64, device=model.kappa.device)
        self.window, self.pixel_size_um = window, pupil.setup.pixel_size_um
        with torch.no_grad():
            psf = model.psf_zstack(z, window)
            psf = filter_patches(psf, _transfer((window, window), blur_sigma_px, pixel_integration, psf))
        #: ``(Z,)`` slice depths (µm).
        self.z_um = z.to(dtype)
        #: ``(Z, P, P)`` PSF per photon of each slice.
        self.psf = psf.to(dtype)
        centred = psf - psf.mean(dim=(-2, -1), keepdim=True)
        #: ``(Z, P, P)`` zero-mean, unit-norm templates.
        self.templates = (centred / centred.flatten(1).norm(dim=1)[:, None, None]).to(dtype)
        stride = max(1, int(round(search_z_step_um / z_step_um)))
        search = list(range(0, count, stride))
        if search[-1] != count - 1:
            search.append(count - 1)
        #: indices of the slices used by the whole-frame correlation.
        self.search_slices = torch.tensor(search, device=z.device)
        self._spectra: dict[tuple[int, int], Tensor] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.psf.dtype

    def _padded(self, frames: Tensor, margin: int = 0) -> Tensor:
        """Frames padded by the template's half-widths + ``margin`` with each frame's median."""
        half = self.window // 2 + margin
        fill = frames.flatten(1).median(dim=1).values
        batch, height, width = frames.shape
        size = (height + self.window - 1 + 2 * margin, width + self.window - 1 + 2 * margin)
        padded = fill[:, None, None].expand(batch, *size).clone()
        padded[:, half : half + height, half : half + width] = frames
        return padded

    def correlate(self, frames: Tensor, max_elements: int = 2**23) -> tuple[Tensor, Tensor]:
        """Best NCC over the search slices ``(B, H, W)`` of the window centred on each pixel, and the index
        (into all slices) of the best one.

        The window centred on pixel (r, c) covers rows ``r − P//2 … r − P//2 + P − 1`` (likewise columns);
        outside the frame it is filled with the frame's median."""
        frames = frames.to(self.dtype)
        batch, height, width = frames.shape
        padded = self._padded(frames)
        size = (_fast_size(padded.shape[-2]), _fast_size(padded.shape[-1]))
        if size not in self._spectra:
            self._spectra[size] = torch.fft.rfft2(self.templates[self.search_slices], s=size).conj()
        spectra = self._spectra[size]
        n_slices = spectra.shape[0]
        norm = self._window_norm(padded)
        best = frames.new_full((batch, height, width), -torch.inf)
        best_slice = torch.zeros(batch, height, width, dtype=torch.long, device=frames.device)
        plane = size[0] * size[1]
        slice_chunk = max(1, min(n_slices, max_elements // plane))
        chunk = max(1, max_elements // (slice_chunk * plane))
        for lo in range(0, batch, chunk):
            spectrum = torch.fft.rfft2(padded[lo : lo + chunk], s=size)[:, None]
            for z_lo in range(0, n_slices, slice_chunk):
                product = spectrum * spectra[z_lo : z_lo + slice_chunk]
                corr = torch.fft.irfft2(product, s=size)[..., :height, :width]
                value, index = corr.max(dim=1)
                better = value > best[lo : lo + chunk]
                best[lo : lo + chunk] = torch.where(better, value, best[lo : lo + chunk])
                best_slice[lo : lo + chunk] = torch.where(better, index + z_lo, best_slice[lo : lo + chunk])
        return best / norm, self.search_slices[best_slice]

    def _window_norm(self, padded: Tensor) -> Tensor:
        """``‖d − mean(d)‖`` over every ``P × P`` window of padded frames → ``(B, H, W)``."""
        p = self.window
        padded = padded.double()  # sums of squares: avoid cancellation

        def box(x: Tensor) -> Tensor:
            c = F.pad(x.cumsum(-1).cumsum(-2), (1, 0, 1, 0))
            return c[:, p:, p:] - c[:, :-p, p:] - c[:, p:, :-p] + c[:, :-p, :-p]

        total, squares = box(padded), box(padded.square())
        return (squares - total.square() / p**2).clamp_min(1e-12).sqrt().to(self.dtype)

    def _windows(self, padded: Tensor, frame: Tensor, row: Tensor, col: Tensor, size: int) -> Tensor:
        """``size × size`` windows ``(..., size, size)`` of padded frames, top-left at padded (row, col)."""
        offsets = torch.arange(size, device=padded.device)
        return padded[
            frame[..., None, None],
            row[..., None, None] + offsets[:, None],
            col[..., None, None] + offsets[None, :],
        ]

    def _z_profile(
        self, padded: Tensor, frame: Tensor, row: Tensor, col: Tensor, margin: int
    ) -> tuple[Tensor, Tensor]:
        """NCC ``(..., Z)`` of every slice with the window centred on frame pixel ``(row, col)`` of frames
        padded with an extra ``margin``, and the zero-mean window ``(..., P, P)``."""
        p = self.window
        windows = self._windows(padded, frame, row + margin, col + margin, p)
        centred = windows - windows.mean(dim=(-2, -1), keepdim=True)
        norm = centred.flatten(-2).norm(dim=-1).clamp_min(1e-12)
        return torch.einsum("...uv,zuv->...z", centred, self.templates) / norm[..., None], centred

    def detect(
        self,
        frames: Tensor,
        max_per_frame: int = 1,
        min_correlation: float = 0.3,
        min_distance_px: int | None = None,
    ) -> Emitters:
        """Up to ``max_per_frame`` NCC peaks per frame as emitters ``(B, max_per_frame)``.

        Candidates are local maxima (within ``min_distance_px``, default P//4) of the search map with
        NCC ≥ ``min_correlation``. Each is refined with the fine slices: the best slice at the candidate,
        the best pixel within ±2 px for that slice (x/y: parabola through its neighbours), the best slice
        there (z: parabola over the neighbouring slices); photons: least squares ``N·h + b`` on the window.
        ``score``: the NCC of the search map."""
        frames = frames.to(self.dtype)
        batch, height, width = frames.shape
        ncc, _ = self.correlate(frames)
        radius = self.window // 4 if min_distance_px is None else int(min_distance_px)
        pooled = F.max_pool2d(ncc[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0] if radius else ncc
        peaks = torch.where((ncc >= pooled) & (ncc >= min_correlation), ncc, -torch.inf)
        score, flat = peaks.flatten(1).topk(min(max_per_frame, height * width), dim=1)
        valid = torch.isfinite(score)
        row, col = flat // width, flat % width
        frame = torch.arange(batch, device=frames.device)[:, None].expand_as(row)
        reach = 2
        padded = self._padded(frames, margin=reach + 1)
        # best fine slice at the candidate, then the best pixel for it within ±reach
        profile, _ = self._z_profile(padded, frame, row, col, reach + 1)
        template = self.templates[profile.argmax(dim=-1)]  # (B, K, P, P)
        p, span = self.window, 2 * reach + 3
        area = self._windows(padded, frame, row, col, p + span - 1)  # shifts −(reach+1) … +(reach+1)
        candidates = area.reshape(1, -1, p + span - 1, p + span - 1)
        # zero-mean templates: Σ (d − mean d)·t = Σ d·t, one grouped correlation per candidate
        local = F.conv2d(candidates, template.reshape(-1, 1, p, p), groups=candidates.shape[1])
        norm = self._window_norm(area.flatten(0, 1)).reshape(*row.shape, span, span)
        local = local.reshape(*row.shape, span, span) / norm
        inner = local[..., 1:-1, 1:-1]  # offsets −reach … +reach; the outer ring only serves the parabola
        best = inner.flatten(-2).argmax(dim=-1)
        dr, dc = best // (2 * reach + 1), best % (2 * reach + 1)

        def at(i: Tensor, j: Tensor) -> Tensor:
            return local.flatten(-2).gather(-1, (i * span + j)[..., None])[..., 0]

        i, j = dr + 1, dc + 1
        dx = _vertex(at(i, j - 1), at(i, j), at(i, j + 1))
        dy = _vertex(at(i - 1, j), at(i, j), at(i + 1, j))
        row = (row + dr - reach).clamp(0, height - 1)
        col = (col + dc - reach).clamp(0, width - 1)
        # z at the refined pixel
        profile, centred = self._z_profile(padded, frame, row, col, reach + 1)
        top = profile.argmax(dim=-1)
        n_slices = len(self.z_um)

        def slice_value(index: Tensor) -> Tensor:
            return profile.gather(-1, index.clamp(0, n_slices - 1)[..., None])[..., 0]

        dz = _vertex(slice_value(top - 1), slice_value(top), slice_value(top + 1))
        dz = dz.where((top > 0) & (top < n_slices - 1), 0.0)
        step = float(self.z_um[1] - self.z_um[0]) if n_slices > 1 else 0.0
        z = (self.z_um[top] + dz * step).clamp(float(self.z_um[0]), float(self.z_um[-1]))
        # photons: least squares d ≈ N·h + b over the window with the best slice's PSF
        h = self.psf[top]
        h_centred = h - h.mean(dim=(-2, -1), keepdim=True)
        photons = (centred * h_centred).sum(dim=(-2, -1)) / h_centred.square().sum(dim=(-2, -1))
        photons = photons.clamp_min(1.0)
        x = (col.to(frames.dtype) + 0.5 + dx) * self.pixel_size_um
        y = (row.to(frames.dtype) + 0.5 + dy) * self.pixel_size_um
        xyz = torch.stack([x, y, z], dim=-1).where(valid[..., None], 0.0)
        return Emitters(xyz, photons.where(valid, 0.0), valid, score=score.where(valid, 0.0))


def _vertex(left: Tensor, centre: Tensor, right: Tensor) -> Tensor:
    """Offset in [−½, ½] of the vertex of the parabola through three equally spaced values (0 unless
    concave)."""
    curvature = left - 2 * centre + right
    offset = torch.where(curvature < 0, 0.5 * (left - right) / curvature.where(curvature < 0, -1.0), 0.0)
    return offset.clamp(-0.5, 0.5)


def _fast_size(n: int) -> int:
    """The smallest 2·3·5-smooth integer ≥ n (fast FFT length)."""
    while True:
        m = n
        for factor in (2, 3, 5):
            while m % factor == 0:
                m //= factor
        if m == 1:
            return n
        n += 1


def initial_guesses(
    pupil: PSFModel | PupilModel,
    frames: Tensor | np.ndarray,
    max_emitters: int = 1,
    window: int = 31,
    z_step_um: float = 0.1,
    search_z_step_um: float = 0.2,
    min_correlation: float = 0.3,
    min_distance_px: int | None = None,
    blur_sigma_px: float | None = None,
    pixel_integration: bool = False,
    zstack: PsfZStack | None = None,
) -> Emitters:
    """Starting points for :func:`fit_emitters` without a network: NCC peaks with a PSF z-stack.

    Args:
        pupil: the PSF model or pupil (see the module docstring).
        frames: ``(B, H, W)`` or ``(H, W)`` photons per pixel.
        max_emitters: peaks per frame at most.
        window, z_step_um, search_z_step_um: template size (pixels) and slice spacings (µm) of the z-stack
            (see :class:`PsfZStack`).
        min_correlation: NCC a peak needs (1 = a perfect match).
        min_distance_px: peaks closer than this to a stronger one are dropped (default ``window // 4``).
        zstack: a precomputed :class:`PsfZStack` (overrides window, z step and filters).
    Returns:
        :class:`Emitters` ``(B, max_emitters)``: positions (µm), photon estimates, ``score`` = NCC.
    """
    stack = zstack or PsfZStack(
        pupil,
        window,
        z_step_um,
        search_z_step_um,
        blur_sigma_px=blur_sigma_px,
        pixel_integration=pixel_integration,
    )
    data = _as_frames(frames, stack.psf.dtype, stack.psf.device)
    with torch.no_grad():
        return stack.detect(data, max_emitters, min_correlation, min_distance_px)


# ------------------------------------------------------------------------------------------ matching pursuit
def matching_pursuit(
    pupil: PSFModel | PupilModel,
    frames: Tensor | np.ndarray,
    max_emitters: int,
    window: int = 31,
    z_step_um: float = 0.1,
    search_z_step_um: float = 0.2,
    min_log_likelihood_ratio: float = DEFAULT_MIN_LOG_LIKELIHOOD_RATIO,
    refit: bool = True,
    background: FrameMap = None,
    min_correlation: float = 0.0,
    max_iterations: int = 50,
    blur_sigma_px: float | None = None,
    pixel_integration: bool = False,
    subtract_window: int | None = None,
    zstack: PsfZStack | None = None,
    dtype: torch.dtype = torch.float64,
) -> Emitters:
    """Greedy fit-and-subtract localisation (the paper's MP comparison), batched over frames.

    Each round, in every frame still running: render the emitters found so far, find the best NCC match
    (over z and position) in the residual, fit it by maximum likelihood on its window with the found
    emitters as a fixed offset, and keep it if its log-likelihood ratio exceeds
    ``min_log_likelihood_ratio`` (else the frame stops); with ``refit``, all found emitters of the frame are
    then refitted jointly (overlapping windows together).

    Args:
        pupil: the PSF model or pupil (see the module docstring).
        frames: ``(B, H, W)`` or ``(H, W)`` photons per pixel.
        max_emitters: emitters per frame at most.
        window: fit and template window (pixels).
        z_step_um, search_z_step_um: slice spacings of the z-stack (see :class:`PsfZStack`).
        min_log_likelihood_ratio: stopping threshold (nats) on the next emitter's likelihood ratio.
        refit: refit all found emitters jointly after each accepted one.
        background: ``None`` fits a constant per window; a number or map fixes it.
        min_correlation: NCC a candidate needs.
        max_iterations, blur_sigma_px, pixel_integration, dtype: as in :func:`fit_emitters`.
        subtract_window: window used to render found emitters for subtraction; ``None`` renders them on
            the whole frame when it fits the DFT period (exact), else on the pupil grid's size.
        zstack: a precomputed :class:`PsfZStack` (overrides the z-stack options).
    Returns:
        :class:`Emitters` ``(B, max_emitters)``; ``score`` = log-likelihood ratio of each emitter.
    """
    pupil, blur_sigma_px = renderer(pupil, dtype, blur_sigma_px)
    device = pupil.kappa.device
    model_pupil = pupil_with_dtype(pupil, dtype)
    data = _as_frames(frames, dtype, device)
    batch, height, width = data.shape
    stack = zstack or PsfZStack(
        model_pupil,
        window,
        z_step_um,
        search_z_step_um,
        blur_sigma_px=blur_sigma_px,
        pixel_integration=pixel_integration,
    )
    filtering = blur_sigma_px is not None or pixel_integration
    if subtract_window is None and max(height, width) + (16 if filtering else 0) > pupil.setup.pupil_grid:
        subtract_window = pupil.setup.pupil_grid
    frame_background = _as_frame_map(background, data, "background")  # (B, H, W), per-frame subsets below
    fit_options = dict(
        window=window,
        max_iterations=max_iterations,
        blur_sigma_px=blur_sigma_px,
        pixel_integration=pixel_integration,
        dtype=dtype,
    )
    xyz = data.new_zeros(batch, 0, 3)
    photons = data.new_zeros(batch, 0)
    score = data.new_zeros(batch, 0)
    valid = torch.zeros(batch, 0, dtype=torch.bool, device=device)
    running = torch.ones(batch, dtype=torch.bool, device=device)
    with torch.no_grad():
        for round_index in range(max_emitters):
            index = running.nonzero(as_tuple=True)[0]
            if len(index) == 0:
                break
            found = Emitters(xyz[index], photons[index], valid[index])
            model = _render(
                model_pupil, found, (height, width), subtract_window, blur_sigma_px, pixel_integration
            )
            candidate = stack.detect(data[index] - model, 1, min_correlation)
            fit = fit_emitters(
                model_pupil,
                data[index],
                candidate,
                offset=model,
                background=_rows(frame_background, index),
                **fit_options,
            )
            accept = candidate.valid[:, 0] & (fit.log_likelihood_ratio[:, 0] > min_log_likelihood_ratio)
            accept &= fit.emitters.photons[:, 0] > 0
            new_xyz, new_photons = data.new_zeros(batch, 1, 3), data.new_zeros(batch, 1)
            new_score = data.new_zeros(batch, 1)
            new_valid = torch.zeros(batch, 1, dtype=torch.bool, device=device)
            kept = index[accept]
            new_xyz[kept] = fit.emitters.xyz[accept]
            new_photons[kept] = fit.emitters.photons[accept]
            new_score[kept] = fit.log_likelihood_ratio[accept]
            new_valid[kept] = True
            xyz, photons = torch.cat([xyz, new_xyz], 1), torch.cat([photons, new_photons], 1)
            score, valid = torch.cat([score, new_score], 1), torch.cat([valid, new_valid], 1)
            running[index[~accept]] = False
            if refit and round_index > 0 and len(kept):
                joint = fit_emitters(
                    model_pupil,
                    data[kept],
                    Emitters(xyz[kept], photons[kept], valid[kept]),
                    joint=True,
                    background=_rows(frame_background, kept),
                    **fit_options,
                )
                xyz[kept], photons[kept] = joint.emitters.xyz, joint.emitters.photons
                score[kept] = joint.log_likelihood_ratio.where(valid[kept], 0.0)
    result = Emitters(xyz, photons, valid, score=score)
    return result.pad_to(max_emitters) if result.max_count < max_emitters else result


def _rows(maps: Tensor | None, index: Tensor) -> Tensor | None:
    """The frames ``index`` of a ``(B, H, W)`` map (``None`` stays ``None``)."""
    return None if maps is None else maps[index]


def _render(
    pupil: PupilModel,
    emitters: Emitters,
    shape: tuple[int, int],
    window: int | None,
    blur_sigma_px: float | None,
    pixel_integration: bool,
) -> Tensor:
    """Expected photons ``(B, H, W)`` of emitters (no background)."""
    xyz, photons, frame = emitters.flat()
    if len(xyz) == 0:
        return emitters.xyz.new_zeros(emitters.batch_size, *shape)
    return render_frames(
        pupil,
        xyz,
        photons,
        frame,
        emitters.batch_size,
        shape,
        window=window,
        blur_sigma_px=blur_sigma_px,
        pixel_integration=pixel_integration,
    )
