"""``python -m autodip_watch.cli``: the command line."""

from . import app

app()
