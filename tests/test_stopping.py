"""A long command stopped by SIGTERM or Ctrl-C exits 128 + signal after its clean-up,
wherever in the Python code the signal lands.

Each case is a real process (``python -m``, as the CLI runs) that signals itself at one
place; ``denoise`` and ``calibrate`` go through the same ``stoppable``, and are stopped
for real in ``test_cli_habits.py``, ``test_temporary_sweep.py`` and below.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.children import stop_when
from helpers.stop_probe import PLACES

TESTS = Path(__file__).parent


def _as_from_a_shell() -> None:
    """SIGINT at its default in the child, as a shell starts a foreground command
    (pytest-xdist's workers ignore it, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("place", list(PLACES))
def test_a_stop_signal_exits_with_its_status_wherever_it_lands(tmp_path, place, signame):
    marker = tmp_path / "cleaned"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "helpers.stop_probe", place, signame,
                           str(marker)], cwd=TESTS, env=env, capture_output=True, text=True,
                          timeout=120, preexec_fn=_as_from_a_shell)
    number = int(getattr(signal, signame))
    # not -2: a KeyboardInterrupt raised inside exec() of a string made CPython end the
    # process by SIGINT after it had been caught and the exit status chosen
    assert done.returncode == 128 + number, done.stderr
    assert f"stopped by {signame}; probe cleaned up" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr and "not stopped" not in done.stderr
    assert marker.read_text() == "cleaning\nclean\n"  # a second signal did not cut it short


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_a_command_gives_the_handlers_back_and_keeps_an_ignored_signal_ignored(sigint):
    """After the body, SIGTERM and SIGINT are the process's again (SIGTERM: the default,
    which ends the process by the signal). A SIGINT the process was started ignoring (a
    script's background job) stays ignored, also during the body."""
    script = ("import os, signal, time\n"
              "from autodip_watch.cli.stopping import stoppable\n"
              f"{'signal.signal(signal.SIGINT, signal.SIG_IGN)' if sigint == 'ignored' else ''}\n"
              "before = signal.getsignal(signal.SIGINT)\n"
              "with stoppable(True, lambda: None, 'x'):\n"
              "    os.kill(os.getpid(), signal.SIGINT) if before == signal.SIG_IGN else None\n"
              "    time.sleep(0.2)\n"
              "assert signal.getsignal(signal.SIGINT) == before\n"
              "assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "time.sleep(5)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, preexec_fn=_as_from_a_shell)
    assert done.returncode == -signal.SIGTERM, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_calibrate_stopped_by_a_signal_says_how_to_resume(tmp_path, lpips_backbone, signum):
    """systemd or a batch scheduler stop a calibration with SIGTERM: it exits 128 +
    signal, says where the finished fits are, and writes no table."""
    from helpers.pairs import make_pairs

    pairs = make_pairs(tmp_path / "pairs")
    out = tmp_path / "site.toml"
    env = {**os.environ, "TORCH_HOME": str(lpips_backbone), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "autodip_watch.cli", "calibrate", str(pairs), "--out",
               str(out), "--depths", "4", "--widths", "16", "--skips", "4",
               "--max-iterations", "1000000", "--every", "1000", "--device", "cpu"]
    # inside the first fit: two seconds after the state database appeared
    state = tmp_path / "site.calibration.sqlite"
    ended = stop_when(command, state.exists, signum, settle=2.0, env=env)
    code, stderr = ended.returncode, " ".join(ended.stderr.split())
    assert code == 128 + signum, stderr
    assert f"stopped by {signal.Signals(signum).name}; finished fits are saved in" in stderr
    assert "Run the same command again" in stderr
    assert not out.exists()


# from 0.2 s: earlier, the signal lands in the interpreter's own start-up (site), before
# any code of ours runs
@pytest.mark.parametrize("delay", [0.2, 0.4, 0.7, 1.2])
def test_ctrl_c_while_the_command_starts_ends_it_quietly(tmp_path, delay):
    """Ctrl-C in the first second (numpy, typer and the commands still importing): the
    command ends as interrupted (130, or killed by SIGINT, which a shell shows as 130),
    without a traceback of the import."""
    import numpy as np
    import tifffile

    raw = tmp_path / "cells.ome.tif"  # not constant: a constant plane is not fitted
    tifffile.imwrite(raw, np.random.default_rng(0).poisson(100, (24, 24)).astype(np.uint16),
                     ome=True)
    command = [sys.executable, "-m", "autodip_watch.cli", "denoise", str(raw), "--depth",
               "4", "--width", "16", "--iterations", "1000000", "--device", "cpu"]
    ended = stop_when(command, lambda: True, signal.SIGINT, settle=delay,
                      env={**os.environ, "OMP_NUM_THREADS": "1"})
    code, stderr = ended.returncode, ended.stderr
    assert code in (130, -signal.SIGINT), stderr
    assert "Traceback" not in stderr, stderr
    assert list(tmp_path.glob(".*.tmp")) == []
