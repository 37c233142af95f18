"""Files that appear whole or not at all: temporary names, atomic publish, durable renames.

A new file is written under a hidden temporary name beside its target
(``.<name>.<random>.tmp``, :func:`create_temporary`), fsynced, and renamed over the
target, then the folder is fsynced: a reader, or a crash, never sees a half-written
output. Temporary files are created with mode 0666 less the umask, as a plain ``open()``
would create them. Every writer of the project (outputs, previews, calibration tables
and their images) goes through here.

A writer holds an exclusive ``flock`` on its temporary file until it publishes or
discards it, so that a sweep of leftovers (:func:`remove_temporary_outputs`: a job that
starts, a ``denoise`` stopped by Ctrl-C, a daemon recovering from a crash) removes only
the temporary files of writers that are gone, never the one another process is writing
now (a ``denoise`` by hand beside the daemon, a second daemon on the same folder, a Dask
worker on the same share: NFS carries ``flock`` as a lock of the whole file).
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import fcntl
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


#: Mode a new file asks for; the process umask (or a default ACL) takes bits away, as
#: for any file a program creates with ``open()``.
NEW_FILE_MODE = 0o666

#: Temporary files this process is writing now, as (device, inode). Its own sweeps may
#: remove them (they run after its writer failed or was stopped); other processes find
#: them locked.
_WRITING: set[tuple[int, int]] = set()


def _identity(descriptor: int) -> tuple[int, int]:
    status = os.fstat(descriptor)
    return status.st_dev, status.st_ino


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
        self._descriptor, self.temp = _create_locked(self.out_path)
        self._identity = _identity(self._descriptor)
        _WRITING.add(self._identity)

    def publish(self) -> None:
        if self._descriptor is None:
            raise RuntimeError(f"{self.temp} was already published or discarded")
        os.fsync(self._descriptor)
        os.replace(self.temp, self.out_path)
        fsync_directory(self.out_path.parent)
        self._release()

    def discard(self) -> None:
        if self._descriptor is not None:
            self.temp.unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        """Close the descriptor, and with it the lock (after the rename or the unlink)."""
        _WRITING.discard(self._identity)
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


def _create_locked(out_path: Path) -> tuple[int, Path]:
    """:func:`create_temporary`, locked (``flock``, exclusive) before anyone may sweep it.

    Between the creation and the lock a sweep may take the lock itself and remove the
    file: then the name no longer leads to this descriptor's file, and another is made.
    Where the file system has no ``flock`` the file is written unlocked, as before.
    """
    while True:
        descriptor, temp = create_temporary(out_path)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a sweep holds it and is removing it
            os.close(descriptor)
            continue
        except OSError:  # no flock here (ENOLCK, EOPNOTSUPP): cannot be protected
            return descriptor, temp
        try:
            if os.stat(temp).st_ino == os.fstat(descriptor).st_ino:
                return descriptor, temp
        except FileNotFoundError:
            pass
        os.close(descriptor)


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
    stopped fit); returns those removed. A temporary file that another process is
    writing now (it holds the file's lock, see :class:`AtomicFile`) is left alone. A file
    that cannot be removed is handed to ``on_error`` (the daemon logs it) and left."""
    removed = []
    for temporary in temporary_outputs(output):
        try:
            with _unless_written_elsewhere(temporary) as free:
                if free:
                    temporary.unlink()
                    removed.append(temporary)
        except FileNotFoundError:
            pass
        except OSError as error:
            if on_error is not None:
                on_error(temporary, error)
    return removed


@contextlib.contextmanager
def _unless_written_elsewhere(temporary: Path) -> Iterator[bool]:
    """Yield False while another process's writer holds ``temporary``; else True, holding
    its lock until the caller has removed it (so no writer takes it in between)."""
    descriptor = os.open(temporary, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if _identity(descriptor) in _WRITING:  # this process's own, its writer failed
            yield True
            return
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:  # no flock on this file system: cannot tell, a leftover as before
            pass
        yield True
    finally:
        os.close(descriptor)
