"""What a failed job says in `status`: the pipeline's and the reader's own errors as they
are written for the user (what, where, why), any other exception with its class name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from autodip_watch.daemon.lifecycle import run_job
from autodip_watch.settings.denoise import DenoiseSettings

FAST = dict(depth=4, width="16", skip=4, iterations=2, device="cpu", mode="paper")


def garbage(folder: Path) -> tuple[Path, Path, dict]:
    raw = folder / "garbage.tif"
    raw.write_bytes(b"II*\x00" + bytes(range(256)) * 4)  # a TIFF header, then nonsense
    return raw, folder / "garbage.tif.autodip.ome.tif", FAST


def output_is_input(folder: Path) -> tuple[Path, Path, dict]:
    raw = folder / "cells.ome.tif"
    tifffile.imwrite(raw, np.zeros((16, 16), np.uint16), ome=True)
    return raw, raw, FAST


def no_such_device(folder: Path) -> tuple[Path, Path, dict]:
    raw = folder / "cells.ome.tif"
    tifffile.imwrite(raw, np.zeros((16, 16), np.uint16), ome=True)
    return raw, folder / "cells.autodip.ome.tif", {**FAST, "device": "cuda:7"}


# name: (how to make the job, what the error starts with)
CASES = {
    "an unreadable file (the reader's error)": (garbage, "{raw}: "),
    "an output path that is the input (the pipeline's error)": (output_is_input,
                                                                "output path {raw} is the input"),
    "a device this machine lacks (not ours: the class says what kind)": (no_such_device,
                                                                        "ValueError: "),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_failed_job_says_why_without_internal_class_names(tmp_path, case):
    make, starts = CASES[case]
    raw, output, settings = make(tmp_path)
    outcome = run_job(raw, output, DenoiseSettings(**settings))
    assert outcome.status == "error"
    assert outcome.error.startswith(starts.format(raw=raw)), outcome.error
    assert "PipelineError" not in outcome.error and "ImageError" not in outcome.error
    assert outcome.traceback  # the log keeps the traceback for a developer
