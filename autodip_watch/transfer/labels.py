"""Microscope and specimen labels of the calibration, and their spellings.

The calibration knows three microscope types and three specimens (paper §III-A, FMD
BPAE); files and people spell them in many ways (``wide-field``, ``2p``, ``nuclei``),
which :func:`canonical_microscope` and :func:`canonical_specimen` map to one label.
"""

from __future__ import annotations

import difflib

#: Microscope types of the calibration.
MICROSCOPES = ("confocal", "widefield", "two-photon")
#: Specimens of the calibration.
SPECIMENS = ("actin", "mito", "nucleus")
#: The label of what no source says.
UNKNOWN = "unknown"

_MICROSCOPE_ALIASES = {
    "confocal": "confocal", "widefield": "widefield", "wide-field": "widefield",
    "wf": "widefield", "epifluorescence": "widefield",
    "two-photon": "two-photon", "twophoton": "two-photon", "2p": "two-photon",
    "multiphoton": "two-photon", "multi-photon": "two-photon", "two photon": "two-photon",
    "spinning-disk": "confocal", "spinning disk": "confocal", "laser-scanning": "confocal",
    # modes outside the calibration (metadata: their policy and fallback)
    "tirf": "tirf", "total internal reflection": "tirf",
    "light-sheet": "light-sheet", "lightsheet": "light-sheet", "light sheet": "light-sheet",
    "spim": "light-sheet",
    "bright-field": "brightfield", "bf": "brightfield", "phase": "phase-contrast",
    "phase contrast": "phase-contrast",
}
_SPECIMEN_ALIASES = {
    "actin": "actin", "f-actin": "actin", "mito": "mito", "mitochondria": "mito",
    "mitochondrion": "mito", "nucleus": "nucleus", "nuclei": "nucleus", "dna": "nucleus",
    "nuclear": "nucleus",
}


def canonical_microscope(label: str | None) -> str:
    """Canonical microscope label; anything not in the calibration passes through lower-cased."""
    if label is None or not str(label).strip():
        return UNKNOWN
    text = str(label).strip().lower()
    return _MICROSCOPE_ALIASES.get(text, text)


def canonical_specimen(label: str | None) -> str:
    if label is None or not str(label).strip():
        return UNKNOWN
    text = str(label).strip().lower()
    return _SPECIMEN_ALIASES.get(text, text)


def uncalibrated_specimen(label: str, calibrated: set[str]) -> str | None:
    """Why a specimen a person named (a folder's default, ``--specimen``) will not find a
    calibrated group, or None when it will.

    Specimens are an open set (a table may calibrate new ones), so an unknown name is not
    an error; but a misspelling silently gives the channel a coarser configuration, so
    it is said, with the closest calibrated name or spelling.

    Parameters
    ----------
    label : str
        The name as written (any spelling :func:`canonical_specimen` knows).
    calibrated : set of str
        The specimens the calibration table has groups for
        (:meth:`~autodip_watch.transfer.table.CalibrationTable.specimens`).
    """
    canonical = canonical_specimen(label)
    if canonical in calibrated or canonical == UNKNOWN:
        return None
    spellings = {alias: name for alias, name in _SPECIMEN_ALIASES.items() if name in calibrated}
    spellings.update({name: name for name in calibrated})
    close = difflib.get_close_matches(canonical, list(spellings), n=1, cutoff=0.6)
    hint = (f"; did you mean {close[0]!r}" + (f" ({spellings[close[0]]})"
                                              if spellings[close[0]] != close[0] else "") + "?"
            if close else "")
    return (f"specimen {label!r} has no group in the calibration table (it has "
            f"{', '.join(sorted(calibrated))}): its channels get the configuration of a "
            f"coarser level (their microscope's, or all){hint}")
