"""The daemon: watch folders, queue jobs, run them, say what happens.

Data flows one way: the watcher (``watcher.py``, with ``inspection.py`` for when a file
is complete and ``observers.py`` for the folders' observers) queues jobs in SQLite
(``queue.py``, its rows in ``jobs.py``); an executor (``executor.py``: the local workers
of ``worker.py``, or a Dask cluster, ``dask_executor.py`` and ``dask_tasks.py``) runs
each job through the pipeline and records how it ended (``lifecycle.py``);
``status.py`` reads the queue and the daemon's health; ``service.py`` wires it together
under systemd; ``exporter.py`` serves Prometheus metrics, ``log.py`` the structured log.
"""
