"""LightningModule for learning the phase mask (PSF) jointly with the localization CNN.

Emitter positions go through the differentiable microscope (the encoder: pupil with a learnable mask,
rendering, differentiable shot noise μ + √μ·ε) into camera frames; the CNN (the decoder) recovers them;
the localization loss trains mask and CNN together, with separate learning rates in one Adam optimizer
(two parameter groups).

Mask parameterisations (``mask_learning.parameterization``):
* ``pixel`` — one phase value per pupil sample inside the aperture (the paper);
* ``zernike`` — coefficients of Noll Zernike polynomials 2..``zernike_terms`` (smooth masks).

The mask starts from ``optics.mask`` (``clear``, ``tetrapod`` or a file, fitted to the setup).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dstorm3d.modules.localizer import SimulatedLocalizationModule
from dstorm3d.optics.masks import aperture_support
from dstorm3d.optics.zernike import zernike_basis

PARAMETERIZATIONS = ("pixel", "zernike")


class PSFDesignModule(SimulatedLocalizationModule):
    """Joint optical encoder / CNN decoder.

    Args (beyond :class:`SimulatedLocalizationModule`'s):
        mask_learning: ``{"parameterization": "pixel"|"zernike", "lr": mask learning rate (Adam step,
            rad), "zernike_terms": 28, "freeze": false, "differentiable_noise": true}``.
    """

    learnable_mask = True

    def __init__(self, mask_learning: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        learning = {
            "parameterization": "pixel",
            "lr": 0.01,
            "zernike_terms": 28,
            "freeze": False,
            "differentiable_noise": True,
            **dict(mask_learning or {}),
        }
        if learning["parameterization"] not in PARAMETERIZATIONS:
            raise ValueError(
                f"mask_learning.parameterization must be one of {PARAMETERIZATIONS}, "
                f"got {learning['parameterization']!r}"
            )
        super().__init__(**kwargs)
        self.hparams["mask_learning"] = learning
        setup = self.optical_setup
        support = torch.as_tensor(aperture_support(setup), dtype=torch.float32)
        self.register_buffer("support", support, persistent=False)
        if learning["parameterization"] == "zernike":
            # The pupil's own mask stays the (fixed) initialisation; the learned phase is added to it.
            indices = list(range(2, int(learning["zernike_terms"]) + 1))
            basis = zernike_basis(indices, setup.pupil_grid, setup.zernike_radius_px)
            self.register_buffer(
                "zernike_basis", torch.as_tensor(basis, dtype=torch.float32), persistent=False
            )
            self.zernike_coefficients = nn.Parameter(torch.zeros(len(indices)))
            self.simulator.pupil.phase_mask.requires_grad_(False)
        if learning["freeze"]:
            for p in self.mask_parameters():
                p.requires_grad_(False)

    # ------------------------------------------------------------------ the mask
    def mask_parameters(self) -> list[nn.Parameter]:
        if self.hparams.mask_learning["parameterization"] == "zernike":
            return [self.zernike_coefficients]
        return [self.simulator.pupil.phase_mask]

    def phase_mask(self) -> Tensor:
        """The current ``(N, N)`` phase mask (rad), zero outside the aperture."""
        base = self.simulator.pupil.phase_mask
        if self.hparams.mask_learning["parameterization"] == "zernike":
            base = base + torch.einsum("j,jhw->hw", self.zernike_coefficients, self.zernike_basis)
        return base * self.support

    def simulate(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> Tensor:
        differentiable = self.training and bool(self.hparams.mask_learning["differentiable_noise"])
        return self.simulator(
            batch, generator=generator, differentiable=differentiable, phase_mask=self.phase_mask()
        )

    def parameter_groups(self) -> list[dict[str, Any]]:
        groups = super().parameter_groups()
        trainable = [p for p in self.mask_parameters() if p.requires_grad]
        if trainable:
            groups.append(
                {"params": trainable, "lr": float(self.hparams.mask_learning["lr"]), "name": "mask"}
            )
        return groups

    def learned_mask(self) -> np.ndarray:
        """The mask as float64 numpy (rad), for export."""
        return self.phase_mask().detach().double().cpu().numpy()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["hyper_parameters"]["mask_learning"] = dict(self.hparams.mask_learning)
