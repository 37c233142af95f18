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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip, with the reason, where no CUDA GPU is available.

    One marker instead of a skipif per module, so that a GPU session can select every
    CUDA test of the suite with ``-m cuda`` (bench/gpu_session.sh).
    """
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def _lpips_torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME whose hub cache holds a random (seeded) AlexNet backbone.

    Nothing can be downloaded here, so LPIPS tests run on this stand-in. Only the
    ``features`` weights are used by LPIPS; the classifier is stored as a broadcast
    zero so the file is ~10 MB instead of 244 MB.
    """
    import torchvision

    from autodip_watch.perceptual import ALEXNET_CHECKPOINT

    home = tmp_path_factory.mktemp("torch_home")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        state = torchvision.models.alexnet(weights=None).state_dict()
    state = {key: value if key.startswith("features.") else torch.zeros(1).expand(value.shape)
             for key, value in state.items()}
    checkpoint = home / "hub" / "checkpoints" / ALEXNET_CHECKPOINT
    checkpoint.parent.mkdir(parents=True)
    torch.save(state, checkpoint)
    return home


@pytest.fixture
def lpips_backbone(_lpips_torch_home, monkeypatch) -> Path:
    """Point the torch hub cache at the test backbone; returns the TORCH_HOME folder."""
    monkeypatch.setenv("TORCH_HOME", str(_lpips_torch_home))
    return _lpips_torch_home


#: A test that takes longer than this (setup or call, in seconds) is marked ``slow``.
SLOW_SECONDS = 5.0
_UNMARKED_SLOW: list[tuple[str, float]] = []


def pytest_runtest_logreport(report):
    """Note tests over :data:`SLOW_SECONDS` that are not marked ``slow`` (also under
    pytest-xdist: the controller sees every worker's reports)."""
    if (report.when in ("setup", "call") and report.duration > SLOW_SECONDS
            and "slow" not in report.keywords):
        _UNMARKED_SLOW.append((report.nodeid, report.duration))


def pytest_terminal_summary(terminalreporter):
    if _UNMARKED_SLOW:
        terminalreporter.section(f"tests over {SLOW_SECONDS:g} s not marked slow")
        for nodeid, seconds in sorted(_UNMARKED_SLOW, key=lambda item: -item[1]):
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid}")
