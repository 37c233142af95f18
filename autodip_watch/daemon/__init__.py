"""The daemon: watch folders, queue jobs, run them, say what happens.

Data flows one way: the watcher (``watcher.py``, with ``inspection.py`` for when a file
is complete) queues jobs in SQLite (``queue.py``); an executor (``executor.py``: the
local workers of ``worker.py``, or a Dask cluster, ``dask_executor.py``) runs each job
through the pipeline and records how it ended (``lifecycle.py``); ``status.py`` reads
the queue and the daemon's health; ``service.py`` wires it together under systemd.
"""
