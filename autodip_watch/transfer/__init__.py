"""AUTO-DIP parameter transfer: which DIP configuration a plane gets (paper §II-B).

``table.py`` reads calibration tables; ``hierarchy.py`` is the group walk (microscope +
specimen, microscope, specimen, all); ``nearest.py`` transfers from the most similar
calibration image (``images.py``). Part of the method: nothing here knows about the
daemon, the CLI or the settings file.
"""
