"""When a raw file is complete: what the watcher inspects before it queues a job.

A file is complete when it parses and holds every plane its metadata declares (OME:
Pixels SizeZ x SizeC x SizeT against the IFDs its TiffData point to, in every file of a
set; ImageJ: ``images=``; Micro-Manager: the summary's planned frames x slices x
channels), and, for a multi-file OME set, when every file of the set is there
(:func:`inspect_image`). :func:`set_signature` and :func:`file_version` are what
"settled" and "this version" compare. Read-only: nothing here writes or moves a file.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import defusedxml.ElementTree as SafeET
import tifffile

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")


class _QuietTifffile(logging.Filter):
    """Drops tifffile's log records while the settler counts the planes of a file that
    is still being written (every look would log "index out of range")."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "quiet", False)


_QUIET = _QuietTifffile()
logging.getLogger("tifffile").addFilter(_QUIET)


@contextlib.contextmanager
def _quiet_tifffile():
    previous = getattr(_QUIET.local, "quiet", False)
    _QUIET.local.quiet = True
    try:
        yield
    finally:
        _QUIET.local.quiet = previous


class UnreadableImage(ValueError):
    """The file does not (yet) parse as a complete image."""


@dataclass(frozen=True)
class ImageSet:
    """What an image file is: on its own, the first file of a multi-file OME set, or a member."""

    path: Path
    members: tuple[Path, ...] = ()  # the other files of its set (it is the set's first file)
    missing: tuple[Path, ...] = ()  # members not present yet
    first_file: Path | None = None  # set when this file is a member: the set is taken there
    planes: "PlaneCount | None" = None  # declared vs present, where the metadata declares


@dataclass(frozen=True)
class PlaneCount:
    """How many planes (TIFF pages) the metadata declares, and how many are there."""

    present: int
    declared: int
    by: str  # which metadata declared them: "OME", "ImageJ", "Micro-Manager"

    @property
    def complete(self) -> bool:
        return self.present >= self.declared

    def describe(self) -> str:
        """``3 of 6 planes its ImageJ metadata declares`` (status, the log, provenance)."""
        return f"{self.present} of {self.declared} planes its {self.by} metadata declares"


def set_files(paths) -> str:
    """``2 file(s) of its OME set: a.ome.tif, b.ome.tif`` (at most five names)."""
    names = [Path(path).name for path in paths]
    return (f"{len(names)} file(s) of its OME set: " + ", ".join(names[:5])
            + (" ..." if len(names) > 5 else ""))


def count_planes(path: Path) -> PlaneCount | None:
    """Planes declared by the file's metadata and planes present, or None where nothing
    is declared (a plain TIFF) or the declaration cannot be resolved from this file (an
    OME set whose metadata is in a companion file: its files' presence is checked).

    Uses tifffile's own parsing: its OME series map every declared plane through the
    TiffData blocks to an IFD of this file or of another file of the set, and leave a
    gap (None) where that IFD or file is not there.
    """
    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            if tif.is_ome:
                series = [s for s in tif.series if s.kind == "ome"]
                if series:
                    declared = sum(len(s.pages) for s in series)
                    present = sum(1 for s in series for page in s.pages if page is not None)
                    return PlaneCount(present, declared, "OME")
                if tif.ome_metadata and "BinaryOnly" in tif.ome_metadata:
                    return None
            if tif.is_imagej:
                images = (tif.imagej_metadata or {}).get("images")
                if isinstance(images, int) and images > 1:
                    return PlaneCount(_imagej_present(tif, images, path), images, "ImageJ")
            if tif.is_micromanager:
                declared = _micromanager_declared(tif)
                if declared:
                    return PlaneCount(len(tif.pages), declared, "Micro-Manager")
    except Exception:  # the completeness check proper (check_tiff_complete) reports errors
        return None
    return None


def _imagej_present(tif: tifffile.TiffFile, images: int, path: Path) -> int:
    """ImageJ stacks may carry one IFD for all planes (data contiguous after it)."""
    pages = len(tif.pages)
    if pages > 1:
        return pages
    page = tif.pages.first
    plane_bytes = int(page.nbytes) if page.nbytes else 0
    if not plane_bytes or not page.dataoffsets:
        return pages
    return max(1, min(images, (path.stat().st_size - page.dataoffsets[0]) // plane_bytes))


def _micromanager_declared(tif: tifffile.TiffFile) -> int | None:
    """Planes the acquisition planned, from Micro-Manager's summary metadata (written
    at the start, before any plane; its OME-XML comes only when the file is closed)."""
    summary = (tif.micromanager_metadata or {}).get("Summary") or {}
    intended = summary.get("IntendedDimensions")
    try:
        if isinstance(intended, dict):
            sizes = [int(intended.get(k, 1) or 1) for k in ("time", "z", "channel")]
        else:
            sizes = [int(summary.get(k, 1) or 1) for k in ("Frames", "Slices", "Channels")]
    except (TypeError, ValueError):
        return None
    declared = sizes[0] * sizes[1] * sizes[2]
    return declared if declared > 1 else None


def check_tiff_complete(path: Path) -> str | None:
    """Parse every IFD and check every page's data lies inside the file.

    Cheap (no pixel decoding) and catches truncated and half-written TIFFs; returns the
    OME-XML, if any. Raises :class:`UnreadableImage`.
    """
    try:
        size = path.stat().st_size
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            pages = tif.pages
            count = len(pages)
            if count == 0:
                raise UnreadableImage("no image pages")
            for index in range(count):
                page = pages[index]
                for offset, length in zip(page.dataoffsets, page.databytecounts):
                    if offset + length > size:
                        raise UnreadableImage(f"page {index} needs {offset + length} bytes but "
                                              f"the file has {size} (truncated or still being "
                                              f"written)")
            if not tif.series:
                raise UnreadableImage("no image series")
            return tif.ome_metadata
    except UnreadableImage:
        raise
    except Exception as error:  # tifffile raises many kinds on garbage input
        raise UnreadableImage(f"not a readable TIFF: {error}") from error


def check_other_complete(path: Path) -> None:
    """Non-TIFF inputs (a folder may match *.png): let the reader decide."""
    from ..io.reader import ImageFile
    from ..io.errors import ImageReadError

    try:
        ImageFile(path)
    except ImageReadError as error:
        raise UnreadableImage(str(error)) from error
    except Exception as error:
        raise UnreadableImage(f"not a readable image: {error}") from error


def ome_file_names(ome_xml: str) -> tuple[list[str], str | None]:
    """The set's file names (TiffData UUID FileName, document order) and any BinaryOnly
    MetadataFile (a member whose metadata lives in a companion file)."""
    try:
        root = SafeET.fromstring(ome_xml.encode("utf-8") if isinstance(ome_xml, str) else ome_xml)
    except Exception as error:
        raise UnreadableImage(f"OME-XML does not parse: {error}") from error
    names: list[str] = []
    metadata_file = None
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "UUID" and element.get("FileName"):
            if element.get("FileName") not in names:
                names.append(element.get("FileName"))
        elif tag == "BinaryOnly":
            metadata_file = element.get("MetadataFile")
    return names, metadata_file


def inspect_image(path: Path) -> ImageSet:
    """Check ``path`` parses completely and find the other files of its OME set.

    A set is taken once, through the first file its OME-XML names; the others (and a
    companion metadata file) are its members and must be present and settled too.
    """
    if not path.name.lower().endswith(_TIFF_SUFFIXES):
        check_other_complete(path)
        return ImageSet(path)
    ome_xml = check_tiff_complete(path)
    planes = count_planes(path)
    if not ome_xml:
        return ImageSet(path, planes=planes)
    names, metadata_name = ome_file_names(ome_xml)
    metadata = None
    if metadata_name:  # BinaryOnly: the set's metadata is in a master TIFF or companion file
        metadata = path.parent / metadata_name
        if not metadata.is_file():
            return ImageSet(path, missing=(metadata,))
        try:
            if metadata.name.lower().endswith(_TIFF_SUFFIXES):
                text = check_tiff_complete(metadata) or ""
            else:
                text = metadata.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UnreadableImage(f"cannot read OME metadata file {metadata}: {error}") from error
        except UnreadableImage as error:
            raise UnreadableImage(f"OME metadata file {metadata.name}: {error}") from error
        names, _ = ome_file_names(text)
    if not names or path.name not in names or (names == [path.name] and metadata is None):
        return ImageSet(path, planes=planes)
    if names[0] != path.name:
        return ImageSet(path, first_file=path.parent / names[0])
    members = [path.parent / name for name in names[1:]]
    if metadata is not None and metadata.name not in names:
        members.append(metadata)
    missing = tuple(member for member in members if not member.is_file())
    for member in members:
        if member not in missing and member.name.lower().endswith(_TIFF_SUFFIXES):
            try:
                check_tiff_complete(member)
            except UnreadableImage as error:
                raise UnreadableImage(f"member {member.name}: {error}") from error
    return ImageSet(path, members=tuple(members), missing=missing, planes=planes)


def set_signature(paths: list[Path]) -> tuple:
    """(size, mtime_ns, ctime_ns) of every file, None for a missing one: what "settled"
    compares."""
    signature = []
    for path in paths:
        try:
            info = path.stat()
            signature.append((info.st_size, info.st_mtime_ns, info.st_ctime_ns))
        except OSError:
            signature.append(None)
    return tuple(signature)


def file_version(paths: list[Path]) -> tuple[int, int, int]:
    """(total size, newest mtime_ns, newest ctime_ns) of a file or set: the job's version."""
    infos = [path.stat() for path in paths]
    return (sum(info.st_size for info in infos), max(info.st_mtime_ns for info in infos),
            max(info.st_ctime_ns for info in infos))
