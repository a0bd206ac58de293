"""Blinking of fixed fluorophores over a recording: each is ON in a frame independently with a duty cycle, or
follows a two-state (OFF ⇄ ON) Markov chain with a mean ON time in frames."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dstorm3d.errors import UserInputError
from dstorm3d.utils.validate import choice, mapping, number

BLINKING_MODELS = ("markov", "independent")


@dataclass(frozen=True)
class BlinkingSettings:
    """How often fluorophores are ON (``blinking.*``)."""

    model: str
    density_per_um2: float
    duty_cycle: float | None
    mean_on_frames: float

    @classmethod
    def from_config(cls, config: Any) -> BlinkingSettings:
        c = mapping("blinking", config, [f for f in cls.__dataclass_fields__])
        duty = c.get("duty_cycle")
        return cls(
            model=choice("blinking.model", c.get("model"), BLINKING_MODELS),
            density_per_um2=number("blinking.density_per_um2", c.get("density_per_um2"), above=0),
            duty_cycle=None if duty is None else number("blinking.duty_cycle", duty, above=0, maximum=1),
            mean_on_frames=number("blinking.mean_on_frames", c.get("mean_on_frames"), minimum=1),
        )


@dataclass(frozen=True)
class Blinking:
    """Per-frame ON probabilities: ``p_on`` (OFF → ON) and ``p_off`` (ON → OFF); the first frame and the
    independent model draw ON with probability ``duty_cycle``."""

    model: str
    duty_cycle: float
    p_on: float
    p_off: float

    @classmethod
    def from_settings(cls, settings: BlinkingSettings, emitters: int, area_um2: float) -> Blinking:
        if settings.duty_cycle is not None:
            duty = settings.duty_cycle
        else:
            active = settings.density_per_um2 * area_um2
            duty = active / emitters
            if duty > 1:
                raise UserInputError(
                    f"blinking.density_per_um2 = {settings.density_per_um2:g} means {active:.1f} active "
                    f"emitters per {area_um2:.1f} µm² frame, more than the structure's "
                    f"emitters = {emitters}: raise emitters or lower the density"
                )
        if duty >= 1:
            return cls(settings.model, 1.0, 1.0, 0.0)
        if settings.model == "independent":
            return cls("independent", duty, duty, 1.0 - duty)
        p_off = 1.0 / settings.mean_on_frames
        p_on = duty * p_off / (1.0 - duty)
        if p_on > 1:
            limit = settings.mean_on_frames / (1 + settings.mean_on_frames)
            raise UserInputError(
                f"a duty cycle of {duty:.3g} is out of reach with blinking.mean_on_frames = "
                f"{settings.mean_on_frames:g} (at most {limit:.3g}): raise mean_on_frames or emitters, "
                "or lower blinking.density_per_um2"
            )
        return cls("markov", duty, p_on, p_off)

    def states(self, rng: np.random.Generator, emitters: int, frames: int) -> Iterator[np.ndarray]:
        """``(emitters,)`` bool ON states, one array per frame."""
        on = rng.random(emitters) < self.duty_cycle
        for frame in range(frames):
            if frame:
                u = rng.random(emitters)
                on = (
                    (u < self.duty_cycle)
                    if self.model == "independent"
                    else np.where(on, u >= self.p_off, u < self.p_on)
                )
            yield on
