"""The ``autodip-watch`` command line (typer): thin commands over the library.

``app.py`` holds the app and what commands share; each command module registers its
commands on import, in the order ``--help`` lists them. :func:`main` is the console
script; ``app`` (the typer app with every command) is made on first use (PEP 562).
"""

from __future__ import annotations

import sys

__all__ = ["app", "main"]


def _app():
    from . import denoise, inspect, calibrate, daemon, config  # noqa: F401, I001  (registers)
    from .app import app

    # importing the submodule ``app`` set this package's ``app`` to the module; the name
    # means the typer app, as it did when this package imported everything up front
    globals()["app"] = app
    return app


def main() -> None:
    """Run the command line (the ``autodip-watch`` script and ``python -m``).

    A Ctrl-C while the command is still starting (importing numpy and the commands,
    before any file is touched) ends it with 130, quietly, as one during the command
    does, not with a traceback of the import.
    """
    try:
        command = _app()
    except KeyboardInterrupt:
        sys.exit(130)
    command()


def __getattr__(name: str):
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
