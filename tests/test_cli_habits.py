"""`denoise` as people and schedulers use it: --out folders, a second run, SIGTERM, full
and read-only disks. Real files and, for signals, a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from helpers.acquisition import remount, tiny_filesystem
from helpers.children import stop_when
from autodip_watch.cli.app import app

FAST = ["--depth", "4", "--width", "16", "--skip", "4", "--iterations", "2", "--device", "cpu"]


def raw(path: Path, seed: int = 0, shape=(24, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.random.default_rng(seed).poisson(100, shape).astype(np.uint16),
                     metadata={"axes": "YX"})
    return path


def one_line(text: str) -> str:
    return " ".join(text.split())


def squashed(text: str) -> str:
    """Without any white space: rich wraps long paths anywhere."""
    return "".join(text.split())


@pytest.mark.parametrize("form", ["missing folder with a slash", "existing folder",
                                  "nested missing folder with a slash"])
def test_out_is_a_folder_when_it_says_so(tmp_path, form):
    """The README's own example, `--out denoised/`: a folder, created if missing; a second
    run of another file adds its output beside the first instead of replacing it."""
    target = {"missing folder with a slash": tmp_path / "denoised",
              "existing folder": tmp_path / "denoised",
              "nested missing folder with a slash": tmp_path / "a" / "b" / "denoised"}[form]
    if form == "existing folder":
        target.mkdir()
    argument = str(target) + ("/" if "slash" in form else "")
    runner = CliRunner()
    for name in ("one.ome.tif", "two.tif"):
        result = runner.invoke(app, ["denoise", str(raw(tmp_path / name)), *FAST,
                                     "--out", argument])
        assert result.exit_code == 0, result.output
    assert target.is_dir()
    assert sorted(p.name for p in target.iterdir()) == ["one.autodip.ome.tif",
                                                        "two.tif.autodip.ome.tif"]


def test_out_as_a_file_and_the_refusals(tmp_path):
    runner = CliRunner()
    source = raw(tmp_path / "cells.ome.tif")
    result = runner.invoke(app, ["denoise", str(source), *FAST, "--out",
                                 str(tmp_path / "result.ome.tif")])
    assert result.exit_code == 0 and (tmp_path / "result.ome.tif").is_file()
    before = (tmp_path / "result.ome.tif").read_bytes()
    # Another input onto that output: refused, named, untouched.
    other = raw(tmp_path / "other.ome.tif", seed=1)
    refused = runner.invoke(app, ["denoise", str(other), *FAST, "--out",
                                  str(tmp_path / "result.ome.tif")])
    assert refused.exit_code == 1
    assert str(source) in squashed(refused.output) and "notoverwritten" in squashed(refused.output)
    assert (tmp_path / "result.ome.tif").read_bytes() == before
    # The same input again: its own output is replaced.
    assert runner.invoke(app, ["denoise", str(source), *FAST, "--out",
                               str(tmp_path / "result.ome.tif")]).exit_code == 0
    # A slash on a file; two inputs onto one name.
    assert runner.invoke(app, ["denoise", str(source), *FAST, "--out",
                               str(tmp_path / "result.ome.tif") + "/"]).exit_code == 2
    twin = raw(tmp_path / "elsewhere" / "cells.ome.tif", seed=2)
    clash = runner.invoke(app, ["denoise", str(source), str(twin), *FAST, "--out",
                                str(tmp_path / "out") + "/"])
    assert clash.exit_code == 2 and "would both be written" in clash.output
    assert not list(tmp_path.rglob(".*.tmp"))


def test_os_errors_name_the_reason_and_the_path(tmp_path):
    source = raw(tmp_path / "cells.ome.tif", shape=(256, 256))
    runner = CliRunner()
    with tiny_filesystem("16k") as disk:  # smaller than the (compressed) output
        full = runner.invoke(app, ["denoise", str(source), *FAST, "--out", str(disk) + "/"])
        assert full.exit_code == 1
        text = one_line(full.output)
        assert "No space left on device" in text
        assert str(disk / "cells.autodip.ome.tif") in squashed(full.output)
        assert list(disk.iterdir()) == []
        remount(disk, "ro")
        read_only = runner.invoke(app, ["denoise", str(source), *FAST, "--out",
                                        str(disk) + "/"])
        assert read_only.exit_code == 1
        assert "Read-only file system" in one_line(read_only.output)
        nested = runner.invoke(app, ["denoise", str(source), *FAST, "--out",
                                     str(disk / "new") + "/"])
        assert nested.exit_code == 1 and "cannot create the folder" in one_line(nested.output)


@pytest.mark.slow
@pytest.mark.parametrize("files, signum, unreadable", [
    (1, signal.SIGTERM, False), (2, signal.SIGTERM, False), (2, signal.SIGINT, False),
    (2, signal.SIGTERM, True)],
    ids=["one file, SIGTERM", "side by side, SIGTERM", "side by side, Ctrl-C",
         "one after the other, the first unreadable"])
def test_a_signal_during_denoise_leaves_no_temporary_file(tmp_path, files, signum,
                                                          unreadable):
    """systemd, a batch scheduler or `timeout` send SIGTERM: like Ctrl-C, the run stops,
    removes its temporary outputs, writes no output and exits 128+signal. Files denoised
    side by side (threads sharing batches) stop at their next iteration and clean up too.
    With --json, stdout still says what became of every input (a batch script must tell
    the finished from the stopped)."""
    sources = [raw(tmp_path / f"cells{n}.ome.tif", seed=n) for n in range(files)]
    if unreadable:
        sources[0].write_bytes(b"not a TIFF")
    command = [sys.executable, "-m", "autodip_watch.cli", "denoise", *map(str, sources),
               "--depth", "4", "--width", "16", "--iterations", "1000000", "--device", "cpu",
               "--json"]
    if files > 1 and not unreadable:
        command += ["--batching", "on", "--jobs-together", str(files)]
    fitting = files - unreadable
    # well inside the fit: a second after the temporary outputs appeared
    ended = stop_when(command, lambda: len(list(tmp_path.glob(".*.tmp"))) >= fitting,
                      signum, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ended.returncode == 128 + signum, ended.stderr
    assert signal.Signals(signum).name in ended.stderr
    assert list(tmp_path.glob(".*.tmp")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in sources)
    said = json.loads(ended.stdout)
    said = [said] if files == 1 else said
    assert [item["input"] for item in said] == list(map(str, sources))
    for index, item in enumerate(said):
        expected = "not a TIFF" if unreadable and index == 0 else "stopped before it finished"
        assert "output" not in item and expected in one_line(item["error"]), item
