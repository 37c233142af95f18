"""Provenance of a denoised file: what was done, with which parameters, why, on what, when.

It travels inside the output as an OME ``MapAnnotation`` (namespace
:data:`PROVENANCE_NAMESPACE`) linked to each denoised image, so Fiji, napari and OMERO
users see it next to the pixels, and :func:`read_provenance` gets it back.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .io.checksums import sha256_file

#: MapAnnotation namespace of the project's provenance records (versioned: readers can
#: tell a future layout apart).
PROVENANCE_NAMESPACE = "urn:autodip-watch:provenance:v1"
PROVENANCE_DESCRIPTION = "AUTO-DIP denoising provenance written by autodip-watch"


def utc_now() -> str:
    """The current time, ISO 8601 in UTC with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class SourceFile:
    """One input file as it was read: name, size, content hash."""

    path: Path
    size: int
    sha256: str
    mtime_ns: int
    ctime_ns: int | None = None

    def as_dict(self) -> dict:
        return {"file": self.path.name, "path": str(self.path), "size": self.size,
                "sha256": self.sha256}


def describe_sources(paths: Iterable[Path]) -> list[SourceFile]:
    """Size, mtime and hash of every file the image is read from."""
    described = []
    for path in paths:
        status = os.stat(path)
        described.append(SourceFile(Path(path), status.st_size, sha256_file(path),
                                    status.st_mtime_ns, status.st_ctime_ns))
    return described


def unchanged(sources: Sequence[SourceFile]) -> bool:
    """Whether every source still has the content it had when it was hashed.

    Size, mtime and ctime equal: unchanged (re-hashing every file would double the
    reads; no tool sets a ctime back). Otherwise the file is hashed again, so a
    ``touch`` during a fit does not discard its output, and new content under a
    preserved mtime is still a change.
    """
    try:
        for source in sources:
            info = os.stat(source.path)
            if ((info.st_size, info.st_mtime_ns, info.st_ctime_ns)
                    == (source.size, source.mtime_ns, source.ctime_ns)):
                continue
            if info.st_size != source.size or sha256_file(source.path) != source.sha256:
                return False
        return True
    except OSError:
        return False


@dataclass
class ChannelRecord:
    """What was done to one logical channel of one image, and why."""

    index: int
    name: str | None
    microscope: str
    specimen: str
    evidence: Sequence[str]
    policy: str
    level: str
    group: str | None
    params: dict[str, set] = field(default_factory=dict)  # name -> values used over planes
    seed: int = 0
    seconds: float = 0.0
    planes: int = 0
    largest_batch: int = 0  # most tiles fitted together with one of this channel's tiles
    #: (lowest, highest) iteration its fits' outputs were taken at, over its planes: the
    #: transferred count, or more where the stable mode's extension went on.
    iterations_run: tuple[int, int] | None = None

    def add_plane(self, params: dict | None, seconds: float, level: str | None = None,
                  group: str | None = None, batch: int = 1,
                  iterations: tuple[int, int] | None = None) -> None:
        """Record one plane; ``level``/``group`` when a plane's transfer differs from the
        channel's (nearest-image transfer picks per plane); ``batch`` the size of the
        batched fit it was part of (1: fitted alone); ``iterations`` the (lowest, highest)
        iteration its fits stopped at."""
        self.planes += 1
        self.seconds += seconds
        if iterations is not None:
            low, high = iterations
            if self.iterations_run is not None:
                low, high = min(low, self.iterations_run[0]), max(high, self.iterations_run[1])
            self.iterations_run = (low, high)
        if params is not None:
            self.largest_batch = max(self.largest_batch, batch)
        for key, value in (params or {}).items():
            self.params.setdefault(key, set()).add(str(value))
        if level is not None:
            self.params.setdefault("level", set()).add(level)
        if group is not None:
            self.params.setdefault("group", set()).add(group)

    def param(self, key: str) -> str:
        values = self.params.get(key)
        return ",".join(sorted(values)) if values else ""


def _span(values: tuple[int, int] | None) -> str:
    """``"300"`` or ``"300-375"``; empty for none."""
    if values is None:
        return ""
    low, high = values
    return str(low) if low == high else f"{low}-{high}"


def _channel_entries(channel: ChannelRecord) -> list[tuple[str, str]]:
    """The ``channel.N.*`` entries of one channel."""
    prefix = f"channel.{channel.index}"
    return [
        (f"{prefix}.name", channel.name or ""), (f"{prefix}.microscope", channel.microscope),
        (f"{prefix}.specimen", channel.specimen),
        (f"{prefix}.evidence", " | ".join(channel.evidence)),
        (f"{prefix}.policy", channel.policy),
        (f"{prefix}.level", channel.param("level") or channel.level),
        (f"{prefix}.group", channel.param("group") or channel.group or ""),
        (f"{prefix}.depth", channel.param("depth")), (f"{prefix}.width", channel.param("width")),
        (f"{prefix}.skip", channel.param("skip")),
        (f"{prefix}.iterations", channel.param("iterations")),
        (f"{prefix}.iterations_run", _span(channel.iterations_run)),
        (f"{prefix}.seed", str(channel.seed)), (f"{prefix}.seconds", f"{channel.seconds:.3f}"),
        (f"{prefix}.planes", str(channel.planes)),
        (f"{prefix}.largest_batch", str(channel.largest_batch)),
    ]


def provenance_entries(*, software: str, version: str, torch_version: str, device: str,
                       sources: Sequence[SourceFile], started: str, finished: str,
                       image_name: str | None, channels: Sequence[ChannelRecord],
                       settings: dict[str, object], host: str | None = None,
                       worker: str | None = None, input_path: Path | None = None,
                       missing: Sequence[str] = (), source_ome: Mapping[str, str] | None = None,
                       warnings: Sequence[str] = (), versions: Mapping[str, str] | None = None,
                       calibration_sha256: str | None = None,
                       command: str | None = None) -> list[tuple[str, str]]:
    """The flat key/value list of one image's MapAnnotation, in a stable order.

    ``host`` is the machine that ran the fit (default: this one); ``worker`` the
    executor that ran it when that is not the local process (a Dask worker address).
    ``input_path`` is the file the output was made for (a set's first file; default
    the first source): its name and absolute path say whose output this is, so that
    a file made for another source is never overwritten (outputs.check_output).
    ``missing`` names what an incomplete input lacked (planes, member files): the
    output then holds only what was there, and says so.
    ``source_ome`` names the source's ``creator``, OME ``uuid`` and ``image_id``;
    ``warnings`` are the reader's warnings (repairs of the source's metadata, planes
    beyond its declared dimensions, ...); ``versions`` the software that made the file
    (Python, numpy, tifffile, ome-types, torch, CUDA, ...); ``calibration_sha256`` the
    hash of the calibration table; ``command`` the command line that ran. Keys added
    later come after the original ones, which keep their names.
    """
    entries: list[tuple[str, str]] = [
        ("software", software), ("software.version", version),
        ("torch.version", torch_version), ("device", device),
        ("worker_host", host or socket.gethostname()),
    ]
    if worker:
        entries.append(("worker", worker))
    entries += [
        ("method", "AUTO-DIP: Deep Image Prior with parameters transferred from the "
                   "calibration group of each channel"),
    ]
    entries += [(f"settings.{key}", "" if value is None else str(value))
                for key, value in settings.items()]
    primary = sources[0]
    made_for = Path(input_path) if input_path is not None else primary.path
    entries += [("input.file", made_for.name), ("input.path", str(made_for.absolute())),
                ("input.complete", "false" if missing else "true")]
    if missing:
        entries.append(("input.missing", "; ".join(missing)))
    entries += [("source.file", primary.path.name), ("source.size", str(primary.size)),
                ("source.sha256", primary.sha256)]
    if len(sources) > 1:
        entries.append(("source.files", str(len(sources))))
        for number, source in enumerate(sources):
            entries += [(f"source.{number}.file", source.path.name),
                        (f"source.{number}.size", str(source.size)),
                        (f"source.{number}.sha256", source.sha256)]
    entries += [("source.image", image_name or ""), ("started", started), ("finished", finished)]
    for channel in channels:
        entries += _channel_entries(channel)
    for key, value in (source_ome or {}).items():
        entries.append((f"source.{key}", "" if value is None else str(value)))
    for key, value in (versions or {}).items():
        entries.append((f"version.{key}", "" if value is None else str(value)))
    if calibration_sha256:
        entries.append(("calibration_table.sha256", calibration_sha256))
    if command:
        entries.append(("command", command))
    entries.append(("source.warnings", str(len(warnings))))
    entries += [(f"source.warning.{number}", text) for number, text in enumerate(warnings)]
    return entries


def software_versions(torch_module=None) -> dict[str, str]:
    """Versions of what made an output: Python, numpy, tifffile, imagecodecs, ome-types,
    pint, and torch and CUDA when ``torch_module`` is given (kept out of light imports)."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("numpy", "tifffile", "imagecodecs", "ome-types", "pint"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = ""
    if torch_module is not None:
        versions["torch"] = torch_module.__version__
        versions["cuda"] = str(torch_module.version.cuda or "none")
        if torch_module.cuda.is_available():
            versions["cudnn"] = str(torch_module.backends.cudnn.version() or "")
    return versions


def read_provenance(path: str | Path) -> list[dict]:
    """The provenance records of an output file: one dict per annotated image.

    The provenance is an OME ``MapAnnotation`` in :data:`PROVENANCE_NAMESPACE` on each
    denoised image (DESIGN §4): software and versions, device, seed, the source files'
    SHA-256, and each channel's labels, evidence and DIP configuration.

    Parameters
    ----------
    path : str or Path
        An output of autodip-watch (``*.autodip.ome.tif``).

    Returns
    -------
    list of dict
        Each has ``image`` (index), ``image_name`` and ``entries`` (key -> value, all
        strings); empty for an OME-TIFF without autodip-watch's provenance.

    Raises
    ------
    OSError
        The file cannot be read.
    ValueError
        The file holds no (valid) OME-XML.
    """
    import ome_types

    ome = ome_types.from_tiff(path)
    by_id = {a.id: a for a in (ome.structured_annotations or [])
             if getattr(a, "namespace", None) == PROVENANCE_NAMESPACE}
    records = []
    for index, image in enumerate(ome.images):
        for ref in image.annotation_refs:
            annotation = by_id.get(ref.id)
            if annotation is None:
                continue
            entries = {m.k: m.value for m in annotation.value.ms}
            records.append({"image": index, "image_name": image.name, "entries": entries})
    return records
