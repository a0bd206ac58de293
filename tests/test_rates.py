"""Throughput text of the commands (dstorm3d.utils.rates)."""

from __future__ import annotations

from dstorm3d.utils.rates import rate_text


def test_rates_are_never_printed_as_zero():
    assert rate_text(1, 31.25) == "0.032 frames/s (31.2 s per frame)"  # the authors' network on 2 CPU cores
    assert rate_text(50, 20.0) == "2.5 frames/s"
    assert rate_text(5000, 10.0) == "500 frames/s"
    assert rate_text(0, 1.0) == "— frames/s"
