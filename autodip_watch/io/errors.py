"""Why an input cannot be read: one exception class per kind of fault.

Every class is an :class:`ImageReadError` (a ``ValueError``) whose ``str()`` names the
file and the problem, so callers report it as it is.
"""

from __future__ import annotations

from pathlib import Path


class ImageReadError(ValueError):
    """An input that cannot be read as an image; ``str()`` names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class NotAnImageError(ImageReadError):
    """The file is not a TIFF, PNG or OME-XML file at all."""


class TruncatedImageError(ImageReadError):
    """The TIFF structure or its pixel data end early (copy still running, disk full...)."""


class MalformedMetadataError(ImageReadError):
    """The OME-XML is not well-formed XML, not OME, or cannot be turned into an OME model."""


class UnsafeMetadataError(ImageReadError):
    """The OME-XML declares a DTD, entities or external references, or points outside its folder."""


class DimensionError(ImageReadError):
    """Declared dimensions are absurd or do not match the pixel data."""


class MissingFileError(ImageReadError):
    """A file of a multi-file set (or the set's metadata file) is missing."""


class UnsupportedImageError(ImageReadError):
    """A valid image in a layout or pixel type the denoiser does not handle."""
