"""A command that stops itself by a signal at a chosen place, through the same
:func:`autodip_watch.cli.stopping.stoppable` as ``denoise`` and ``calibrate``.

Run as ``python -m helpers.stop_probe PLACE SIGNAL MARKER`` (from ``tests/``), the way
the CLI runs under ``python -m``: the case where CPython turns a caught
``KeyboardInterrupt`` into a death by SIGINT. The clean-up writes MARKER, slowly, so
that a signal sent during it can be seen to cut it short.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import typer

from autodip_watch.cli.stopping import stoppable

#: Where the signal lands. ``immediate`` is the mode of :class:`Stopping` each needs.
PLACES = {
    "plain code": True,
    # how dataclasses and namedtuple build classes, which libraries do lazily mid-fit
    "exec of a string": True,
    "exec nested in a finally": True,
    "noted, then a fit's check": False,
    "noted, body ends": False,
    "twice, second one during the clean-up": True,
}

probe = typer.Typer(add_completion=False)


def _signal_self(number: int) -> None:
    os.kill(os.getpid(), number)
    time.sleep(0.5)  # the handler runs here at the latest


@probe.command()
def run(place: str, signame: str, marker: Path) -> None:
    number = int(getattr(signal, signame))
    immediate = PLACES[place]

    def clean_up() -> None:
        marker.write_text("cleaning\n")
        if place.startswith("twice"):
            _signal_self(number)
        time.sleep(0.2)
        with marker.open("a") as file:
            file.write("clean\n")

    with stoppable(immediate, clean_up, "probe cleaned up") as stopping:
        if place == "plain code":
            _signal_self(number)
        elif place == "exec of a string":
            exec(f"import os, time\nos.kill(os.getpid(), {number})\ntime.sleep(0.5)\n")
        elif place == "exec nested in a finally":
            try:
                pass
            finally:
                exec(f"import os, time\nos.kill(os.getpid(), {number})\ntime.sleep(0.5)\n")
        elif place == "noted, then a fit's check":
            _signal_self(number)
            for _ in range(1000):
                stopping.check()
        elif place == "noted, body ends":
            _signal_self(number)
        elif place.startswith("twice"):
            _signal_self(number)
    print("not stopped", file=sys.stderr)


if __name__ == "__main__":
    probe()
