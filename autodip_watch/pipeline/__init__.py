"""One file: read -> infer -> transfer -> denoise -> write (``denoise.py``).

``plan.py`` decides from metadata alone what will be done (what ``inspect`` shows);
``reports.py`` says what was done. The CLI's ``denoise`` and the daemon run the same
:func:`~autodip_watch.pipeline.denoise.denoise_file`.
"""
