"""The voxel grid of the volumetric output, and the one convention that maps voxels to µm.

Convention (used by targets, losses and decoders alike; it extends the pixel convention of
:mod:`dstorm3d.emitters`):

* The volume of a frame is ``(D, uH, uW)``: ``D`` z slices, ``u`` lateral voxels per camera pixel.
  Lateral voxel size ``Δxy = Δx/u``, axial ``Δz = (z_max − z_min)/D``.
* Voxel ``(k, r, c)`` (slice, row, column) spans ``x ∈ [c, c+1)·Δxy``, ``y ∈ [r, r+1)·Δxy`` and
  ``z ∈ z_min + [k, k+1)·Δz``. Its centre is
  ``((c + ½ + o_xy)·Δxy, (r + ½ + o_xy)·Δxy, z_min + (k + ½ + o_z)·Δz)`` where ``o_xy``
  (``lateral_offset_voxels``) and ``o_z`` (``z_offset_voxels``) are 0 for every network trained here;
  they exist only to decode imported networks whose targets used another convention.
* Continuous voxel coordinates are fractional indices in ``(x, y, z)`` = ``(c, r, k)`` order, where an
  integer ``i`` is the *centre* of voxel ``i``: voxel ``i`` covers ``[i − ½, i + ½)``, and a position
  lies in voxel ``floor(v + ½)``.

Camera pixel ``j`` therefore covers voxels ``u·j … u·j + u − 1``, and the paper's STORM grid
(Δx = 110 nm, u = 4, D = 121 over 4 µm) has voxels of 27.5 × 27.5 × 33.06 nm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class VolumeGrid:
    """Geometry of a ``(D, u·H, u·W)`` volume over a frame.

    Attributes:
        pixel_size_um: camera pixel at the sample, Δx (µm).
        voxels_per_pixel: lateral voxels per camera pixel, ``u`` (paper: 4; the head's ``upsampling``
            counts ×2 stages, so ``u = 2**upsampling``).
        z_range_um: ``(z_min, z_max)`` of the axial range (µm).
        depth_slices: number of z slices ``D``.
        frame_shape: ``(H, W)`` of the camera frame in pixels, when fixed (else ``None``).
        lateral_offset_voxels: shift of the voxel centres along x and y, in voxels (imported nets only).
        z_offset_voxels: shift of the voxel centres along z, in voxels (imported nets only).
    """

    pixel_size_um: float
    voxels_per_pixel: int = 4
    z_range_um: tuple[float, float] = (0.0, 4.0)
    depth_slices: int = 121
    frame_shape: tuple[int, int] | None = None
    lateral_offset_voxels: float = 0.0
    z_offset_voxels: float = 0.0

    def __post_init__(self) -> None:
        # Normalise sequences (e.g. from YAML lists) to tuples so the dataclass stays hashable.
        object.__setattr__(self, "z_range_um", tuple(float(z) for z in self.z_range_um))
        if self.frame_shape is not None:
            object.__setattr__(self, "frame_shape", tuple(int(n) for n in self.frame_shape))
        if self.pixel_size_um <= 0:
            raise ValueError(f"pixel_size_um must be positive, got {self.pixel_size_um}")
        if int(self.voxels_per_pixel) != self.voxels_per_pixel or self.voxels_per_pixel < 1:
            raise ValueError(f"voxels_per_pixel must be a positive integer, got {self.voxels_per_pixel}")
        if int(self.depth_slices) != self.depth_slices or self.depth_slices < 1:
            raise ValueError(f"depth_slices must be a positive integer, got {self.depth_slices}")
        for name in ("voxels_per_pixel", "depth_slices"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("pixel_size_um", "lateral_offset_voxels", "z_offset_voxels"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if len(self.z_range_um) != 2 or not self.z_range_um[1] > self.z_range_um[0]:
            raise ValueError(f"z_range_um must be (z_min, z_max) with z_max > z_min, got {self.z_range_um}")

    # ------------------------------------------------------------------ sizes
    @property
    def lateral_voxel_um(self) -> float:
        """``Δx/u``: lateral voxel size (µm)."""
        return self.pixel_size_um / self.voxels_per_pixel

    @property
    def axial_voxel_um(self) -> float:
        """``Δz = (z_max − z_min)/D``: axial voxel size (µm)."""
        return (self.z_range_um[1] - self.z_range_um[0]) / self.depth_slices

    @property
    def voxel_size_um(self) -> tuple[float, float, float]:
        """Voxel size along ``(x, y, z)`` in µm."""
        return (self.lateral_voxel_um, self.lateral_voxel_um, self.axial_voxel_um)

    def volume_shape(self, frame_shape: tuple[int, int] | None = None) -> tuple[int, int, int]:
        """``(D, u·H, u·W)`` for a frame of ``(H, W)`` pixels (default: :attr:`frame_shape`)."""
        shape = frame_shape if frame_shape is not None else self.frame_shape
        if shape is None:
            raise ValueError("frame_shape is not set on the grid; pass it explicitly")
        h, w = shape
        return (self.depth_slices, self.voxels_per_pixel * int(h), self.voxels_per_pixel * int(w))

    # ------------------------------------------------------------------ coordinates
    def _origin_and_step(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(origin, step)`` such that ``µm = origin + step·v`` for continuous voxel coordinates ``v``."""
        dxy, dz = self.lateral_voxel_um, self.axial_voxel_um
        origin = [(0.5 + self.lateral_offset_voxels) * dxy] * 2
        origin.append(self.z_range_um[0] + (0.5 + self.z_offset_voxels) * dz)
        kwargs = {"dtype": like.dtype, "device": like.device}
        return torch.tensor(origin, **kwargs), torch.tensor([dxy, dxy, dz], **kwargs)

    def um_to_voxel(self, xyz_um: Tensor) -> Tensor:
        """Positions ``(..., 3)`` in µm → continuous voxel coordinates ``(..., 3)`` in ``(c, r, k)`` order
        (integer = voxel centre)."""
        xyz_um = xyz_um if xyz_um.is_floating_point() else xyz_um.float()
        origin, step = self._origin_and_step(xyz_um)
        return (xyz_um - origin) / step

    def voxel_to_um(self, voxel: Tensor) -> Tensor:
        """Continuous voxel coordinates ``(..., 3)`` in ``(c, r, k)`` order → positions ``(..., 3)`` in µm."""
        voxel = voxel if voxel.is_floating_point() else voxel.float()
        origin, step = self._origin_and_step(voxel)
        return origin + voxel * step

    # ------------------------------------------------------------------ plain data
    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists, floats, ints) for checkpoints and configs."""
        data = asdict(self)
        data["z_range_um"] = list(self.z_range_um)
        data["frame_shape"] = list(self.frame_shape) if self.frame_shape is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeGrid:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)
