"""Throughput as people read it: frames per second with enough digits, or seconds per frame when slow."""

from __future__ import annotations


def rate_text(items: int, seconds: float, unit: str = "frames") -> str:
    """``"152 frames/s"``, ``"2.4 frames/s"``, or for slow runs ``"0.032 frames/s (31.2 s per frame)"``:
    never ``0.0``. ``unit`` is the plural noun; the per-item form drops its final ``s``."""
    if items <= 0 or seconds <= 0:
        return f"— {unit}/s"
    rate = items / seconds
    if rate >= 100:
        return f"{rate:,.0f} {unit}/s"
    if rate >= 1:
        return f"{rate:.1f} {unit}/s"
    single = unit[:-1] if unit.endswith("s") else unit
    return f"{rate:.2g} {unit}/s ({seconds / items:.1f} s per {single})"
