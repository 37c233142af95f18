"""SIGTERM and SIGINT during a long command (``denoise``, ``calibrate``): stop, clean up,
and exit with 128 + the signal's number, as a shell, systemd or a batch scheduler expects.

The handler raises :class:`Stopped`, not ``KeyboardInterrupt``. CPython marks a
``KeyboardInterrupt`` as unhandled when it leaves code run by ``exec`` of a string (how
``dataclasses`` and ``collections.namedtuple`` build classes, which libraries do lazily,
in the middle of a fit) and, under ``python -m`` and the console scripts, then ends the
process by SIGINT at exit whatever status the command chose, even though the command
caught the exception and cleaned up. An exception of our own is never marked.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import typer
from rich.markup import escape

from .app import console

#: The signals a command stops on: Ctrl-C, and what systemd, ``timeout``, Slurm and
#: Kubernetes send first.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """A stop signal came: raised where the main thread is (at once) or at the next
    check of a fit (:meth:`Stopping.check`). A ``BaseException`` so that the
    ``except Exception`` of a library does not swallow it.

    Attributes
    ----------
    signum : int
        The signal's number (``signal.SIGTERM`` = 15, ``signal.SIGINT`` = 2).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Stopping:
    """The state of a command that may be stopped by a signal.

    ``immediate``: the first signal raises :class:`Stopped` in the main thread at once
    (one file at a time: the writer removes its temporary file on the way out).
    Otherwise the first signal is only noted, and each fit raises at its next
    :meth:`check` (files side by side in threads, so that every thread's writer cleans
    up); a second signal raises at once. After the handler has raised once it only
    notes, so that a repeated signal does not cut the clean-up short.
    """

    def __init__(self, immediate: bool) -> None:
        self.immediate = immediate
        self.signal: Optional[int] = None
        self._raised = False
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """True once a stop signal came."""
        return self.signal is not None

    def install(self) -> None:
        """Take over SIGTERM and SIGINT (main thread only; elsewhere, e.g. a test calling
        the app from a thread, the process's handlers stay). A signal the process was
        started ignoring stays ignored: a shell script's background job (``cmd &``) is
        meant not to stop on the terminal's Ctrl-C."""
        for number in STOP_SIGNALS:
            try:
                if signal.getsignal(number) == signal.SIG_IGN:
                    continue
                self._previous[number] = signal.signal(number, self._on_signal)
            except ValueError:  # not the main thread
                pass

    def restore(self) -> None:
        """Give SIGTERM and SIGINT back to the handlers they had before :meth:`install`."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def check(self) -> None:
        """Raise :class:`Stopped` if a stop signal came; called by fits at every
        iteration, from any thread."""
        if self.signal is not None:
            raise Stopped(self.signal)

    def watching(self, for_file):
        """``for_file(path) -> (progress, notify)`` whose progress callbacks first
        :meth:`check`, so that a fit stops at its next iteration once a signal came."""
        def watched(path):
            progress, notify = for_file(path)

            def checked(*args) -> None:
                self.check()
                progress(*args)
            return checked, notify
        return watched

    def only_note(self) -> None:
        """From here on a signal is noted, never raised (the clean-up is running)."""
        self._raised = True

    def _on_signal(self, number: int, frame) -> None:
        first = self.signal is None
        self.signal = number
        if self._raised or (first and not self.immediate):
            return
        self._raised = True
        raise Stopped(number)


@contextmanager
def stoppable(immediate: bool, on_stop: Callable[[], None], done: str) -> Iterator[Stopping]:
    """Run the body with SIGTERM and SIGINT turned into :class:`Stopped` (see
    :class:`Stopping` for ``immediate``).

    On a stop, ``on_stop()`` cleans up (a repeated signal does not interrupt it), the
    console says ``stopped by SIGTERM; <done>``, and :class:`typer.Exit` ends the command
    with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT). A signal noted but
    not yet acted on when the body ends stops the command the same way. A
    ``KeyboardInterrupt`` from elsewhere (a Ctrl-C that came before the handlers were
    installed) counts as SIGINT.

    Raises
    ------
    typer.Exit
        After a stop, with code 128 + signal.
    """
    stopping = Stopping(immediate)
    stopping.install()
    try:
        yield stopping
        stopping.check()
    except (Stopped, KeyboardInterrupt):
        stopping.only_note()
        number = stopping.signal or signal.SIGINT
        on_stop()
        console.print(f"[yellow]stopped by {signal.Signals(number).name}; {escape(done)}[/yellow]",
                      highlight=False)
        raise typer.Exit(128 + number) from None
    finally:
        stopping.restore()
