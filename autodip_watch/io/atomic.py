"""Files that appear whole or not at all: temporary names, atomic publish, durable renames.

A new file is written under a hidden temporary name beside its target
(``.<name>.<random>.tmp``, :func:`create_temporary`), fsynced, and renamed over the
target, then the folder is fsynced: a reader, or a crash, never sees a half-written
output. Temporary files are created with mode 0666 less the umask, as a plain ``open()``
would create them. Every writer of the project (outputs, previews, calibration tables
and their images) goes through here.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


#: Mode a new file asks for; the process umask (or a default ACL) takes bits away, as
#: for any file a program creates with ``open()``.
NEW_FILE_MODE = 0o666


def create_temporary(out_path: str | Path) -> tuple[int, Path]:
    """Create a new hidden temporary file beside ``out_path``: ``(descriptor, path)``.

    Like :func:`tempfile.mkstemp` (``O_EXCL``, a random name ``.<name>.<random>.tmp``),
    but created with mode 0666 so that the kernel applies the process umask and any
    default ACL of the folder exactly as for a plain ``open()``: 0644 under umask 022,
    0664 under 002, 0660 under 007. (``mkstemp`` asks for 0600, so an output renamed
    from it would be readable by its owner only.) In a setgid folder the file takes the
    folder's group, as any new file there does. No umask is read, so there is no race
    with other threads.
    """
    out_path = Path(out_path)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(tempfile.TMP_MAX):
        candidate = out_path.parent / f".{out_path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(candidate, flags, NEW_FILE_MODE), candidate
        except FileExistsError:
            continue
    raise FileExistsError(errno_codes.EEXIST, "no unused temporary file name", str(out_path))


def create_scratch(out_path: Path, kind: str) -> Path:
    """A private scratch file beside ``out_path`` while it is written (mode 0600, e.g. the
    memory map of a pyramid level), named so that :func:`temporary_pattern` and
    :func:`remove_temporary_outputs` find it after a crash: ``.<name>.<kind>.<random>.tmp``."""
    descriptor, name = tempfile.mkstemp(prefix=f".{Path(out_path).name}.{kind}.",
                                        suffix=".tmp", dir=Path(out_path).parent)
    os.close(descriptor)
    return Path(name)


def temporary_pattern(out_path: Path) -> str:
    """Glob pattern of the temporary files :func:`create_temporary` makes for ``out_path``."""
    return f".{out_path.name}.*.tmp"


def fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class AtomicFile:
    """A temporary file beside ``out_path`` that becomes ``out_path`` only when published.

    ``publish`` fsyncs the file, renames it over ``out_path`` and fsyncs the folder, so a
    reader (or a crash) never sees a half-written output; ``discard`` removes it.
    """

    def __init__(self, out_path: str | Path) -> None:
        self.out_path = Path(out_path)
        # Mode 0666 less the umask (or a default ACL), as a plain open() would give:
        # mkstemp's 0600 would survive the rename and lock the group out.
        descriptor, self.temp = create_temporary(self.out_path)
        os.close(descriptor)

    def publish(self) -> None:
        with open(self.temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self.temp, self.out_path)
        fsync_directory(self.out_path.parent)

    def discard(self) -> None:
        self.temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(out_path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``out_path``; published on success, removed on error."""
    target = AtomicFile(out_path)
    try:
        yield target.temp
        target.publish()
    except BaseException:
        target.discard()
        raise


_SHORT_WRITE = "requested and"


def describe_os_error(error: OSError, path: str | Path, doing: str = "write") -> str:
    """A one-line message naming what failed, the path and the system's reason.

    ``numpy.tofile`` (under tifffile) reports a full disk only as "N requested and M
    written", without an errno: the folder is then probed with a small write, which
    fails with the real reason (ENOSPC, EDQUOT, EFBIG, EIO ...).
    """
    path = Path(path)
    code, reason = error.errno, error.strerror
    if code is None and _SHORT_WRITE in str(error):
        code, reason = _probe_write(path.parent)
        if code is None:
            reason = f"short write ({error}); the disk may have been full for a moment"
    name = errno_codes.errorcode.get(code, "") if code is not None else ""
    reason = reason or str(error)
    target = error.filename if error.filename and Path(error.filename) != path else None
    where = f"{path}" + (f" ({target})" if target else "")
    return f"cannot {doing} {where}: {reason}" + (f" [{name}]" if name else "")


def _probe_write(folder: Path) -> tuple[int | None, str | None]:
    """Write a few blocks in ``folder`` to learn why a write there failed."""
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"\0" * 65536)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as failure:
        return failure.errno, failure.strerror
    return None, None


def temporary_outputs(output: Path) -> list[Path]:
    """Leftover temporary files of ``output`` (the writer's ``.<name>.*.tmp``)."""
    try:
        return sorted(output.parent.glob(temporary_pattern(output)))
    except OSError:
        return []


def remove_temporary_outputs(output: Path,
                             on_error: Callable[[Path, OSError], None] | None = None) -> list[Path]:
    """Remove the leftover temporary files of ``output`` (a writer killed mid-write, a
    stopped fit); returns those removed. A file that cannot be removed is handed to
    ``on_error`` (the daemon logs it) and left."""
    removed = []
    for temporary in temporary_outputs(output):
        try:
            temporary.unlink()
            removed.append(temporary)
        except FileNotFoundError:
            pass
        except OSError as error:
            if on_error is not None:
                on_error(temporary, error)
    return removed
