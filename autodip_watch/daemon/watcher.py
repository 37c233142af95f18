"""Watch folders and turn settled, complete raw files into queued jobs.

Events only nominate *candidates*; a candidate becomes a job once its size and mtime
(and those of every file of its OME set) have not changed for ``settle_seconds``, it
parses completely, **and it holds every plane its metadata declares** (OME: Pixels
SizeZ x SizeC x SizeT against the IFDs its TiffData point to, in every file of a set;
ImageJ: ``images=``; Micro-Manager: the summary's planned frames x slices x channels).
Acquisition software writes page by page, over minutes, and over SMB/NFS in bursts:
"unchanged for a while" alone cannot say "finished". A file with fewer planes than it
declares is *acquiring*; its partial versions never become jobs.

On a native (inotify) observer the watcher also sees writers open and close files: a
file modified since its writer last closed it (``IN_CLOSE_WRITE``) is *being written*
and waits, which covers writers that declare nothing until they close (an OME-XML
written at the end). A polling observer (network shares) sees only sizes and times, so
there settle time and declared planes are all that apply.

A file or set that stays incomplete and unchanged for ``incomplete_after_seconds`` (an
aborted acquisition, a member that never arrives, a writer that never closes) is taken
as it is: a job that records what is missing, denoises what is there, and ends
``partial``. A later, complete version is a new job that replaces its output.

A version whose content (SHA-256) equals the latest job of the path, only its times
changed (``touch``, ``cp -p`` of identical bytes), adds no job (queue.same_content).
A startup rescan and a rescan whenever a folder (re)appears make the events an
optimisation, not the source of truth.

One observer per folder, so a share that disappears is stopped and re-scheduled on its
own when it comes back, without touching the others. Everything except the watchdog
threads runs in one "settler" thread; it is the only writer of new jobs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue as stdqueue
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import defusedxml.ElementTree as SafeET
import tifffile
from watchdog import events as watchdog_events
from watchdog.events import (DirCreatedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
                             FileModifiedEvent, FileMovedEvent, FileSystemEvent,
                             FileSystemEventHandler)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from ..settings.config import Config, WatchFolder
from .log import Condition, get_logger
from ..io.checksums import hash_files
from .queue import JobQueue

log = get_logger("autodip_watch.watcher")

#: Suffixes of files still being written or left behind by writers and copiers.
TEMPORARY_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".filepart", "~")
# IN_ATTRIB (watchdog >= 5: FileAttribEvent) lets a `touch` be seen at once; it adds no job.
_ATTRIB = getattr(watchdog_events, "FileAttribEvent", None)
_EVENTS = [FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileClosedEvent,
           DirCreatedEvent, DirMovedEvent] + ([_ATTRIB] if _ATTRIB is not None else [])
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


# --------------------------------------------------------------------- inspection

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


def sha256_of(paths: list[Path], chunk: int = 1 << 20) -> str:
    """SHA-256 of the files' bytes one after the other (a set's content as one)."""
    return hash_files(paths, chunk)[0]


# ----------------------------------------------------------------------- watching

@dataclass
class Candidate:
    path: Path
    folder: WatchFolder
    since: float  # wall clock, for status
    changed: float = 0.0  # monotonic time of the last observed change
    signature: tuple = ()
    members: tuple[Path, ...] = ()
    inspected: ImageSet | None = None
    error: str | None = None
    reason: str = "settling"
    #: settling, writing, acquiring, waiting-set, incomplete (shown by status)
    state: str = "settling"
    detail: dict | None = None

    def files(self) -> list[Path]:
        return [self.path, *self.members]


@dataclass
class FolderState:
    folder: WatchFolder
    observer: object | None = None
    kind: str = ""
    identity: tuple[int, int] | None = None
    available: bool = False
    checked: bool = False  # False until the settler's first look at the folder
    note: str = ""
    real_root: str = ""
    restarts: int = 0

    def describe(self) -> dict:
        return {"path": str(self.folder.path), "observer": self.kind or self.folder.observer_kind,
                "configured": self.folder.observer_kind,
                "available": self.available if self.checked else None,
                "patterns": list(self.folder.patterns), "settle_seconds": self.folder.settle_seconds,
                "microscope": self.folder.microscope, "specimen": self.folder.specimen,
                "note": self.note, "restarts": self.restarts}


class _Handler(FileSystemEventHandler):
    """Runs in watchdog's thread: only hands paths (and what happened) to the settler."""

    def __init__(self, folder: WatchFolder, inbox: stdqueue.SimpleQueue,
                 native: bool = False) -> None:
        self.folder = folder
        self.inbox = inbox
        self.native = native

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = event.dest_path or event.src_path
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        kind = "dir" if event.is_directory else "file"
        what = ""
        if self.native and not event.is_directory:
            # inotify: IN_MODIFY = a writer wrote; IN_CLOSE_WRITE = a writer closed it.
            what = ("modified" if type(event) is FileModifiedEvent else
                    "closed" if isinstance(event, FileClosedEvent) else
                    "moved" if isinstance(event, FileMovedEvent) else "")
        self.inbox.put((kind, self.folder, path, what))


class Watcher:
    """Observers + settle detection + rescans; enqueues settled files."""

    def __init__(self, config: Config, queue: JobQueue, on_enqueue=None,
                 tick_seconds: float = 0.25, check_seconds: float = 2.0,
                 fit_key=None) -> None:
        self.config = config
        self.queue = queue
        self.on_enqueue = on_enqueue or (lambda job: None)
        #: fit_key(path) -> str | None: what a batching worker groups jobs by (the
        #: daemon passes pipeline.fit_key with its settings); None = not recorded.
        self.fit_key = fit_key
        self.tick_seconds = tick_seconds
        self.check_seconds = check_seconds
        self.folders = [FolderState(folder) for folder in config.watch]
        self.candidates: dict[Path, Candidate] = {}
        self.inbox: stdqueue.SimpleQueue = stdqueue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="settler", daemon=True)
        self._warned: set[str] = set()
        self._published: dict | None = None
        #: Files a native observer saw modified and not yet closed by their writer.
        self._writing: dict[Path, float] = {}
        self._trouble = Condition(log, "watcher.error", "watcher.recovered")
        self.last_tick = time.monotonic()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the settler; its first tick starts the observers and the startup rescan."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for state in self.folders:
            self._stop_observer(state)

    def healthy(self) -> tuple[bool, list[str]]:
        """Settler ticking, and a live observer on every folder that is there."""
        problems = []
        if not self._thread.is_alive():
            problems.append("settler thread died")
        elif time.monotonic() - self.last_tick > max(60.0, 20 * self.tick_seconds):
            problems.append(f"settler stuck for {time.monotonic() - self.last_tick:.0f} s")
        for state in self.folders:
            if state.available and not _observer_alive(state.observer):
                problems.append(f"observer of {state.folder.path} is not running")
        return not problems, problems

    def describe(self) -> list[dict]:
        return [state.describe() for state in self.folders]

    # ---------------------------------------------------------------- settler loop

    def _run(self) -> None:
        next_check = 0.0
        next_publish = 0.0
        while not self._stop.is_set():
            pause = self.tick_seconds
            try:
                now = time.monotonic()
                if now >= next_check:
                    self._supervise()
                    next_check = now + self.check_seconds
                self._drain_inbox()
                self._check_candidates()
                if now >= next_publish:
                    self._publish_waiting()
                    next_publish = now + 1.0
                self._trouble.clear()
            except Exception as error:  # never let one bad file or a DB hiccup kill watching
                # Logged once per kind of trouble (not per tick), and retried less often.
                self._trouble.report(error)
                pause = max(pause, 1.0)
            self.last_tick = time.monotonic()
            self._stop.wait(pause)

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, folder, path, what = self.inbox.get_nowait()
            except stdqueue.Empty:
                return
            if kind == "dir":
                self.rescan(folder, Path(path))
                continue
            path = Path(path)
            if what == "modified" and not self._ignored(folder, path):
                self._writing[path] = time.monotonic()
            elif what in ("closed", "moved"):
                self._writing.pop(path, None)
            self.consider(folder, path)

    # ---------------------------------------------------------------- folders

    def _supervise(self) -> None:
        """Start observers on folders that are there; restart dead or replaced ones."""
        for state in self.folders:
            folder = state.folder
            state.checked = True
            try:
                info = os.stat(folder.path)
                if not stat.S_ISDIR(info.st_mode):
                    raise NotADirectoryError(str(folder.path))
                with os.scandir(folder.path) as entries:  # a dead share fails here (EIO, ESTALE)
                    next(entries, None)
            except OSError as error:
                if state.available or state.observer is not None or not state.note:
                    log.warning("watch.unavailable", folder=str(folder.path), error=str(error),
                                action="waiting for it to come back")
                state.available = False
                state.note = f"unavailable: {error.strerror or error}"
                self._stop_observer(state)
                continue
            identity = (info.st_dev, info.st_ino)
            replaced = state.identity is not None and identity != state.identity
            if state.available and _observer_alive(state.observer) and not replaced:
                continue
            if state.identity is not None:  # watched before: say why it is re-scheduled
                state.restarts += 1
                reason = ("folder came back" if not state.available else
                          "folder replaced or remounted" if replaced else "observer stopped")
                log.warning("watch.restart", folder=str(folder.path), reason=reason)
            self._stop_observer(state)
            self._start_observer(state)
            state.identity = identity
            state.available = True
            state.real_root = os.path.realpath(folder.path)
            self.rescan(folder, folder.path)

    def _start_observer(self, state: FolderState) -> None:
        folder = state.folder
        handler = _Handler(folder, self.inbox, native=not folder.polling)
        state.note = ""
        if not folder.polling:
            observer = Observer()
            try:
                observer.schedule(handler, str(folder.path), recursive=folder.recursive,
                                  event_filter=_EVENTS)
                observer.start()
                state.observer, state.kind = observer, "native"
                log.info("watch.start", folder=str(folder.path), observer="native")
                return
            except OSError as error:  # e.g. the inotify watch limit: poll instead of failing
                state.note = f"native observer failed ({error}); polling instead"
                log.warning("watch.fallback", folder=str(folder.path), error=str(error),
                            observer="polling",
                            fix="raise fs.inotify.max_user_watches or set polling = true")
                try:
                    observer.stop()
                except Exception:
                    pass
        handler.native = False  # a polling observer sees no open/close
        observer = PollingObserver(timeout=folder.poll_interval_seconds)
        observer.schedule(handler, str(folder.path), recursive=folder.recursive,
                          event_filter=_EVENTS)
        observer.start()
        state.observer, state.kind = observer, "polling"
        log.info("watch.start", folder=str(folder.path), observer="polling",
                 interval=folder.poll_interval_seconds)

    @staticmethod
    def _stop_observer(state: FolderState) -> None:
        observer, state.observer = state.observer, None
        if observer is None:
            return
        try:
            observer.stop()
            observer.join(timeout=5)
        except Exception as error:
            log.warning("watch.stop_error", folder=str(state.folder.path), error=str(error))

    def rescan(self, folder: WatchFolder, top: Path) -> None:
        """Walk ``top`` (inside ``folder``) and nominate every matching file."""
        try:
            relative = top.relative_to(folder.path)
        except ValueError:
            return
        if any(part.startswith((".", "~")) for part in relative.parts) or self.config.is_output(top):
            return
        seen = 0
        for directory, dirnames, filenames in os.walk(top, onerror=None, followlinks=False):
            base = Path(directory)
            keep = []
            for name in dirnames:
                sub = base / name
                if name.startswith((".", "~")) or self.config.is_output(sub):
                    continue
                if sub.is_symlink():
                    self._symlink_check(folder, sub)  # never followed: inotify does not either
                    continue
                keep.append(name)
            dirnames[:] = keep if folder.recursive else []
            for name in filenames:
                self.consider(folder, base / name)
                seen += 1
        if top == folder.path:
            log.info("watch.rescan", folder=str(folder.path), files=seen)

    # ---------------------------------------------------------------- candidates

    def _ignored(self, folder: WatchFolder, path: Path) -> bool:
        try:
            relative = path.relative_to(folder.path)
        except ValueError:
            return True
        if not folder.recursive and len(relative.parts) > 1:
            return True
        if any(part.startswith((".", "~")) for part in relative.parts):
            return True  # hidden and temporary files, and anything in hidden folders
        if path.name.lower().endswith(TEMPORARY_SUFFIXES):
            return True
        if not folder.matches(path.name):
            return True
        return self.config.is_output(path)

    def _symlink_check(self, folder: WatchFolder, path: Path) -> bool:
        """True when ``path`` is reached without symlinks; warn when one leads out of the tree."""
        state = next(s for s in self.folders if s.folder is folder)
        root = state.real_root or os.path.realpath(folder.path)
        real = os.path.realpath(path)
        expected = os.path.join(root, os.path.relpath(path, folder.path))
        if real == os.path.normpath(expected):
            return True
        if os.path.commonpath([real, root]) != root:
            if str(path) not in self._warned and len(self._warned) < 10000:
                self._warned.add(str(path))
                log.warning("watch.symlink_outside", path=str(path), target=real,
                            folder=str(folder.path),
                            action="not taken: it leads out of the watched tree")
        # A link to a file inside the tree: the file is taken under its own path.
        return False

    def consider(self, folder: WatchFolder, path: Path, whole_set: bool = False) -> None:
        """Nominate ``path`` (from an event or a scan) if it may be a new raw image.

        ``whole_set``: ``path`` is the first file of a set one of whose members changed
        or arrived; the set's version (all its files) is compared once it settles.
        """
        if path in self.candidates or self._ignored(folder, path):
            return
        if not self._symlink_check(folder, path):
            return
        try:
            info = path.stat()
        except OSError:
            return
        if not stat.S_ISREG(info.st_mode):
            return
        if not whole_set and self.queue.known(str(path), info.st_size, info.st_mtime_ns,
                                              info.st_ctime_ns):
            return
        self.candidates[path] = Candidate(
            path, folder, since=time.time(), changed=time.monotonic(),
            signature=((info.st_size, info.st_mtime_ns, info.st_ctime_ns),))

    def _check_candidates(self) -> None:
        for path, candidate in list(self.candidates.items()):
            try:
                outcome = self._step(candidate)
            except FileNotFoundError:  # went away between two looks: events bring it back
                outcome = "drop"
            if outcome == "drop":
                del self.candidates[path]

    def _step(self, candidate: Candidate) -> str:
        """Advance one candidate; returns "drop" when it is no longer a candidate."""
        now = time.monotonic()
        folder = candidate.folder
        signature = set_signature(candidate.files())
        if signature[0] is None:
            self._writing.pop(candidate.path, None)
            return "drop"  # deleted or renamed away; a move shows up as a new path
        if signature != candidate.signature:
            candidate.signature, candidate.changed = signature, now
            candidate.inspected = None
            if candidate.state not in ("acquiring", "writing"):  # a stack growing stays so
                candidate.state, candidate.reason = "settling", "settling (still changing)"
            return "keep"
        if now - candidate.changed < folder.settle_seconds:
            return "keep"
        unchanged = now - candidate.changed
        overdue = unchanged >= folder.incomplete_after_seconds
        if candidate.inspected is None:
            try:
                image_set = inspect_image(candidate.path)
                candidate.error = None
            except UnreadableImage as error:
                image_set, candidate.error = ImageSet(candidate.path), str(error)
            candidate.inspected = image_set
            if image_set.members != candidate.members:
                # New set members: they must settle too before the set is taken.
                candidate.members = image_set.members
                candidate.signature = set_signature(candidate.files())
                candidate.changed = now
                candidate.state, candidate.reason = "settling", "settling (OME set)"
                return "keep"
            # This version of the file, with every member of its set, already a job?
            present = [p for p, s in zip(candidate.files(), signature) if s]
            if self.queue.known(str(candidate.path), *file_version(present)):
                return "drop"
        image_set = candidate.inspected
        if image_set.first_file is not None:
            if image_set.first_file.is_file():
                self.consider(folder, image_set.first_file, whole_set=True)
                return "drop"  # the set is taken through its first file
            candidate.detail = {"files": [image_set.first_file.name]}
            if overdue:  # its metadata is in that file: nothing can be read without it
                candidate.state = "incomplete"
                candidate.reason = (f"incomplete: the first file of its OME set, "
                                    f"{image_set.first_file.name}, has not arrived in "
                                    f"{_duration(unchanged)}; the set is taken when it does")
            else:
                candidate.state = "waiting-set"
                candidate.reason = (f"member of an OME set whose first file "
                                    f"{image_set.first_file.name} is not present")
            return "keep"
        writing = [p for p in candidate.files() if p in self._writing]
        if candidate.error is not None and writing and not overdue:
            candidate.state = "writing"
            candidate.reason = (f"being written: modified and not yet closed by its writer "
                                f"({', '.join(p.name for p in writing[:3])})")
            candidate.detail = {"writer_open": True}
            return "keep"
        if candidate.error is not None:
            candidate.state, candidate.reason = "unreadable", f"unreadable: {candidate.error}"
            if now - candidate.changed < folder.corrupt_after_seconds:
                return "keep"
            self._enqueue(candidate, state="quarantined",
                          error=f"not a readable image ({candidate.error}); unchanged for "
                                f"{now - candidate.changed:.0f} s")
            return "drop"
        missing = [p for p, s in zip(candidate.files(), signature) if s is None]
        missing += [p for p in image_set.missing if p not in candidate.members]
        planes = image_set.planes
        short = planes is not None and not planes.complete
        if not (missing or short or writing):
            self._enqueue(candidate)
            return "drop"
        detail: dict = {}
        parts = []
        if missing:
            names = [p.name for p in missing]
            detail["files"] = names
            parts.append(f"waiting for {len(names)} file(s) of its OME set: "
                         + ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
        if short:
            detail.update(planes_present=planes.present, planes_declared=planes.declared,
                          declared_by=planes.by)
            parts.append(f"{planes.present} of {planes.declared} planes its {planes.by} "
                         f"metadata declares")
        if writing:
            detail["writer_open"] = True
            parts.append("being written: modified and not yet closed by its writer")
        candidate.detail = detail
        if not overdue:
            candidate.state = "waiting-set" if missing else "acquiring" if short else "writing"
            candidate.reason = ("acquiring: " if short and not missing else "") + "; ".join(parts)
            return "keep"
        detail["reason"] = (f"{'; '.join(parts)}; unchanged for {_duration(unchanged)} "
                            f"(incomplete_after_seconds = {folder.incomplete_after_seconds:g})")
        log.warning("watch.incomplete", path=str(candidate.path), missing=detail,
                    action="taken as it is: its planes are denoised, the job ends partial")
        self._enqueue(candidate, missing=detail)
        return "drop"

    def _enqueue(self, candidate: Candidate, state: str = "queued", error: str | None = None,
                 missing: dict | None = None) -> None:
        files = [p for p in candidate.files() if p.exists()]
        try:
            size, mtime_ns, ctime_ns = file_version(files)
            digest, sources = hash_files(files)
        except OSError as failure:
            log.warning("watch.vanished", path=str(candidate.path), error=str(failure))
            return
        members = [str(p) for p in candidate.members if p in files]
        path = str(candidate.path)
        if self._same_content(path, digest, members, size, mtime_ns, ctime_ns):
            return
        key = None
        if self.fit_key is not None and state == "queued":
            try:
                key = self.fit_key(candidate.path)
            except Exception as failure:  # only a scheduling hint: never lose the file over it
                log.warning("watch.fit_key_failed", path=path, error=str(failure))
        job = self.queue.enqueue(path, size, mtime_ns, digest,
                                 folder=str(candidate.folder.path), state=state, error=error,
                                 members=members, fit_key=key, missing=missing,
                                 sources=sources, ctime_ns=ctime_ns)
        if job is None:
            return
        if state == "quarantined":
            log.error("job.quarantined", job_id=job.id, path=job.path, error=error)
        else:
            log.info("job.queued", job_id=job.id, path=job.path, size=size, sha256=digest,
                     members=len(members), incomplete=bool(missing))
            self.on_enqueue(job)

    def _same_content(self, path: str, digest: str, members: list[str], size: int,
                      mtime_ns: int, ctime_ns: int) -> bool:
        """A new version with the latest job's content (only its times changed) is
        recorded on that job instead of becoming a job: ``touch`` and ``cp -p`` of the
        same bytes never re-run a file. Not when that job was skipped (the file had
        vanished) or its output is gone (then a job makes it again)."""
        latest = self.queue.latest(path)
        if latest is None or latest.sha256 != digest or latest.member_paths() != members:
            return False
        if latest.state == "skipped":
            return False
        if latest.state in ("done", "partial") and not (latest.output and
                                                       Path(latest.output).exists()):
            return False
        note = (f"same content (SHA-256 {digest[:12]}...) with new times: size {size}, "
                f"mtime {mtime_ns}; nothing to do")
        if not self.queue.same_content(latest.id, size, mtime_ns, ctime_ns, note):
            return False
        log.info("job.same_content", job_id=latest.id, path=path, state=latest.state,
                 note="only the file's times changed; not run again")
        return True

    def _publish_waiting(self) -> None:
        waiting = {str(c.path): (c.reason, c.since, c.state, c.detail)
                   for c in self.candidates.values()}
        if waiting != self._published:
            self.queue.set_waiting(waiting)
            self._published = waiting
        for path in [p for p in self._writing if p not in self.candidates]:
            if not path.exists():  # deleted while open: forget it
                del self._writing[path]


def _observer_alive(observer) -> bool:
    if observer is None or not observer.is_alive():
        return False
    return all(emitter.is_alive() for emitter in observer.emitters)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
