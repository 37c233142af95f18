"""The ``autodip-watch`` command line (typer): thin commands over the library.

``app.py`` holds the app and what commands share; each command module registers its
commands on import, in the order ``--help`` lists them.
"""

try:
    from . import denoise, inspect, calibrate, daemon, config  # noqa: F401, I001  (registers)
    from .app import app
except KeyboardInterrupt:
    # Ctrl-C while the command starts (numpy and the commands importing, before any file
    # is touched) ends it with 130, quietly, as one during the command does
    raise SystemExit(130) from None

__all__ = ["app"]
