"""Per-channel microscope type and specimen, from OME metadata, names, folders and rules.

``infer.py`` decides (with the evidence for each decision) from what ``context.py``
gathers of a file, with the site's ``rules.py``; ``labels.py`` holds the vocabulary.
"""
