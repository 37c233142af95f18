"""The ``autodip-watch`` command line (typer): thin commands over the library.

``app.py`` holds the app and what commands share; each command module registers its
commands on import, in the order ``--help`` lists them.
"""

from . import denoise, inspect, calibrate, daemon, config  # noqa: F401, I001  (registers)
from .app import app

__all__ = ["app"]
