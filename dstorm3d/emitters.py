"""Padded batches of emitters (ground truth) and localizations (predictions).

Geometry used everywhere in dstorm3d (see also ``README.md``, section *Conventions*):

* Positions are in **µm**. ``x`` runs along frame columns, ``y`` along frame rows, both measured from
  the top-left corner of pixel (0, 0). Pixel ``(r, c)`` covers ``x ∈ [c, c+1)·Δx`` and
  ``y ∈ [r, r+1)·Δx`` (Δx = camera pixel at the sample), so its centre is ``((c+½)Δx, (r+½)Δx)``.
* ``z`` is the emitter depth above the coverslip in µm.
* Photons are expected signal photons per emitter (the integral of its PSF over the whole image plane).
* Frames are tensors ``(B, H, W)``: row index = y, column index = x.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor


@dataclass
class Emitters:
    """A batch of frames' emitters, padded to ``M`` entries per frame.

    Attributes:
        xyz: ``(B, M, 3)`` float positions in µm (x, y from the frame's top-left corner, z above the
            coverslip).
        photons: ``(B, M)`` signal photons (for predictions: the estimate, or NaN when unknown).
        valid: ``(B, M)`` bool, True where an entry is a real emitter (False = padding).
        labelled: ``(B, M)`` bool, True where an emitter counts as ground truth. Dim emitters are
            rendered (valid) but not labelled. Defaults to ``valid``.
        score: ``(B, M)`` float confidence of a localization (predictions only), else ``None``.
        sigma: ``(B, M, 4)`` predicted standard deviations of x, y, z (µm) and photons (predictions of a
            head that estimates them, 0 at padding), else ``None``.
    """

    xyz: Tensor
    photons: Tensor
    valid: Tensor
    labelled: Tensor | None = None
    score: Tensor | None = None
    sigma: Tensor | None = None

    def __post_init__(self) -> None:
        if self.xyz.ndim != 3 or self.xyz.shape[-1] != 3:
            raise ValueError(f"xyz must have shape (B, M, 3), got {tuple(self.xyz.shape)}")
        b, m, _ = self.xyz.shape
        for name in ("photons", "valid", "labelled", "score"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (b, m):
                raise ValueError(f"{name} must have shape {(b, m)}, got {tuple(value.shape)}")
        if self.sigma is not None and tuple(self.sigma.shape) != (b, m, 4):
            raise ValueError(f"sigma must have shape {(b, m, 4)}, got {tuple(self.sigma.shape)}")
        if self.valid.dtype != torch.bool:
            self.valid = self.valid.bool()
        if self.labelled is None:
            self.labelled = self.valid.clone()
        else:
            self.labelled = self.labelled.bool() & self.valid

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(cls, batch: int, device: torch.device | str | None = None) -> Emitters:
        """``batch`` frames without emitters."""
        return cls(
            xyz=torch.zeros(batch, 0, 3, device=device),
            photons=torch.zeros(batch, 0, device=device),
            valid=torch.zeros(batch, 0, dtype=torch.bool, device=device),
        )

    @classmethod
    def from_lists(
        cls,
        xyz: Sequence[np.ndarray | Tensor],
        photons: Sequence[np.ndarray | Tensor] | None = None,
        labelled: Sequence[np.ndarray | Tensor] | None = None,
        score: Sequence[np.ndarray | Tensor] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        sigma: Sequence[np.ndarray | Tensor] | None = None,
    ) -> Emitters:
        """Pad per-frame arrays (``(n_i, 3)`` positions, ``(n_i,)`` photons/flags, ``(n_i, 4)`` sigmas)
        into one batch."""
        b = len(xyz)
        counts = [int(len(p)) for p in xyz]
        m = max(counts, default=0)
        out_xyz = torch.zeros(b, m, 3, dtype=dtype)
        out_ph = torch.zeros(b, m, dtype=dtype)
        valid = torch.zeros(b, m, dtype=torch.bool)
        lab = torch.zeros(b, m, dtype=torch.bool) if labelled is not None else None
        sc = torch.zeros(b, m, dtype=dtype) if score is not None else None
        sg = torch.zeros(b, m, 4, dtype=dtype) if sigma is not None else None
        for i, n in enumerate(counts):
            if n == 0:
                continue
            out_xyz[i, :n] = torch.as_tensor(np.asarray(xyz[i], dtype=np.float64).reshape(n, 3), dtype=dtype)
            valid[i, :n] = True
            if photons is not None:
                out_ph[i, :n] = torch.as_tensor(np.asarray(photons[i], dtype=np.float64), dtype=dtype)
            else:
                out_ph[i, :n] = float("nan")
            if lab is not None:
                lab[i, :n] = torch.as_tensor(np.asarray(labelled[i], dtype=bool))
            if sc is not None:
                sc[i, :n] = torch.as_tensor(np.asarray(score[i], dtype=np.float64), dtype=dtype)
            if sg is not None:
                sg[i, :n] = torch.as_tensor(np.asarray(sigma[i], dtype=np.float64).reshape(n, 4), dtype=dtype)
        return cls(out_xyz, out_ph, valid, lab, sc, sg).to(device)

    @classmethod
    def cat(cls, batches: Sequence[Emitters]) -> Emitters:
        """Concatenate along the frame axis, re-padding to the largest ``M``."""
        if not batches:
            raise ValueError("cannot concatenate an empty sequence of Emitters")
        m = max(e.max_count for e in batches)
        padded = [e.pad_to(m) for e in batches]
        has_score = all(e.score is not None for e in padded)
        has_sigma = all(e.sigma is not None for e in padded)
        return cls(
            xyz=torch.cat([e.xyz for e in padded]),
            photons=torch.cat([e.photons for e in padded]),
            valid=torch.cat([e.valid for e in padded]),
            labelled=torch.cat([e.labelled for e in padded]),
            score=torch.cat([e.score for e in padded]) if has_score else None,
            sigma=torch.cat([e.sigma for e in padded]) if has_sigma else None,
        )

    # ------------------------------------------------------------------ views
    @property
    def batch_size(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def max_count(self) -> int:
        return int(self.xyz.shape[1])

    @property
    def device(self) -> torch.device:
        return self.xyz.device

    def counts(self, labelled_only: bool = False) -> Tensor:
        """``(B,)`` number of valid (or labelled) emitters per frame."""
        return (self.labelled if labelled_only else self.valid).sum(dim=1)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Emitters:
        def move(t: Tensor | None, floating: bool) -> Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if (floating and dtype is not None) else None)

        return Emitters(
            xyz=move(self.xyz, True),
            photons=move(self.photons, True),
            valid=move(self.valid, False),
            labelled=move(self.labelled, False),
            score=move(self.score, True),
            sigma=move(self.sigma, True),
        )

    def pad_to(self, m: int) -> Emitters:
        """Pad (never truncate) to ``m`` entries per frame."""
        extra = m - self.max_count
        if extra < 0:
            raise ValueError(f"cannot pad {self.max_count} entries down to {m}")
        if extra == 0:
            return self

        def pad(t: Tensor | None, value: float | bool = 0) -> Tensor | None:
            if t is None:
                return None
            shape = list(t.shape)
            shape[1] = extra
            return torch.cat([t, torch.full(shape, value, dtype=t.dtype, device=t.device)], dim=1)

        return Emitters(
            pad(self.xyz),
            pad(self.photons),
            pad(self.valid, False),
            pad(self.labelled, False),
            pad(self.score),
            pad(self.sigma),
        )

    def select_frames(self, index: Tensor | slice | Sequence[int]) -> Emitters:
        """The emitters of a subset of frames."""
        kwargs = {
            f.name: (getattr(self, f.name)[index] if getattr(self, f.name) is not None else None)
            for f in fields(self)
        }
        return Emitters(**kwargs)

    def with_valid(self, valid: Tensor) -> Emitters:
        """Same entries with a new validity mask (e.g. after thresholding the score)."""
        return replace(self, valid=valid.bool(), labelled=self.labelled & valid.bool())

    def flat(self, labelled_only: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Valid entries as flat arrays: ``xyz (E, 3)``, ``photons (E,)``, ``frame_index (E,)`` (int64)."""
        keep = self.labelled if labelled_only else self.valid
        frame_index = torch.arange(self.batch_size, device=self.device).unsqueeze(1).expand_as(keep)
        return self.xyz[keep], self.photons[keep], frame_index[keep]

    def per_frame(self, labelled_only: bool = False) -> list[np.ndarray]:
        """List of ``(n_i, 3)`` float64 numpy arrays of positions in µm, one per frame."""
        keep = (self.labelled if labelled_only else self.valid).cpu()
        xyz = self.xyz.detach().cpu().double()
        return [xyz[i][keep[i]].numpy() for i in range(self.batch_size)]
