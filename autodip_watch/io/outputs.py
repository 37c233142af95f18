"""Output files: their names, whose they are, whether they are current, how they are created.

Light on purpose (no torch, no ome-types at import): the watcher, the worker, ``status``
and the CLI all use it.

Naming (one output per source)
------------------------------
``X.ome.tif`` -> ``X.autodip.ome.tif`` (the canonical case keeps its short name); every
other name keeps its whole name, format extension included: ``X.tif`` ->
``X.tif.autodip.ome.tif``, ``X.ome.tiff`` -> ``X.ome.tiff.autodip.ome.tif``, ``X.png`` ->
``X.png.autodip.ome.tif``. So the exports of one field side by side (``cells.tif``,
``cells.ome.tif``, ``cells.png``) get three outputs. The configurable suffix replaces
``.autodip.ome.tif``. Only the exact lower-case ``.ome.tif`` is shortened, so ``X.OME.TIF``
and ``X.ome.tif`` (distinct files on a case-sensitive file system) do not meet either.

No rule that keeps the short canonical name is one-to-one on every conceivable name
(``X.tif`` and ``X.tif.ome.tif`` still meet), so a second rule guards the output path: a
file there is replaced only when autodip-watch wrote it from this source (its provenance
names the source's file name, and its path, unless the recorded path no longer exists,
as after a folder was renamed). Anything else there is never overwritten: the job stops
with an error naming both files.

Current by content
------------------
An output is current when the provenance it carries records the SHA-256 of every source
file as the files are now. Modification times are never used: a raw file replaced by
other content with an older mtime (``cp -p``, ``rsync -a``) makes its output stale, and
``touch`` does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..defaults import OUTPUT_SUFFIX, PREVIEW_SUFFIX

#: The one input ending that the output name drops (exact, lower case).
CANONICAL_INPUT_SUFFIX = ".ome.tif"


def output_name(input_name: str, suffix: str = OUTPUT_SUFFIX) -> str:
    """The output file name for the raw file named ``input_name``.

    ``cells.ome.tif`` -> ``cells.autodip.ome.tif``; ``cells.tif`` ->
    ``cells.tif.autodip.ome.tif``; ``cells.png`` -> ``cells.png.autodip.ome.tif``.
    A multi-file OME set is named after its first file. Only ``.ome.tif`` is dropped,
    so raw files that differ only in their extension never share an output.

    Parameters
    ----------
    input_name : str
        The raw file's name (no folder).
    suffix : str
        The output suffix (``[output] suffix``; ends in ``.ome.tif`` or ``.ome.tiff``).

    Returns
    -------
    str
        The output's name, to be placed beside the raw file or under an output root.
    """
    if input_name.endswith(CANONICAL_INPUT_SUFFIX) and len(input_name) > len(CANONICAL_INPUT_SUFFIX):
        return input_name[: -len(CANONICAL_INPUT_SUFFIX)] + suffix
    return input_name + suffix


def output_path_for(input_path: Path, out: Path | None = None,
                    suffix: str = OUTPUT_SUFFIX) -> Path:
    """The output of ``input_path``: beside it, in the folder ``out``, or the file ``out``.

    Named by :func:`output_name`: ``X.ome.tif`` -> ``X.autodip.ome.tif``, any
    other name keeps its extension (``X.tif`` -> ``X.tif.autodip.ome.tif``), so
    different raw files in one folder never share an output.
    """
    default_name = output_name(input_path.name, suffix)
    if out is None:
        return input_path.with_name(default_name)
    if out.is_dir():
        return out / default_name
    return out


def preview_path(output: str | Path) -> Path:
    """The before/after preview of an output: ``x.autodip.ome.tif`` ->
    ``x.autodip.preview.png`` beside it."""
    output = Path(output)
    name = output.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return output.with_name(name + PREVIEW_SUFFIX)


def is_output_name(name: str, suffix: str = OUTPUT_SUFFIX) -> bool:
    """Whether a file called ``name`` is an output of autodip-watch, or an output's
    preview, by its name: with ``suffix`` or the default one (case-insensitive)."""
    lowered = name.lower()
    for ending in {OUTPUT_SUFFIX, suffix.lower()}:
        if lowered.endswith(ending):
            return True
        if lowered.endswith(ending.rsplit(".ome.tif", 1)[0] + PREVIEW_SUFFIX):
            return True
    return False


# ----------------------------------------------------------------------- ownership

@dataclass(frozen=True)
class RecordedSource:
    """One source file as an output's provenance records it."""

    file: str
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class OutputCheck:
    """What is at an output path, for one source.

    ``state`` is ``absent``, ``current`` (made by autodip-watch from this source's content
    as it is now), ``stale`` (made from this source, but from other content) or
    ``foreign`` (not ours, or made from another source: never overwritten); ``reason``
    says why, for logs and errors.
    """

    state: str
    reason: str = ""

    @property
    def may_write(self) -> bool:
        return self.state in ("absent", "stale", "current")


class OutputConflictError(RuntimeError):
    """A file at the output path was not written by autodip-watch for this source."""


def recorded_sources(output: str | Path) -> tuple[dict[str, str], list[RecordedSource]] | None:
    """The provenance entries of ``output``'s first annotated image and its source files,
    or None when the file carries no autodip-watch provenance (or cannot be read)."""
    from ..provenance import read_provenance

    try:
        records = read_provenance(output)
    except Exception:  # not a TIFF, no OME, damaged: in any case not ours
        return None
    if not records:
        return None
    entries = records[0]["entries"]
    if "source.sha256" not in entries:
        return None
    count = int(entries.get("source.files") or 0)
    if count > 1:
        sources = [RecordedSource(entries.get(f"source.{n}.file", ""),
                                  entries.get(f"source.{n}.sha256", ""),
                                  _int(entries.get(f"source.{n}.size")))
                   for n in range(count)]
    else:
        sources = [RecordedSource(entries.get("source.file", ""), entries["source.sha256"],
                                  _int(entries.get("source.size")))]
    return entries, sources


def check_output(output: str | Path, source: str | Path,
                 hashes: Iterable[tuple[str, str]] | None = None) -> OutputCheck:
    """Whether ``output`` may be written for ``source``, and whether it is already current.

    ``hashes``: ``(file name, sha256)`` of every file the source is read from (a
    multi-file set: all of them), as they are now; without them an output of ours is
    called ``stale`` (it may be replaced, it is not known to be current).
    """
    output, source = Path(output), Path(source)
    if not output.exists():
        return OutputCheck("absent")
    recorded = recorded_sources(output)
    if recorded is None:
        return OutputCheck("foreign", f"{output} exists and was not written by autodip-watch "
                                      f"(it has no autodip-watch provenance)")
    entries, sources = recorded
    # The file the output was made for (the first file of a set, not its companion).
    primary_name = entries.get("input.file") or entries.get("source.file", "")
    primary_path = entries.get("input.path", "")
    if primary_name != source.name:
        return OutputCheck("foreign", f"{output} exists and was made by autodip-watch from "
                                      f"another file, {primary_path or primary_name}")
    if primary_path and Path(primary_path) != source.absolute() and Path(primary_path).exists():
        return OutputCheck("foreign", f"{output} exists and was made by autodip-watch from "
                                      f"another file, {primary_path}")
    if hashes is None:
        return OutputCheck("stale", "made from this file; its content was not compared")
    wanted = sorted(hashes)
    have = sorted((s.file, s.sha256) for s in sources)
    if wanted == have:
        return OutputCheck("current", "made from this content (SHA-256 of every source file)")
    return OutputCheck("stale", "made from other content of this file (SHA-256 differs)")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None
