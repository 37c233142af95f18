"""Defaults that more than one part of autodip-watch needs, each written once (DESIGN §5,
rq's ``defaults.py``).

A default that only one settings field has is written on that field (``settings/``); the
ones here are shared by settings, the method and the command line. Nothing is imported:
every module may use this one.
"""

from __future__ import annotations

#: The program, as people and systemd know it.
APP_NAME = "autodip-watch"
#: What outputs are called: ``<name><suffix>`` (``io/outputs.py``).
OUTPUT_SUFFIX = ".autodip.ome.tif"
#: A preview replaces its output's ``.ome.tif(f)`` (``x.autodip.ome.tif`` ->
#: ``x.autodip.preview.png``).
PREVIEW_SUFFIX = ".preview.png"
#: Raw images the acquisition software writes; matched case-insensitively.
RAW_PATTERNS = ("*.ome.tif", "*.ome.tiff", "*.tif", "*.tiff")

#: Environment variable naming the daemon's configuration file.
CONFIG_ENV = "AUTODIP_WATCH_CONFIG"
#: Environment variable systemd sets from ``StateDirectory=``.
STATE_DIRECTORY_ENV = "STATE_DIRECTORY"

#: Largest batch of networks fitted together: beyond this the widefield networks gain
#: nothing more on an H100-class GPU (bench/README.md), and one bad tile would fail many.
MAX_BATCH = 32
#: How long a shared batch waits for other jobs still reading their pages, in seconds.
LINGER_SECONDS = 2.0
#: Files run side by side where batching is on and ``jobs_together`` is 0 (auto).
JOBS_TOGETHER = 4
#: Share of the free device memory a batch may use when no budget is set.
MEMORY_FRACTION = 0.8
