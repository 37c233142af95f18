"""Outputs: one per source, whose they are, current by content, modes like open(), OS
errors that say what and where. Real files, real file systems, real subprocesses."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from helpers.acquisition import remount, tiny_filesystem
from autodip_watch.settings.config import parse_config
from autodip_watch.io.outputs import OutputConflictError, check_output, output_name
from autodip_watch.io.atomic import describe_os_error
from autodip_watch.settings.denoise import DenoiseSettings
from autodip_watch.pipeline.denoise import PipelineError, denoise_file

FAST = dict(depth=4, width="16", skip=4, iterations=2, device="cpu")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- names

#: Exports that facilities keep side by side (case 11 is one instance of the kind).
SIDE_BY_SIDE = ["cells.tif", "cells.ome.tif", "cells.png", "cells.tiff", "cells.ome.tiff",
                "cells.OME.TIF", "cells.TIF", "cells.btf", "cells.companion.ome",
                "cells_C0.ome.tif", "cells 1.ome.tif", "cells.1.tif", "cells.ome.png",
                "Cells.tif", "cells.autodip.tif", "cells.ome.tif.bak.tif"]


def test_output_names_are_one_to_one_on_the_names_facilities_use():
    outputs = [output_name(name) for name in SIDE_BY_SIDE]
    assert len(set(outputs)) == len(outputs), sorted(outputs)
    assert all(name.endswith(".autodip.ome.tif") for name in outputs)
    # The canonical case keeps its short name; other formats keep their extension.
    assert output_name("cells.ome.tif") == "cells.autodip.ome.tif"
    assert output_name("cells.tif") == "cells.tif.autodip.ome.tif"
    assert output_name("cells.png") == "cells.png.autodip.ome.tif"
    assert output_name("cells.ome.tiff") == "cells.ome.tiff.autodip.ome.tif"
    assert output_name("cells.OME.TIF") == "cells.OME.TIF.autodip.ome.tif"
    assert output_name("cells.ome.tif", ".dn.ome.tiff") == "cells.dn.ome.tiff"


def test_the_configured_suffix_and_output_roots_keep_names_apart(tmp_path):
    config = parse_config({"watch": [{"path": "in"}, {"path": "share", "output_root": "den"}],
                           "output": {"suffix": ".dn.ome.tif"}}, tmp_path)
    beside, mirrored = config.watch
    for folder, base in ((beside, tmp_path / "in"), (mirrored, tmp_path / "share")):
        outputs = {config.output_for(base / "day 1" / name, folder) for name in SIDE_BY_SIDE}
        assert len(outputs) == len(SIDE_BY_SIDE)
        assert all(config.is_output(path) for path in outputs)


# --------------------------------------------------------------------------- whose, current

@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A real output of ``cells.ome.tif`` (tiny fit), to copy around."""
    folder = tmp_path_factory.mktemp("made")
    source = folder / "cells.ome.tif"
    tifffile.imwrite(source, np.random.default_rng(1).poisson(100, (24, 24)).astype(np.uint16),
                     metadata={"axes": "YX"})
    report = denoise_file(source, DenoiseSettings(**FAST))
    return source, Path(report.output)


def test_check_output_tells_ours_current_stale_and_foreign(tmp_path, made):
    source, _ = made
    first = tmp_path / "a"
    first.mkdir()
    raw = first / source.name
    shutil.copy2(source, raw)
    out = first / "cells.autodip.ome.tif"
    hashes = [(raw.name, sha256(raw))]
    assert check_output(out, raw, hashes).state == "absent"
    denoise_file(raw, DenoiseSettings(**FAST))
    assert check_output(out, raw, hashes).state == "current"
    assert check_output(out, raw, [(raw.name, "0" * 64)]).state == "stale"
    assert check_output(out, raw).state == "stale"  # no hashes: may be replaced, not current
    # The folder renamed with its output: still ours (the recorded path is gone).
    moved = tmp_path / "b"
    first.rename(moved)
    assert check_output(moved / out.name, moved / raw.name, hashes).state == "current"
    # A copy of that output beside another file of the same name, while a file is at
    # the path it was made from: that file's output, not this one's.
    first.mkdir()
    shutil.copy2(source, raw)
    other = tmp_path / "c"
    other.mkdir()
    shutil.copy2(moved / out.name, other / out.name)
    shutil.copy2(source, other / raw.name)
    verdict = check_output(other / out.name, other / raw.name, hashes)
    assert verdict.state == "foreign" and str(raw) in verdict.reason
    # Made for another name.
    assert check_output(moved / out.name, moved / "other.ome.tif", hashes).state == "foreign"
    # Not ours at all: a plain TIFF, an image of another format, text.
    for content in (lambda p: tifffile.imwrite(p, np.zeros((8, 8), np.uint8)),
                    lambda p: Image.new("L", (8, 8)).save(p, format="PNG"),
                    lambda p: p.write_text("notes")):
        foreign = moved / "foreign.autodip.ome.tif"
        content(foreign)
        verdict = check_output(foreign, moved / raw.name, hashes)
        assert verdict.state == "foreign" and "not written by autodip-watch" in verdict.reason


def test_a_file_we_did_not_write_for_this_source_is_never_overwritten(tmp_path, made):
    """The guard behind the naming rule: X.tif and X.tif.ome.tif meet (no short rule is
    one-to-one on every name); the second never overwrites the first's output, and a
    person's own file at an output path is left alone. The error names both files."""
    source, _ = made
    first, second = tmp_path / "x.tif", tmp_path / "x.tif.ome.tif"
    shutil.copy2(source, first)
    shutil.copy2(source, second)
    assert output_name(first.name) == output_name(second.name)
    report = denoise_file(first, DenoiseSettings(**FAST))
    before = sha256(Path(report.output))
    with pytest.raises(OutputConflictError) as refused:
        denoise_file(second, DenoiseSettings(**FAST))
    assert str(first) in str(refused.value) and str(second) in str(refused.value)
    assert sha256(Path(report.output)) == before
    mine = tmp_path / "mine.ome.tif"
    shutil.copy2(source, mine)
    personal = tmp_path / "mine.autodip.ome.tif"
    personal.write_bytes(b"a person's own file")
    with pytest.raises(OutputConflictError, match="not written by autodip-watch"):
        denoise_file(mine, DenoiseSettings(**FAST))
    assert personal.read_bytes() == b"a person's own file"
    assert not list(tmp_path.glob(".*.tmp"))
    # Its own output is replaced on a re-run (the daemon re-runs stale outputs).
    assert Path(denoise_file(first, DenoiseSettings(**FAST)).output) == Path(report.output)


# --------------------------------------------------------------------------- modes

_WRITE_EVERY_KIND = textwrap.dedent("""
    # One process, one thread: each umask in turn (the umask is per process).
    import os, sys, numpy as np
    from pathlib import Path
    from autodip_watch.io.atomic import atomic_output
    from autodip_watch.pipeline.denoise import denoise_file
    from autodip_watch.settings.denoise import DenoiseSettings
    import tifffile
    for folder, umask in zip(sys.argv[1::2], sys.argv[2::2]):
        folder = Path(folder)
        os.umask(int(umask, 8))
        raw = folder / "raw.ome.tif"
        tifffile.imwrite(raw, np.arange(24 * 24, dtype=np.uint16).reshape(24, 24))
        with atomic_output(folder / "small.ome.tif") as temp:
            tifffile.imwrite(temp, np.zeros((8, 8), np.uint8))
        with atomic_output(folder / "table.toml") as temp:
            temp.write_text("x = 1")
        denoise_file(raw, DenoiseSettings(depth=4, width="16", skip=4, iterations=1,
                                          device="cpu"))
""")


def _write_every_kind(runs: list[tuple[Path, int]]) -> None:
    arguments = [str(item) for folder, umask in runs for item in (folder, f"{umask:o}")]
    subprocess.run([sys.executable, "-c", _WRITE_EVERY_KIND, *arguments], check=True,
                   timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_written_files_have_the_mode_the_umask_gives(tmp_path):
    """Outputs, small atomic TIFFs and calibration tables: 0666 less the umask, as a
    plain open() gives (0644 under 022, 0664 under 002, 0660 under 007), never mkstemp's
    0600. Case 12's kind too: in a shared acquisition folder (setgid, group microscopy)
    written by a service user with umask 002 or the unit's 007, the output keeps the
    folder's group and is group-readable. (One subprocess, since each start imports torch;
    the umask is per process, and it runs one thread.)"""
    runs = []
    for umask in (0o022, 0o002, 0o007, 0o077):
        folder = tmp_path / f"umask-{umask:03o}"
        folder.mkdir()
        runs.append((folder, umask, None))
    if os.geteuid() == 0:  # a group the test process is not in needs root
        os.chmod(tmp_path, 0o755)
        for umask in (0o002, 0o007):
            shared = tmp_path / f"shared-{umask:03o}"
            shared.mkdir()
            os.chown(shared, -1, 65534)
            os.chmod(shared, 0o2775)
            runs.append((shared, umask, 65534))
    _write_every_kind([(folder, umask) for folder, umask, _ in runs])
    for folder, umask, group in runs:
        expected = 0o666 & ~umask
        for name in ("raw.autodip.ome.tif", "small.ome.tif", "table.toml"):
            info = (folder / name).stat()
            mode = stat.S_IMODE(info.st_mode)
            assert mode == expected, f"{name}: {mode:o}, expected {expected:o} under {umask:03o}"
            if group is not None:
                assert info.st_gid == group, f"{name} in {folder.name}: the folder's group"
                assert mode & stat.S_IRGRP
        assert not list(folder.glob(".*.tmp"))
    if os.geteuid() != 0:
        pytest.skip("modes checked; the setgid-group case needs root (a group the test "
                    "process is not in)")


# --------------------------------------------------------------------------- OS errors

def _raw(folder: Path) -> Path:
    raw = folder / "cells.ome.tif"
    tifffile.imwrite(raw, np.random.default_rng(3).poisson(100, (256, 256)).astype(np.uint16))
    return raw


def test_a_full_disk_is_named_with_the_path(tmp_path):
    """numpy under tifffile says only "N requested and M written": the message must say
    "No space left on device" and which file, and leave nothing behind."""
    raw = _raw(tmp_path)
    with tiny_filesystem("16k") as disk:  # smaller than the (compressed) output
        with pytest.raises(PipelineError) as failed:
            denoise_file(raw, DenoiseSettings(**FAST), out=disk / "out.ome.tif")
        message = str(failed.value)
        assert "No space left on device" in message and "ENOSPC" in message
        assert str(disk / "out.ome.tif") in message
        assert list(disk.iterdir()) == []


def test_a_read_only_folder_is_named_with_the_path(tmp_path):
    raw = _raw(tmp_path)
    with tiny_filesystem("1m") as disk:
        remount(disk, "ro")
        with pytest.raises(PipelineError) as failed:
            denoise_file(raw, DenoiseSettings(**FAST), out=disk / "out.ome.tif")
        assert "Read-only file system" in str(failed.value) and "EROFS" in str(failed.value)
        assert str(disk / "out.ome.tif") in str(failed.value)


def test_a_missing_folder_is_named_with_the_path(tmp_path):
    raw = _raw(tmp_path)
    target = tmp_path / "no" / "such" / "out.ome.tif"
    with pytest.raises(PipelineError) as failed:
        denoise_file(raw, DenoiseSettings(**FAST), out=target)
    assert "No such file or directory" in str(failed.value) and str(target) in str(failed.value)


def test_a_short_write_without_errno_is_explained_by_probing(tmp_path):
    with tiny_filesystem("64k") as disk:
        filler = disk / "filler"
        with pytest.raises(OSError):
            with open(filler, "wb") as handle:
                handle.write(b"\0" * (1 << 20))
        message = describe_os_error(OSError("1048576 requested and 523776 written"),
                                    disk / "out.ome.tif")
        assert "No space left on device" in message and str(disk / "out.ome.tif") in message
