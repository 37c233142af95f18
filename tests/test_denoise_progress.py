"""What a person sees while `denoise` runs, captured for real: on a pseudo-terminal (rich
bars redrawn in place) and through a pipe (plain lines), with `--json` kept clean."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ITERATIONS = 5


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "AUTODIP_WATCH_CONFIG"}
    # One thread: a 256x256 depth-8 fit then takes well over the display's 0.1 s per
    # iteration, so every count can be drawn (a loaded machine only makes it slower).
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TERM="xterm-256color",
               COLUMNS="160", LINES="40")
    env.pop("NO_COLOR", None)
    return env


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """The README's sample: 256x256 DAPI, widefield/nucleus (depth 8, width asc)."""
    path = tmp_path_factory.mktemp("sample") / "sample-dapi.ome.tif"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sample.py"), str(path)],
                   check=True, capture_output=True, timeout=120)
    return path


def run_on_pty(args: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run ``args`` with stdin, stdout and stderr on a pseudo-terminal; all it wrote."""
    master, slave = pty.openpty()
    process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=_env(),
                               close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", errors="replace")


def frames(output: str) -> list[str]:
    """What was on the bar's line at each redraw: split at carriage returns and newlines."""
    return [ANSI.sub("", part).strip() for part in re.split(r"[\r\n]", output)
            if ANSI.sub("", part).strip()]


@pytest.fixture(scope="module")
def on_terminal(sample) -> tuple[int, str, Path]:
    """`denoise` of the README sample on a pseudo-terminal: exit code, what it drew, output."""
    output = sample.with_name("sample-dapi.autodip.ome.tif")
    code, drawn = run_on_pty([sys.executable, "-m", "autodip_watch.cli", "denoise",
                              str(sample), "--iterations", str(ITERATIONS)])
    return code, drawn, output


@pytest.mark.slow
def test_denoise_on_a_terminal_advances_every_iteration_with_an_eta(on_terminal):
    code, output, _ = on_terminal
    assert code == 0, output
    shown = frames(output)
    # the stable mode counts to the latest stop its extension allows (ITERATIONS + 25 %)
    # and ends at the iteration the fit stopped at
    bars = [(int(m.group(1)), m.group(3), line) for line in shown
            if (m := re.search(r"plane 1/1(?: fit 1/\d+)?\s(?!fit ).*?(\d+)/(\d+) it .*ETA (\S+)",
                               line))]
    counts = [count for count, _, _ in bars]
    # every iteration is drawn, in order
    assert ITERATIONS <= counts[-1] <= round(ITERATIONS * 1.25), shown
    assert sorted(set(counts)) == list(range(1, counts[-1] + 1)), shown
    assert counts == sorted(counts)
    # a numeric ETA by the second iteration (the first one carries the start-up)
    etas = {count: eta for count, eta, _ in bars}
    assert etas[1] == "-:--:--"
    assert re.fullmatch(r"\d+:\d\d:\d\d", etas[2]), bars
    # it said what it was doing before the first iteration
    first_bar = next(index for index, line in enumerate(shown) if "it/s" in line)
    before = "\n".join(shown[:first_bar])
    assert "reading" in before and "checksumming" in before
    assert re.search(r"building the network for group widefield/nucleus \(depth 8, width asc, "
                     rf"skip 4\) and fitting plane 1 of 1: {ITERATIONS} iterations on cpu",
                     before.replace("\n", " ").replace("  ", " ")), before


def _stack(path: Path, planes: int) -> Path:
    pixels = np.random.default_rng(1).poisson(100, (planes, 48, 48)).astype(np.uint16)
    tifffile.imwrite(path, pixels, metadata={"axes": "ZYX"})
    return path


@pytest.mark.slow
def test_denoise_without_a_terminal_prints_plain_lines_and_keeps_json_clean(tmp_path):
    inputs = [_stack(tmp_path / "a.ome.tif", 2), _stack(tmp_path / "b.ome.tif", 1)]
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, "-m", "autodip_watch.cli", "denoise", *map(str, inputs),
                             "--depth", "4", "--width", "16", "--iterations", "20",
                             "--microscope", "widefield", "--out", str(out), "--json"],
                            capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # stdout is the JSON and nothing else
    assert [Path(item["output"]).name for item in summary] == [
        "a.autodip.ome.tif", "b.autodip.ome.tif"]
    lines = result.stderr.splitlines()
    assert not any("\x1b[" in line for line in lines)  # no terminal codes in a pipe
    # The default mode fits each tile once per ensemble member: follow the first fit.
    plane_lines = [line for line in lines
                   if re.match(r"a\.ome\.tif plane 1/2(?: fit 1/\d+)?: \d+/\d+ it", line)]
    counts = [tuple(map(int, re.search(r": (\d+)/(\d+) it", line).groups()))
              for line in plane_lines]
    # The display thread looks a few times per second and prints when a fit has crossed
    # into a new 10 % step (the cadence itself is tested with a clock in test_progress):
    # a tiny fit may cross several steps between two looks, never print one step twice.
    # The stable mode counts to the latest stop its extension allows (25) and ends at the
    # iteration the fit stopped at.
    steps = [done * 10 // total for done, total in counts]
    assert steps == sorted(set(steps)), plane_lines
    assert {total for _, total in counts[:-1]} <= {25} and 20 <= counts[-1][0] == counts[-1][1]
    assert all(re.search(r"ETA (\d+:\d\d:\d\d|-:--:--)$", line) for line in plane_lines)
    overall = [line for line in lines if line.startswith("all: ")]
    assert overall and overall[-1].startswith("all: 3/3 planes (100 %)")
    assert any(line.startswith("all: 1/3 planes") for line in overall)
    assert any("building the network for group widefield" in line for line in lines)


def test_quiet_denoise_prints_no_progress(tmp_path):
    from typer.testing import CliRunner

    from autodip_watch.cli.app import app

    raw = _stack(tmp_path / "a.ome.tif", 1)
    result = CliRunner().invoke(app, ["denoise", str(raw), "--depth", "4", "--width", "16",
                                      "--iterations", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "it/s" not in result.output and "reading" not in result.output
    assert "loading the engine" not in result.output
    assert "a.autodip.ome.tif" in result.output  # the result line stays

@pytest.mark.slow
def test_show_on_the_readme_sample(on_terminal):
    """The README's flow: the sample, denoised (a short fit), then `show` on its output."""
    from PIL import Image

    from autodip_watch.preview import build_preview

    code, drawn, output = on_terminal
    assert code == 0, drawn
    result = subprocess.run([sys.executable, "-m", "autodip_watch.cli", "show", str(output)],
                            capture_output=True, text=True, timeout=120, env=_env())
    assert result.returncode == 0, result.stderr
    png = output.with_name("sample-dapi.autodip.preview.png")
    assert png.stat().st_size > 20_000
    picture = build_preview(output)
    picture.close()
    (panel,) = picture.channels
    assert "group widefield/nucleus" in panel.caption and "depth 8, width asc" in panel.caption
    image = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert abs(image.shape[1] - picture.figure.get_size_inches()[0] * picture.dpi) <= 1
    (x0, y0, x1, y1), (u0, v0, u1, v1) = panel.boxes["raw"], panel.boxes["denoised"]
    height, width = min(y1 - y0, v1 - v0), min(x1 - x0, u1 - u0)
    raw_panel = image[y0:y0 + height, x0:x0 + width]
    denoised_panel = image[v0:v0 + height, u0:u0 + width]
    assert np.mean(np.abs(raw_panel - denoised_panel)) > 3
