"""autodip-watch: AUTO-DIP denoising of fluorescence microscopy images, as a daemon.

What a script may use is in :data:`__all__`; everything else is internal and may change.
A file is denoised as the ``denoise`` command and the daemon do it::

    from autodip_watch import DenoiseSettings, denoise_file, inspect_file

    settings = DenoiseSettings(device="cpu", seed=0)
    print(inspect_file("cells.ome.tif", settings))   # what would be done, no pixels read
    report = denoise_file("cells.ome.tif", settings)  # writes cells.autodip.ome.tif
    print(report.output, report.seconds)

The names are imported on first use (PEP 562), so ``import autodip_watch`` stays light
(no torch) for the commands that only read metadata or the queue.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_PUBLIC = {
    # denoising a file: the pipeline the daemon and `denoise` run
    "denoise_file": "autodip_watch.pipeline.denoise",
    "denoise_files": "autodip_watch.pipeline.files",
    "inspect_file": "autodip_watch.pipeline.plan",
    "inspect_nearest": "autodip_watch.pipeline.nearest",
    "FileReport": "autodip_watch.pipeline.reports",
    "PlaneReport": "autodip_watch.pipeline.reports",
    "PipelineError": "autodip_watch.pipeline.denoise",
    # settings: one model of everything that can be set
    "DenoiseSettings": "autodip_watch.settings.denoise",
    "FitSettings": "autodip_watch.settings.fit",
    "InferenceSettings": "autodip_watch.settings.inference",
    "CalibrateSettings": "autodip_watch.settings.calibrate",
    "Config": "autodip_watch.settings.config",
    "ConfigError": "autodip_watch.settings.base",
    "load_config": "autodip_watch.settings.config",
    "config_schema": "autodip_watch.settings.config",
    # the method's parameters: the calibration table, and making one
    "CalibrationTable": "autodip_watch.transfer.table",
    "TableError": "autodip_watch.transfer.table",
    "calibrate": "autodip_watch.calibration.run",
    "CalibrationReport": "autodip_watch.calibration.run",
    # files in and out
    "ImageFile": "autodip_watch.io.reader",
    "ImageReadError": "autodip_watch.io.errors",
    "read_provenance": "autodip_watch.provenance",
    "output_name": "autodip_watch.io.outputs",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'autodip_watch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
