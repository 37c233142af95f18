"""The ``autodip-watch`` command line (typer): thin commands over the library."""

from .app import app

__all__ = ["app"]
