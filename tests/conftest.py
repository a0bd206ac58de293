"""Shared test fixtures: paths to ../shared/data and deterministic torch settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist (``-n N``) each worker, and the commands its tests start, gets its share of the
    cores (torch would otherwise give every worker all of them: N× oversubscribed)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


_share_the_cores_between_workers()


def shared_path(*parts: str) -> Path:
    """A path under ``../shared/data``; skips the test with a clear reason when it is absent (fails under
    ``CI=true``)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if (
            os.environ.get("CI", "").lower() == "true"
        ):  # CI has the data beside the checkout: missing is a failure
            pytest.fail(f"shared data not found at {path}, and CI=true: CI must provide ../shared/data")
        pytest.skip(
            f"shared data not found at {path} (it sits beside the checkout in CI; absent in a user's clone)"
        )
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
