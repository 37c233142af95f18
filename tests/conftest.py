"""Shared test fixtures: real files in temporary folders, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

#: The real test data beside the checkout (never copied into the repository).
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"
SHARED_REFERENCE = SHARED / "reference" / "autodip"

# One thread per test process: the machines have 2 cores, and oversubscribed OpenMP
# threads slow torch down by an order of magnitude.
torch.set_num_threads(int(os.environ.get("AUTODIP_TEST_THREADS", "1")))


@pytest.fixture
def shared_data() -> Path:
    """The ``../shared/data`` folder, or a skip that says why."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture
def shared_reference() -> Path:
    """The AUTO-DIP reference tables in ``../shared/reference/autodip``, or a skip."""
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f"AUTO-DIP reference tables not found at {SHARED_REFERENCE}")
    return SHARED_REFERENCE
