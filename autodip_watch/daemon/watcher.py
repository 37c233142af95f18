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

import os
import queue as stdqueue
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..io.checksums import hash_files
from ..settings.config import Config
from ..settings.sections import WatchFolder
from .inspection import (ImageSet, UnreadableImage, file_version, inspect_image,
                         set_files, set_signature)
from .log import Condition, get_logger
from .observers import FolderState, observer_alive, start_observer, stop_observer
from .queue import JobQueue

log = get_logger("autodip_watch.watcher")

#: Suffixes of files still being written or left behind by writers and copiers.
TEMPORARY_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".filepart", "~")


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
            stop_observer(state)

    def healthy(self) -> tuple[bool, list[str]]:
        """Settler ticking, and a live observer on every folder that is there."""
        problems = []
        if not self._thread.is_alive():
            problems.append("settler thread died")
        elif time.monotonic() - self.last_tick > max(60.0, 20 * self.tick_seconds):
            problems.append(f"settler stuck for {time.monotonic() - self.last_tick:.0f} s")
        for state in self.folders:
            if state.available and not observer_alive(state.observer):
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
                # only now: while the first observer starts, the folder is not yet known
                # to be unavailable (status would call a healthy start degraded)
                state.checked = True
                stop_observer(state)
                continue
            identity = (info.st_dev, info.st_ino)
            replaced = state.identity is not None and identity != state.identity
            if state.available and observer_alive(state.observer) and not replaced:
                continue
            if state.identity is not None:  # watched before: say why it is re-scheduled
                state.restarts += 1
                reason = ("folder came back" if not state.available else
                          "folder replaced or remounted" if replaced else "observer stopped")
                log.warning("watch.restart", folder=str(folder.path), reason=reason)
            stop_observer(state)
            try:
                start_observer(state, self.inbox)
            finally:
                state.checked = True  # an observer that fails to start: unavailable
            state.identity = identity
            state.available = True
            state.real_root = os.path.realpath(folder.path)
            self.rescan(folder, folder.path)

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
            outcome = self._inspect(candidate, signature, now)
            if outcome is not None:
                return outcome
        image_set = candidate.inspected
        if image_set.first_file is not None:
            return self._member_of_set(candidate, image_set, overdue, unchanged)
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
            detail["files"] = [p.name for p in missing]
            parts.append(f"waiting for {set_files(missing)}")
        if short:
            detail.update(planes_present=planes.present, planes_declared=planes.declared,
                          declared_by=planes.by)
            parts.append(planes.describe())
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

    def _inspect(self, candidate: Candidate, signature: tuple, now: float) -> str | None:
        """Look inside a settled candidate once per version: "keep" when new set members
        must settle first, "drop" when this version is already a job, else None."""
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
        return None

    def _member_of_set(self, candidate: Candidate, image_set: ImageSet, overdue: bool,
                       unchanged: float) -> str:
        """A member of an OME set is taken through the set's first file, once that is
        there; until then it waits (and says so in status)."""
        first = image_set.first_file
        if first.is_file():
            self.consider(candidate.folder, first, whole_set=True)
            return "drop"
        candidate.detail = {"files": [first.name]}
        if overdue:  # its metadata is in that file: nothing can be read without it
            candidate.state = "incomplete"
            candidate.reason = (f"incomplete: the first file of its OME set, {first.name}, "
                                f"has not arrived in {_duration(unchanged)}; the set is "
                                f"taken when it does")
        else:
            candidate.state = "waiting-set"
            candidate.reason = (f"member of an OME set whose first file {first.name} is not "
                                f"present")
        return "keep"

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
        declared = candidate.inspected.planes if candidate.inspected is not None else None
        job = self.queue.enqueue(path, size, mtime_ns, digest,
                                 folder=str(candidate.folder.path), state=state, error=error,
                                 members=members, fit_key=key, missing=missing,
                                 sources=sources, ctime_ns=ctime_ns,
                                 planes=declared.declared if declared is not None else None)
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


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
