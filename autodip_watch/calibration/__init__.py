"""AUTO-DIP calibration on a site's own noisy / ground-truth pairs (paper §II-B, §III-A).

``pairs.py`` reads the pairs, ``grid.py`` is the search space, ``fitting.py`` runs and
scores one fit, ``state.py`` keeps finished fits (resumable), ``selection.py`` picks the
best configurations, ``tables.py`` writes the table, ``run.py`` drives a run, and
``cluster_executor.py`` runs the fits on a Dask cluster.
"""
