"""Settings: one declarative model of everything that can be set (pydantic).

``config.py`` is the daemon's configuration file as a whole (:class:`Config`), made of the
tables in ``sections.py``, ``fit.py`` (``[dip]``), ``inference.py`` and ``calibrate.py``;
``denoise.py`` holds the settings of denoising a file (the ``denoise`` command, a daemon
job, a Dask task); ``base.py`` what they share (strict types, located problems);
``runtime.py`` the checks against this machine.
"""
