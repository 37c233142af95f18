"""Acquisition habits, written for real: page-by-page writers, sets with a member missing,
file systems that fill up or are read-only. Shared by the watcher, CLI and daemon tests."""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile

SHAPE = (32, 32)


def frames(count: int, seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).poisson(200, (count, *shape)).astype(np.uint16)


def ome_description(count: int, shape=SHAPE, name: str = "timelapse") -> str:
    """OME-XML declaring ``count`` T planes in this one file (as tifffile writes it)."""
    xml = tifffile.OmeXml()
    xml.addimage("uint16", (count, *shape), (count, 1, 1, *shape, 1), axes="TYX", Name=name)
    return xml.tostring()


def write_pages(path: Path, count: int, declare: str, interval: float = 0.0,
                stop_after: int | None = None, on_page=None, seed: int = 0) -> None:
    """Write ``count`` planes one page at a time, flushed, as acquisition software does.

    ``declare``: "ome" (the first page's OME-XML declares every plane up front), "imagej"
    (``images=count``), "micromanager" (the summary's planned frames, an OME-XML only at
    the end: see :func:`write_micromanager`), or "none" (no count until the file is
    closed, when an OME-XML is put into the first page: case 06). ``stop_after`` aborts
    the acquisition after that many planes (the file is closed as it is).
    """
    if declare == "micromanager":
        write_micromanager(path, count, interval, stop_after, on_page, seed)
        return
    data = frames(count, seed)
    description = {"ome": ome_description(count), "none": "acquisition running",
                   "imagej": tifffile.imagej_description((count, *SHAPE), axes="TYX")}[declare]
    written = count if stop_after is None else stop_after
    with tifffile.TiffWriter(path) as writer:
        for index in range(written):
            writer.write(data[index], contiguous=False, metadata=None,
                         description=description if index == 0 else None)
            writer._fh.flush()
            if on_page is not None:
                on_page(index + 1)
            if index < written - 1:
                time.sleep(interval)
    if declare == "none" and stop_after is None:
        # On close the writer puts the final OME-XML into the first page.
        tifffile.tiffcomment(path, ome_description(count).encode())


def write_micromanager(path: Path, count: int, interval: float = 0.0,
                       stop_after: int | None = None, on_page=None, seed: int = 0) -> None:
    """A Micro-Manager multipage TIFF as MM writes it while acquiring: the header's summary
    metadata (with the planned Frames) first, then one page per plane, each with its
    MicroManagerMetadata tag (51123); no OME-XML, no ImageJ metadata until the end (here:
    never). Hand-written because no library writes this layout."""
    data = frames(count, seed)
    summary = json.dumps({"Frames": count, "Slices": 1, "Channels": 1, "Positions": 1,
                          "Width": SHAPE[1], "Height": SHAPE[0], "PixelType": "GRAY16",
                          "IntendedDimensions": {"time": count, "z": 1, "channel": 1,
                                                 "position": 1}}).encode()
    header = struct.pack("<2sHI", b"II", 42, 0)  # first IFD offset patched below
    # Micro-Manager header: index map, display settings, comments, summary (offsets 0: none yet).
    mm = struct.pack("<IIIIIIII", 54773648, 0, 483765892, 0, 99384722, 0, 2355492, len(summary))
    written = count if stop_after is None else stop_after
    with open(path, "wb") as handle:
        handle.write(header + mm + summary)
        previous_link = 4  # where the offset of the next IFD goes
        for index in range(written):
            plane = data[index].tobytes()
            meta = json.dumps({"FrameIndex": index, "SliceIndex": 0, "ChannelIndex": 0,
                               "PositionIndex": 0}).encode() + b"\0"
            data_offset = handle.tell()
            handle.write(plane)
            meta_offset = handle.tell()
            handle.write(meta)
            if handle.tell() % 2:
                handle.write(b"\0")
            ifd_offset = handle.tell()
            tags = [(256, 4, 1, SHAPE[1]), (257, 4, 1, SHAPE[0]), (258, 3, 1, 16), (259, 3, 1, 1),
                    (262, 3, 1, 1), (273, 4, 1, data_offset), (277, 3, 1, 1),
                    (278, 4, 1, SHAPE[0]), (279, 4, 1, len(plane)),
                    (51123, 2, len(meta), meta_offset)]
            entries = b"".join(struct.pack("<HHII", tag, kind, n, value)
                               for tag, kind, n, value in tags)
            handle.write(struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0))
            end = handle.tell()
            handle.seek(previous_link)
            handle.write(struct.pack("<I", ifd_offset))
            handle.seek(end)
            previous_link = ifd_offset + 2 + 12 * len(tags)
            handle.flush()
            if on_page is not None:
                on_page(index + 1)
            if index < written - 1:
                time.sleep(interval)


def set_xml(names: list[str], channel_names=("DAPI", "Phalloidin")) -> tuple[str, list[str]]:
    """OME-XML of one 2-channel image spread over ``names`` (one plane per file), as
    ../shared/cases/case-18 writes it, and the files' UUIDs."""
    uuids = [f"urn:uuid:{uuid.uuid4()}" for _ in names]
    channels = "".join(f'<Channel ID="Channel:0:{c}" Name="{name}" SamplesPerPixel="1"/>'
                       for c, name in enumerate(channel_names[:len(names)]))
    blocks = "".join(f'<TiffData FirstC="{c}" IFD="0" PlaneCount="1"><UUID FileName="{name}">'
                     f'{uuids[c]}</UUID></TiffData>' for c, name in enumerate(names))
    xml = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="{u}">'
           '<Image ID="Image:0" Name="cells"><Pixels DimensionOrder="XYZCT" ID="Pixels:0" '
           f'SizeC="{len(names)}" SizeT="1" SizeX="{SHAPE[1]}" SizeY="{SHAPE[0]}" SizeZ="1" '
           f'Type="uint16">{channels}{blocks}</Pixels></Image></OME>')
    return xml, uuids


def write_set_member(folder: Path, names: list[str], index: int, xml: str, uuids: list[str],
                     seed: int = 0) -> Path:
    path = folder / names[index]
    tifffile.imwrite(path, frames(1, seed + index)[0],
                     description=xml.replace("{u}", uuids[index]).encode(), metadata=None)
    return path


# ----------------------------------------------------------------------- file systems

@contextlib.contextmanager
def tiny_filesystem(size: str = "1m"):
    """A real, small tmpfs mounted for the test (root with CAP_SYS_ADMIN only): a disk
    that fills up, a folder that can be made read-only. Skips where mounting is refused."""
    mount = Path(tempfile.mkdtemp(prefix="autodip-fs-"))
    os.chmod(mount, 0o755)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                             str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN): "
                    f"{result.stderr.strip() or result.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        with contextlib.suppress(OSError):
            mount.rmdir()


def remount(mount: Path, mode: str) -> None:
    """``ro`` or ``rw``; fails (and says why) while files are open for writing there."""
    result = subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def fill(mount: Path) -> Path:
    """Fill the file system; returns the filler file (delete it to free the space)."""
    filler = mount / "filler"
    with open(filler, "wb") as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
    return filler
