"""The labels a channel can get, and what OME's vocabulary says about them.

Microscope labels are the calibration's (``transfer/labels.py``), the fluorescence modes
outside it (TIRF, light-sheet, ...) and the non-fluorescence ones (brightfield, DIC,
...); specimens are an open set of lower-case names. The tables map OME enumerations
(``Channel@AcquisitionMode``, ``ContrastMethod``, ``IlluminationType``, detector types,
laser pulse modes) to what they say about the microscope.
"""

from __future__ import annotations

import re

from ..transfer.labels import (MICROSCOPES, SPECIMENS, UNKNOWN, canonical_microscope,
                               canonical_specimen)


#: Fluorescence modes the calibration does not cover: denoised with fallback parameters.
OTHER_FLUORESCENCE = ("tirf", "light-sheet", "flim", "sim", "sted", "single-molecule",
                      "spectral", "shg", "other")
#: Channels that are not fluorescence: copied through unless configured otherwise.
NON_FLUORESCENCE = ("brightfield", "phase-contrast", "dic", "darkfield", "transmitted")
MICROSCOPE_LABELS = MICROSCOPES + OTHER_FLUORESCENCE + NON_FLUORESCENCE + (UNKNOWN,)
SPECIMEN_LABELS = SPECIMENS + (UNKNOWN,)

POLICY_DENOISE = "denoise"
POLICY_COPY = "copy"

#: OME Channel@AcquisitionMode -> microscope label.
ACQUISITION_MODES = {
    "LaserScanningConfocalMicroscopy": "confocal", "SpinningDiskConfocal": "confocal",
    "SlitScanConfocal": "confocal", "SweptFieldConfocal": "confocal",
    "WideField": "widefield", "MultiPhotonMicroscopy": "two-photon",
    "TotalInternalReflection": "tirf", "TIRF": "tirf", "SPIM": "light-sheet",
    "FluorescenceLifetime": "flim", "StructuredIllumination": "sim", "STED": "sted",
    "PALM": "single-molecule", "STORM": "single-molecule",
    "SingleMoleculeImaging": "single-molecule", "SpectralImaging": "spectral",
    "SecondHarmonicGenerationImaging": "shg", "BrightField": "brightfield",
    "FluorescenceCorrelationSpectroscopy": "other", "NearFieldScanningOpticalMicroscopy": "other",
    "FSM": "other", "LCM": "other", "Other": "other",
}
#: OME Channel@ContrastMethod values that mean "not fluorescence".
NON_FLUORESCENCE_CONTRAST = {
    "Brightfield": "brightfield", "Phase": "phase-contrast", "DIC": "dic",
    "Darkfield": "darkfield", "HoffmanModulation": "transmitted",
    "ObliqueIllumination": "transmitted", "PolarizedLight": "transmitted",
}
NON_FLUORESCENCE_ILLUMINATION = {"Transmitted": "transmitted", "Oblique": "transmitted"}
CAMERA_TYPES = {"CCD", "IntensifiedCCD", "AnalogVideo", "EMCCD", "CMOS", "EBCCD"}
PULSED_MODES = {"ModeLocked", "Repetitive", "QSwitched", "Single"}
LABEL_SLUG = re.compile(r"^[a-z][a-z0-9-]*$")


def validate_microscope(label: str | None) -> str:
    """Canonical microscope label; ``ValueError`` naming the known labels otherwise."""
    canonical = canonical_microscope(label)
    if canonical not in MICROSCOPE_LABELS:
        raise ValueError(f"unknown microscope {label!r}; use one of {', '.join(MICROSCOPE_LABELS)}")
    return canonical


def validate_specimen(label: str | None) -> str:
    """Canonical specimen label. Specimens are an open set (a new calibration may add
    one), so any lower-case slug is accepted; the table lookup falls back if it has none."""
    canonical = canonical_specimen(label)
    if not LABEL_SLUG.match(canonical):
        raise ValueError(f"invalid specimen {label!r}; use one of {', '.join(SPECIMEN_LABELS)} "
                         f"or a lower-case name")
    return canonical
