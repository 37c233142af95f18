"""The folders' observers: one watchdog observer per ``[[watch]]`` folder.

A native (inotify) observer sees writers open and close files; a polling one (network
shares, or where inotify fails) sees only sizes and times. The handler runs in
watchdog's thread and only hands paths to the watcher's settler thread (``watcher.py``),
so a slow look at a file never delays events. One observer per folder, so a share that
disappears is stopped and re-scheduled on its own when it comes back.
"""

from __future__ import annotations

import os
import queue as stdqueue
from dataclasses import dataclass

from watchdog import events as watchdog_events
from watchdog.events import (DirCreatedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
                             FileModifiedEvent, FileMovedEvent, FileSystemEvent,
                             FileSystemEventHandler)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from ..settings.sections import WatchFolder
from .log import get_logger

log = get_logger("autodip_watch.watcher")

# IN_ATTRIB (watchdog >= 5: FileAttribEvent) lets a `touch` be seen at once; it adds no job.
_ATTRIB = getattr(watchdog_events, "FileAttribEvent", None)
_EVENTS = [FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileClosedEvent,
           DirCreatedEvent, DirMovedEvent] + ([_ATTRIB] if _ATTRIB is not None else [])


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


def start_observer(state: FolderState, inbox: stdqueue.SimpleQueue) -> None:
    """Start a native (inotify) observer on the folder of ``state``, or a polling one
    where it is configured or inotify fails; its events go to ``inbox``."""
    folder = state.folder
    handler = _Handler(folder, inbox, native=not folder.polling)
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


def stop_observer(state: FolderState) -> None:
    """Stop the folder's observer, if any (never raises)."""
    observer, state.observer = state.observer, None
    if observer is None:
        return
    try:
        observer.stop()
        observer.join(timeout=5)
    except Exception as error:
        log.warning("watch.stop_error", folder=str(state.folder.path), error=str(error))


def observer_alive(observer) -> bool:
    """Whether ``observer`` and every one of its emitters is running."""
    if observer is None or not observer.is_alive():
        return False
    return all(emitter.is_alive() for emitter in observer.emitters)
