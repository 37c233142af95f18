"""A raw file that changes or vanishes while its job runs stops the fit: the job is
skipped and the new version runs, instead of the old one being fitted to its end and
thrown away (minutes to hours of GPU time, with the queue waiting behind it).

Real files and a real fit; the daemon's side is in ``test_input_changed_mid_job.py``.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from autodip_watch.daemon.lifecycle import InputChanged, SourceWatch, run_job
from autodip_watch.io.atomic import temporary_outputs
from autodip_watch.io.checksums import hash_files
from autodip_watch.settings.denoise import DenoiseSettings
from helpers.daemon import output_of, wait_for


def _image(path: Path, seed: int) -> Path:
    tifffile.imwrite(path, np.random.default_rng(seed).poisson(100, (24, 24)).astype(np.uint16),
                     ome=True)
    return path


def _touch_later(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def _copy_same_bytes_over(path: Path) -> None:
    copy = path.with_name(".copy")
    shutil.copyfile(path, copy)
    os.replace(copy, path)


def _rewrite_in_place(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte different
    with open(path, "r+b") as handle:
        handle.write(bytes(data))


def _replace_by_rename(path: Path) -> None:
    _image(path.with_name(".new.ome.tif"), seed=99)
    os.replace(path.with_name(".new.ome.tif"), path)


def _append(path: Path) -> None:
    with open(path, "ab") as handle:
        handle.write(b"\0" * 16)


# name: (what happens to which file, whether the fit must stop, what the reason says)
CHANGES = {
    "nothing": (None, False, None),
    "times only (touch)": (_touch_later, False, None),
    "the same bytes copied over it": (_copy_same_bytes_over, False, None),
    "rewritten in place, same size": (_rewrite_in_place, True, "changed while"),
    "replaced by a rename": (_replace_by_rename, True, "changed while"),
    "appended to": (_append, True, "changed while"),
    "deleted": (Path.unlink, True, "disappeared while"),
    "a file of its set rewritten": ("member", True, "changed while"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_the_source_watch_stops_on_changed_content_only(tmp_path, change):
    raw = _image(tmp_path / "cells.ome.tif", seed=0)
    member = _image(tmp_path / "cells_1.ome.tif", seed=1)
    digest, _ = hash_files([raw, member])
    watch = SourceWatch([raw, member], digest, every=0.0)
    watch.check()
    how, stops, reason = CHANGES[change]
    time.sleep(0.05)  # file times tick coarsely (a few ms): a change is later than that
    if how == "member":
        _rewrite_in_place(member)
    elif how is not None:
        how(raw)
    if stops:
        with pytest.raises(InputChanged, match=reason):
            watch.check()
    else:
        watch.check()
        watch.check()  # the new times are the new baseline: no second hash


def test_the_source_watch_looks_at_most_every_interval(tmp_path):
    raw = _image(tmp_path / "cells.ome.tif", seed=0)
    watch = SourceWatch([raw], hash_files([raw])[0], every=3600.0)
    raw.unlink()
    watch.check()  # within the interval: not looked at (a stat per iteration is not free)
    watch._next = 0.0
    with pytest.raises(InputChanged, match="disappeared"):
        watch.check()


@pytest.mark.slow
@pytest.mark.parametrize("change", ["replaced by a rename", "deleted"])
def test_a_fit_stops_soon_after_its_raw_file_changes(tmp_path, change):
    """run_job ends as ``changed`` within seconds, with no temporary output left, not
    after its million iterations."""
    raw = _image(tmp_path / "cells.ome.tif", seed=0)
    output = output_of(raw)
    watch = SourceWatch([raw], hash_files([raw])[0], every=0.2)

    def change_once_fitting() -> None:
        wait_for(lambda: temporary_outputs(output), 120, "the temporary output")
        time.sleep(0.5)
        CHANGES[change][0](raw)

    changer = threading.Thread(target=change_once_fitting, daemon=True)
    changer.start()
    started = time.monotonic()
    outcome = run_job(raw, output, DenoiseSettings(depth=4, width="16", iterations=1_000_000,
                                                   device="cpu", members=1),
                      progress=lambda *args: watch.check())
    changer.join(5)
    assert outcome.status == "changed", outcome
    assert CHANGES[change][2] in outcome.error
    assert time.monotonic() - started < 120
    assert temporary_outputs(output) == [] and not output.exists()
