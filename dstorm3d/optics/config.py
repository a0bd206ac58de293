"""Build an optical setup and its phase mask from a plain config mapping (Hydra ``optics`` group)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .masks import load_phase_mask
from .setup import OpticalSetup, SetupError

MASK_KEYS = ("mask", "mask_variable", "resample_mask")


def setup_from_config(config: Mapping[str, Any]) -> OpticalSetup:
    """An :class:`OpticalSetup` from the ``optics`` config (mask keys ignored)."""
    fields = {k: v for k, v in dict(config).items() if k not in MASK_KEYS}
    if "z_range_um" in fields and fields["z_range_um"] is not None:
        fields["z_range_um"] = tuple(float(v) for v in fields["z_range_um"])
    return OpticalSetup.from_dict(fields)


def mask_from_config(config: Mapping[str, Any], setup: OpticalSetup) -> np.ndarray:
    """The ``(N, N)`` phase mask (rad) named by ``optics.mask`` for ``setup``."""
    spec = config.get("mask", "clear")
    if spec is None:
        raise SetupError("optics.mask is empty: give tetrapod, clear or a mask file path")
    return load_phase_mask(
        str(spec),
        setup,
        resample=bool(config.get("resample_mask", False)),
        variable=config.get("mask_variable"),
    )
