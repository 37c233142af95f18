"""Files in and out: reading images and their OME metadata, writing OME-TIFF outputs.

``reader.py`` (with ``pages.py``, ``ome_series.py``, ``omexml.py``, ``repair.py``,
``physical.py``, ``units.py``) opens every supported input without reading whole stacks;
``writer.py`` (with ``layout.py``) writes the denoised OME-TIFF; ``atomic.py`` makes
every written file appear whole or not at all; ``outputs.py`` names outputs and says
whose a file at an output path is; ``checksums.py`` hashes files.
"""
