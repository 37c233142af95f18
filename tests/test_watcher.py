"""The watcher with real watchdog observers on real temporary folders and a real queue."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile
from structlog.testing import capture_logs

from autodip_watch.settings.config import parse_config
from autodip_watch.daemon.queue import JobQueue
from autodip_watch.daemon.watcher import UnreadableImage, Watcher, inspect_image

SETTLE = 0.4


def tiny_tiff(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 4000, (32, 32), dtype=np.uint16)
    tifffile.imwrite(path, pixels, ome=path.name.lower().endswith((".ome.tif", ".ome.tiff")))
    return path


def ome_set_xml(names: list[str]) -> str:
    """OME-XML of one image whose T planes are spread over ``names`` (one plane each)."""
    uuids = [f"urn:uuid:{uuid.uuid4()}" for _ in names]
    tiff_data = "".join(
        f'<TiffData FirstT="{t}" IFD="0" PlaneCount="1"><UUID FileName="{name}">{uuids[t]}'
        f'</UUID></TiffData>' for t, name in enumerate(names))
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
            f'UUID="{uuids[0]}"><Image ID="Image:0"><Pixels ID="Pixels:0" '
            'DimensionOrder="XYCZT" Type="uint16" SizeX="32" SizeY="32" SizeC="1" SizeZ="1" '
            f'SizeT="{len(names)}"><Channel ID="Channel:0:0" SamplesPerPixel="1"/>'
            f'{tiff_data}</Pixels></Image></OME>')


def write_set_file(path: Path, xml: str) -> None:
    pixels = np.full((32, 32), 7, dtype=np.uint16)
    tifffile.imwrite(path, pixels, description=xml, metadata=None)


class Harness:
    def __init__(self, tmp_path: Path, check_seconds: float = 0.2, **folder) -> None:
        self.root = tmp_path / "watched"
        self.root.mkdir()
        document = {"watch": [{"path": str(self.root), "settle_seconds": SETTLE,
                               "corrupt_after_seconds": 1.0, **folder}]}
        if "output_root" in folder:
            document["watch"][0]["output_root"] = folder["output_root"]
        self.config = parse_config(document, tmp_path)
        self.queue = JobQueue(tmp_path / "state")
        self.watcher = Watcher(self.config, self.queue, tick_seconds=0.05,
                               check_seconds=check_seconds)

    def __enter__(self) -> "Harness":
        self.watcher.start()
        wait_for(lambda: self.watcher.folders[0].available, 10, "observer start")
        return self

    def __exit__(self, *exc) -> None:
        self.watcher.stop()

    def paths(self, state: str | None = None) -> list[str]:
        return sorted(job.path for job in self.queue.jobs([state] if state else None))


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_settled_files_are_queued_once_and_others_never(tmp_path):
    outputs = tmp_path / "outputs"
    with Harness(tmp_path) as h:
        wanted = [tiny_tiff(h.root / "a.ome.tif"), tiny_tiff(h.root / "day 2" / "B.TIF", 1)]
        for name in (".hidden.tif", "~lock.tif", "c.tif.part", "d.tmp", "e.autodip.ome.tif",
                     ".hidden-dir/f.tif", "notes.txt"):
            target = h.root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"not looked at")
        wait_for(lambda: len(h.paths()) == 2, 15, "two jobs")
        time.sleep(3 * SETTLE)
        assert h.paths() == sorted(str(p) for p in wanted)
        jobs = h.queue.jobs()
        assert all(job.state == "queued" and len(job.sha256) == 64 for job in jobs)
        # More events for the same content never add a job.
        os.utime(wanted[0], ns=(wanted[0].stat().st_atime_ns, wanted[0].stat().st_mtime_ns))
        h.watcher.rescan(h.config.watch[0], h.root)
        time.sleep(3 * SETTLE)
        assert len(h.queue.jobs()) == 2
        # New content of the same file is a new job.
        tiny_tiff(wanted[0], seed=5)
        wait_for(lambda: len(h.queue.jobs()) == 3, 15, "job for the changed file")
    assert not outputs.exists()


def test_files_already_present_are_found_at_startup(tmp_path):
    (tmp_path / "watched").mkdir()
    tiny_tiff(tmp_path / "watched" / "old" / "x.ome.tif")
    config = parse_config({"watch": [{"path": "watched", "settle_seconds": SETTLE}]}, tmp_path)
    queue = JobQueue(tmp_path / "state")
    watcher = Watcher(config, queue, tick_seconds=0.05, check_seconds=0.2)
    watcher.start()
    try:
        wait_for(lambda: len(queue.jobs()) == 1, 15, "startup rescan")
    finally:
        watcher.stop()


def test_a_growing_file_waits_until_it_settles(tmp_path):
    with Harness(tmp_path) as h:
        source = tiny_tiff(tmp_path / "source.tif").read_bytes()
        target = h.root / "slow.tif"
        with open(target, "wb") as handle:
            for start in range(0, len(source), 256):
                handle.write(source[start:start + 256])
                handle.flush()
                time.sleep(SETTLE / 4)
                assert h.paths() == [], "taken while still growing"
        wait_for(lambda: h.paths() == [str(target)], 15, "the finished file")
        assert h.queue.jobs()[0].size == len(source)


def test_unreadable_file_is_quarantined_with_the_reason(tmp_path):
    with Harness(tmp_path) as h:
        bad = h.root / "broken.tif"
        bad.write_bytes(b"II*\x00" + b"\xff" * 60)
        wait_for(lambda: h.paths("quarantined") == [str(bad)], 15, "quarantine")
        job = h.queue.jobs()[0]
        assert "not a readable" in job.error


def test_truncated_tiff_is_not_complete(tmp_path):
    whole = tiny_tiff(tmp_path / "whole.tif")
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(whole.read_bytes()[:-100])
    inspect_image(whole)
    with pytest.raises(UnreadableImage):
        inspect_image(truncated)


def binary_only_xml(metadata_file: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
            f'UUID="urn:uuid:{uuid.uuid4()}"><BinaryOnly MetadataFile="{metadata_file}" '
            f'UUID="urn:uuid:{uuid.uuid4()}"/></OME>')


@pytest.mark.parametrize("form", ["copies", "master", "companion"])
def test_multi_file_ome_set_is_taken_once_when_complete(tmp_path, form):
    """Full OME-XML in every file; in the first only (others BinaryOnly); in a companion."""
    with Harness(tmp_path) as h:
        names = ["cell_t0.ome.tif", "cell_t1.ome.tif", "cell_t2.ome.tif"]
        xml = ome_set_xml(names)
        member_xml = {"copies": xml, "master": binary_only_xml(names[0]),
                      "companion": binary_only_xml("cell.companion.ome")}[form]
        extra = []
        if form == "companion":
            (h.root / "cell.companion.ome").write_text(xml, encoding="utf-8")
            extra = [h.root / "cell.companion.ome"]
        write_set_file(h.root / names[0], member_xml if form == "companion" else xml)
        write_set_file(h.root / names[1], member_xml)
        wait_for(lambda: any("waiting for 1 file(s)" in w["reason"] for w in h.queue.waiting()),
                 15, "the set to wait for its last file")
        assert h.paths() == []
        write_set_file(h.root / names[2], member_xml)
        wait_for(lambda: h.paths() == [str(h.root / names[0])], 15, "the complete set")
        time.sleep(3 * SETTLE)
        job = h.queue.jobs()[0]
        assert len(h.queue.jobs()) == 1
        members = [h.root / names[1], h.root / names[2], *extra]
        assert job.member_paths() == [str(p) for p in members]
        assert job.size == sum(p.stat().st_size for p in [h.root / names[0], *members])


def test_symlinks_out_of_the_tree_are_refused_with_a_warning(tmp_path):
    outside = tiny_tiff(tmp_path / "elsewhere" / "secret.tif")
    with Harness(tmp_path) as h:
        inside = tiny_tiff(h.root / "real.tif")
        with capture_logs() as logs:
            (h.root / "link.tif").symlink_to(outside)
            (h.root / "inner-link.tif").symlink_to(inside)
            (h.root / "linked-dir").symlink_to(outside.parent, target_is_directory=True)
            h.watcher.rescan(h.config.watch[0], h.root)
            wait_for(lambda: len(h.paths()) == 1, 15, "the real file")
            time.sleep(3 * SETTLE)
        assert h.paths() == [str(inside)]
        warned = {entry["path"] for entry in logs if entry["event"] == "watch.symlink_outside"}
        assert warned == {str(h.root / "link.tif"), str(h.root / "linked-dir")}


def test_output_root_is_never_taken(tmp_path):
    with Harness(tmp_path, output_root=str(tmp_path / "watched" / "denoised")) as h:
        tiny_tiff(h.root / "denoised" / "x.tif")
        raw = tiny_tiff(h.root / "y.tif")
        wait_for(lambda: h.paths() == [str(raw)], 15, "the raw file")
        time.sleep(3 * SETTLE)
        assert h.paths() == [str(raw)]


@pytest.mark.parametrize("polling", [False, True])
def test_a_folder_that_disappears_and_comes_back_is_watched_again(tmp_path, polling):
    with Harness(tmp_path, polling=polling, poll_interval_seconds=0.2) as h:
        assert h.watcher.describe()[0]["observer"] == ("polling" if polling else "native")
        tiny_tiff(h.root / "before.tif")
        wait_for(lambda: len(h.paths()) == 1, 15, "first file")
        away = tmp_path / "away"
        h.root.rename(away)  # the share is unmounted
        wait_for(lambda: not h.watcher.folders[0].available, 15, "unavailable")
        assert h.watcher.healthy()[0]  # waiting for a share is not a failure
        away.rename(h.root)  # and mounted again
        wait_for(lambda: h.watcher.folders[0].available, 15, "available again")
        tiny_tiff(h.root / "after.tif", 3)
        wait_for(lambda: len(h.paths()) == 2, 15, "file written after the return")
        assert h.watcher.folders[0].restarts >= 1
        assert h.watcher.healthy() == (True, [])


def test_a_dead_observer_is_reported_and_restarted(tmp_path):
    with Harness(tmp_path, check_seconds=1.0) as h:  # time to see it dead before the restart
        assert h.watcher.healthy() == (True, [])
        state = h.watcher.folders[0]
        observer = state.observer
        for emitter in list(observer.emitters):
            emitter.stop()  # what the inotify emitter does when its folder is deleted
        emitter.join(5)
        healthy, problems = h.watcher.healthy()
        assert not healthy and "is not running" in problems[0]
        wait_for(lambda: h.watcher.folders[0].observer is not observer
                 and h.watcher.healthy()[0], 15, "a new observer")
        assert state.restarts == 1
        tiny_tiff(h.root / "after.tif")
        wait_for(lambda: len(h.paths()) == 1, 15, "a file seen by the new observer")


# ------------------------------------------------------------- acquisition habits (issue 12)

from helpers.acquisition import set_xml, write_pages, write_set_member  # noqa: E402

@pytest.mark.slow
@pytest.mark.parametrize("polling, page_seconds",
                         [(False, 0.8), (False, 2.0), (True, 1.5)],
                         ids=["native, a page every 0.8 s", "native, a page every 2 s",
                              "polling, a page every 1.5 s"])
def test_page_by_page_writers_are_taken_once_when_complete(tmp_path, polling, page_seconds):
    """Stacks written one flushed page at a time, with pauses longer than the settle time:
    declared by OME, ImageJ or Micro-Manager metadata (any observer), or declaring nothing
    until the writer closes the file (case 06: native observer only, which sees the
    close). Each becomes exactly one job, of the finished file; while being written each
    is shown as acquiring (planes present of declared) or being written."""
    import threading

    kinds = ["ome", "imagej", "micromanager"] + ([] if polling else ["none"])
    with Harness(tmp_path, polling=polling, poll_interval_seconds=0.2) as h:
        paths = {kind: h.root / f"{kind}-stack.ome.tif" if kind in ("ome", "none")
                 else h.root / f"{kind}-stack.tif" for kind in kinds}
        # Each pause between pages is longer than the settle time: it looks "settled".
        assert page_seconds > 1.5 * SETTLE
        writers = [threading.Thread(target=write_pages, args=(paths[kind], 4, kind, page_seconds),
                                    kwargs={"seed": number})
                   for number, kind in enumerate(kinds)]
        for writer in writers:
            writer.start()
        seen: dict[str, set] = {str(p): set() for p in paths.values()}
        while any(writer.is_alive() for writer in writers):
            assert h.paths() == [], "a file was taken before it was complete"
            for item in h.queue.waiting():
                detail = item["detail"] or {}
                seen.setdefault(item["path"], set()).add(
                    (item["state"], detail.get("planes_present"), detail.get("planes_declared")))
            time.sleep(0.1)
        for writer in writers:
            writer.join()
        wait_for(lambda: len(h.paths()) == len(kinds), 20, "one job per finished stack")
        time.sleep(3 * SETTLE)
        jobs = h.queue.jobs()
        assert sorted(job.path for job in jobs) == sorted(str(p) for p in paths.values())
        for job in jobs:
            assert job.state == "queued" and job.missing is None
            assert job.size == Path(job.path).stat().st_size
            with tifffile.TiffFile(job.path) as tif:
                assert len(tif.pages) == 4
    for kind in ("ome", "imagej", "micromanager"):
        states = seen[str(paths[kind])]
        assert any(state == "acquiring" and declared == 4 and present < 4
                   for state, present, declared in states), (kind, states)
    if not polling:
        assert {state for state, *_ in seen[str(paths["none"])]} <= {"settling", "writing"}
        assert ("writing", None, None) in seen[str(paths["none"])], seen[str(paths["none"])]


def test_incomplete_files_are_taken_as_they_are_after_a_while(tmp_path):
    """An aborted acquisition (fewer planes than declared), an OME set whose member never
    arrives (case 18), and a file whose writer never closes it are shown as acquiring or
    waiting, then, unchanged for incomplete_after_seconds, queued with what is missing.
    A set member whose first file never arrives gets the visible state "incomplete". A
    later complete version is a new job that supersedes the queued incomplete one."""
    with Harness(tmp_path, incomplete_after_seconds=2.5) as h:
        aborted = h.root / "aborted.ome.tif"
        write_pages(aborted, 5, "ome", stop_after=2)
        aborted_ij = h.root / "aborted-ij.tif"
        write_pages(aborted_ij, 6, "imagej", stop_after=3)
        names = ["cells_C0.ome.tif", "cells_C1.ome.tif"]
        xml, uuids = set_xml(names)
        first = write_set_member(h.root, names, 0, xml, uuids)
        orphan_names = ["other_C0.ome.tif", "other_C1.ome.tif"]
        orphan_xml, orphan_uuids = set_xml(orphan_names)
        orphan = write_set_member(h.root, orphan_names, 1, orphan_xml, orphan_uuids)
        source = tiny_tiff(tmp_path / "plain.tif").read_bytes()
        held = open(h.root / "held-open.tif", "wb")  # a writer that never closes its file
        held.write(source)
        held.flush()
        try:
            wait_for(lambda: {w["path"]: w["state"] for w in h.queue.waiting()}.get(str(aborted))
                     == "acquiring", 10, "the aborted stack shown as acquiring")
            states = {w["path"]: w for w in h.queue.waiting()}
            assert states[str(aborted)]["detail"]["planes_present"] == 2
            assert states[str(aborted)]["detail"]["planes_declared"] == 5
            assert "2 of 5 planes" in states[str(aborted)]["reason"]
            assert states[str(first)]["state"] == "waiting-set"
            assert "cells_C1.ome.tif" in states[str(first)]["reason"]
            assert states[str(h.root / "held-open.tif")]["state"] == "writing"
            assert h.paths() == []
            wanted = sorted(map(str, [aborted, aborted_ij, first, h.root / "held-open.tif"]))
            wait_for(lambda: h.paths() == wanted, 20, "the incomplete files taken as they are")
            jobs = {job.path: job for job in h.queue.jobs()}
            assert jobs[str(aborted)].missing_info()["planes_present"] == 2
            assert jobs[str(aborted_ij)].missing_info()["planes_declared"] == 6
            assert jobs[str(first)].missing_info()["files"] == ["cells_C1.ome.tif"]
            assert jobs[str(first)].member_paths() == []
            assert jobs[str(h.root / "held-open.tif")].missing_info()["writer_open"] is True
            assert all("unchanged for" in job.missing_info()["reason"] for job in jobs.values())
            wait_for(lambda: {w["path"]: w["state"] for w in h.queue.waiting()}.get(str(orphan))
                     == "incomplete", 10, "the orphaned member shown as incomplete")
            assert "other_C0.ome.tif" in {w["path"]: w for w in h.queue.waiting()}[str(orphan)][
                "reason"]
            # The missing member arrives: the set is a new, complete job.
            second = write_set_member(h.root, names, 1, xml, uuids)
            wait_for(lambda: len([j for j in h.queue.jobs() if j.path == str(first)]) == 2, 15,
                     "the complete set as a new job")
            older, newer = [j for j in h.queue.jobs() if j.path == str(first)]
            assert newer.missing is None and newer.member_paths() == [str(second)]
            assert h.queue.get(older.id).state == "skipped"  # superseded, never run
        finally:
            held.close()


def test_only_new_content_is_a_new_version(tmp_path):
    """touch and cp -p of identical bytes add no job (the job takes the new times); new
    content with an OLDER mtime is a new job."""
    import shutil

    with Harness(tmp_path) as h:
        raw = tiny_tiff(h.root / "a.ome.tif", seed=1)
        wait_for(lambda: len(h.paths()) == 1, 15, "the first version")
        job = h.queue.jobs()[0]
        output = h.root / "a.autodip.ome.tif"
        output.write_bytes(b"stands in for the output")  # only its presence matters here
        h.queue.claim("w")
        h.queue.finish(job.id, str(output), None, 1.0, 1)
        original_mtime = raw.stat().st_mtime_ns
        os.utime(raw, ns=(time.time_ns(), original_mtime + 10_000_000_000))  # touch
        wait_for(lambda: h.queue.get(job.id).mtime_ns == original_mtime + 10_000_000_000, 15,
                 "the touch recorded on the job")
        copy = tmp_path / "copy.tif"
        shutil.copy2(raw, copy)  # cp -p: same bytes, same times, new inode and ctime
        os.utime(copy, ns=(time.time_ns(), original_mtime - 10_000_000_000))
        os.replace(copy, raw)
        wait_for(lambda: h.queue.get(job.id).mtime_ns == original_mtime - 10_000_000_000, 15,
                 "the copy with identical bytes recorded on the job")
        time.sleep(3 * SETTLE)
        assert [j.id for j in h.queue.jobs()] == [job.id] and h.queue.get(job.id).state == "done"
        notes = [e["message"] for e in h.queue.events(job.id)]
        assert sum("same content" in (note or "") for note in notes) == 2
        # New content, with a modification time older than the output's and the old one's.
        tiny_tiff(raw, seed=2)
        os.utime(raw, ns=(time.time_ns(), original_mtime - 3600 * 10**9))
        wait_for(lambda: len(h.queue.jobs()) == 2, 15, "a job for the new content")
        assert h.queue.jobs()[-1].sha256 != job.sha256


def test_a_queued_job_carries_the_planes_its_metadata_declares(tmp_path):
    """The queue's ETA counts a job that never ran by what its file declares, not by the
    recent average, where the metadata says (OME, ImageJ); a plain TIFF does not say."""
    from autodip_watch.daemon.status import queue_eta

    with Harness(tmp_path) as h:
        stack = np.zeros((6, 32, 32), np.uint16)
        tifffile.imwrite(h.root / "z6.ome.tif", stack, ome=True, metadata={"axes": "ZYX"})
        tifffile.imwrite(h.root / "t3.tif", stack[:3], imagej=True, metadata={"axes": "TYX"})
        tifffile.imwrite(h.root / "plain.tif", stack[:2], metadata=None)
        wait_for(lambda: len(h.paths()) == 3, 15, "three jobs")
        planes = {Path(job.path).name: job.planes for job in h.queue.jobs()}
    assert planes == {"z6.ome.tif": 6, "t3.tif": 3, "plain.tif": None}
    throughput = {"seconds_per_plane": 10.0, "planes_per_job": 4.0}
    backlog = queue_eta(h.queue.jobs(["queued"]), [], throughput)
    assert backlog["planes"] == 6 + 3 + 4 and backlog["eta_seconds"] == 130.0
