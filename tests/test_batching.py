"""Batched fitting of many planes: grouping, memory budget, sharing between jobs, pipeline.

Exactness is checked in float64, where a batched fit follows the single fit's
trajectory (test_batched_fit.py); float32 checks only that results stay equally good.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from autodip_watch.dip.batching import (BATCH_OVERHEAD_BYTES, ESTIMATE_MARGIN, BatchedFitter,
                                        FitRequest, SharedFitter, SingleFitter,
                                        fit_memory_bytes, make_fitter, make_shared_fitter,
                                        run_together)
from autodip_watch.dip.options import FitOptions
from autodip_watch.dip.params import DipParams
from autodip_watch.dip.plane import PlaneJob, denoise_planes
from autodip_watch.settings.denoise import DenoiseSettings
from autodip_watch.pipeline.denoise import denoise_file
from autodip_watch.provenance import read_provenance
from helpers.omefiles import structured, write_ome_tiff
from helpers.images import noisy_blobs

SMALL = DipParams(4, "16", 4, 4)
OTHER = DipParams(4, "asc", 0, 3)


def budget_for(count: int, params: DipParams, shape) -> int:
    """A memory budget that holds exactly ``count`` fits of ``params`` on ``shape``."""
    per_fit = fit_memory_bytes(params, shape) * ESTIMATE_MARGIN
    return int(BATCH_OVERHEAD_BYTES + per_fit * (count + 0.5))


def test_memory_estimate_grows_with_plane_and_network():
    assert fit_memory_bytes(SMALL, (256, 256)) > 3.5 * fit_memory_bytes(SMALL, (128, 128))
    assert fit_memory_bytes(DipParams(4, "64", 4, 1), (64, 64)) > \
        2 * fit_memory_bytes(SMALL, (64, 64))


@pytest.mark.slow
def test_memory_estimate_matches_what_a_real_fit_uses():
    """Peak resident memory of fitting 1 and 5 networks together, each in a fresh
    process (the peak is reset after imports through /proc/self/clear_refs): each extra
    network costs about the estimate, and the first carries a fixed overhead."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset and read the peak resident set size")
    script = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from autodip_watch.dip.fit import FitOptions, fit_tiles
from autodip_watch.dip.params import DipParams

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

k = int(sys.argv[1])
tiles = [np.random.default_rng(i).random((256, 256), dtype=np.float32) for i in range(k)]
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak (VmHWM) to the current resident set
before = status("VmRSS:")
fit_tiles(tiles, DipParams(4, "32", 4, 2), "cpu", [FitOptions(seed=i) for i in range(k)])
print(status("VmHWM:") - before)
"""
    peak = {k: int(subprocess.run([sys.executable, "-c", script, str(k)], check=True,
                                  capture_output=True, text=True).stdout) for k in (1, 5)}
    per_network = (peak[5] - peak[1]) / 4
    estimate = fit_memory_bytes(DipParams(4, "32", 4, 2), (256, 256))
    assert 0.6 * estimate < per_network < ESTIMATE_MARGIN * estimate
    assert peak[1] < estimate + BATCH_OVERHEAD_BYTES


def test_capacity_follows_budget_and_limits():
    shape = (64, 64)
    key = FitRequest(noisy_blobs(shape), SMALL).key()
    assert BatchedFitter("cpu", budget_for(3, SMALL, shape), max_batch=8).capacity(key) == 3
    assert BatchedFitter("cpu", budget_for(30, SMALL, shape), max_batch=8).capacity(key) == 8
    assert BatchedFitter("cpu", 1, max_batch=8).capacity(key) == 1  # never zero


def test_make_fitter_batches_on_cuda_only_by_default():
    assert isinstance(make_fitter(torch.device("cpu")), SingleFitter)
    assert isinstance(make_fitter(torch.device("cpu"), "on"), BatchedFitter)
    assert isinstance(make_fitter(torch.device("cpu"), "on", max_batch=1), SingleFitter)
    with pytest.raises(ValueError, match="auto, on or off"):
        make_fitter(torch.device("cpu"), "sometimes")


def mixed_requests() -> list[FitRequest]:
    """Two configurations interleaved; tiles of different sizes that pad alike or not."""
    shapes = [(32, 32), (30, 28), (32, 32), (48, 48), (32, 32), (31, 32), (32, 32)]
    params = [SMALL, SMALL, OTHER, SMALL, SMALL, SMALL, OTHER]
    return [FitRequest(noisy_blobs(shape, seed=i), p, FitOptions(seed=i))
            for i, (shape, p) in enumerate(zip(shapes, params))]


@pytest.mark.slow
def test_batched_fitter_equals_single_fits_and_keeps_order():
    requests = mixed_requests()
    budget = budget_for(2, OTHER, (32, 32))  # the larger network of the two
    batched = BatchedFitter("cpu", budget, max_batch=2, dtype=torch.float64)
    together = batched.fit(requests)
    alone = SingleFitter("cpu", dtype=torch.float64).fit(requests)
    for request, a, b in zip(requests, together, alone):
        assert a.output.shape == request.tile.shape
        np.testing.assert_allclose(a.output, b.output, atol=1e-6)
        assert a.final_loss == pytest.approx(b.final_loss, rel=1e-8)
    # SMALL at 32x32 (30x28, 31x32 pad to it): four tiles in batches of two; 48x48
    # alone; OTHER: one batch of two.
    assert sorted(batched.batches) == [1, 2, 2, 2]
    assert [r.batch for r in together] == [2, 2, 2, 1, 2, 2, 2]


def test_out_of_memory_halves_the_batch_and_remembers():
    """A real out-of-memory error cannot be provoked on a CPU without exhausting the
    machine, so a progress callback raises torch's own OutOfMemoryError as soon as more
    than two tiles are in one batch (the callbacks of one iteration run back to back)."""
    calls_at_first_iteration = {"count": 0}

    def refuse_more_than_two(iteration, total):
        if iteration != 1:
            calls_at_first_iteration["count"] = 0
            return
        calls_at_first_iteration["count"] += 1
        if calls_at_first_iteration["count"] > 2:
            calls_at_first_iteration["count"] = 0
            raise torch.OutOfMemoryError("CUDA out of memory (test)")

    fitter = BatchedFitter("cpu", 1 << 40, max_batch=8, dtype=torch.float64)
    requests = [FitRequest(noisy_blobs(seed=i), SMALL, FitOptions(seed=i), refuse_more_than_two)
                for i in range(6)]
    results = fitter.fit(requests)
    alone = SingleFitter("cpu", dtype=torch.float64).fit(
        [FitRequest(r.tile, r.params, r.options) for r in requests])
    for a, b in zip(results, alone):
        np.testing.assert_allclose(a.output, b.output, atol=1e-6)
    assert list(fitter.batches) == [2, 1, 2, 1]  # 6 -> 3 + 3 -> (2 + 1) + (2 + 1)
    assert fitter.capacity(requests[0].key()) == 2  # learned for this configuration


def test_single_tile_out_of_memory_is_raised():
    def refuse(iteration, total):
        raise torch.OutOfMemoryError("CUDA out of memory (test)")
    with pytest.raises(torch.OutOfMemoryError):
        BatchedFitter("cpu", 1 << 40).fit([FitRequest(noisy_blobs(), SMALL, progress=refuse)])


def test_planes_of_one_configuration_share_batches():
    planes = [structured((40, 44), np.uint16, seed=s) for s in range(5)]
    planes.append(np.full((40, 44), 7, np.uint16))  # constant: copied, never fitted
    jobs = [PlaneJob(p, SMALL, FitOptions(seed=3)) for p in planes]
    fitter = BatchedFitter("cpu", 1 << 40, max_batch=4, dtype=torch.float64)
    batched = denoise_planes(jobs, fitter)
    single = denoise_planes(jobs, SingleFitter("cpu", dtype=torch.float64))
    assert list(fitter.batches) == [4, 1]
    for a, b in zip(batched, single):
        np.testing.assert_array_equal(a.output, b.output)
    assert batched[-1].constant and np.array_equal(batched[-1].output, planes[-1])
    assert [p.batch for p in batched[:5]] == [4, 4, 4, 4, 1]


def test_shared_fitter_batches_requests_of_concurrent_jobs():
    shared = SharedFitter(BatchedFitter("cpu", 1 << 40, max_batch=8, dtype=torch.float64),
                          linger=30.0)
    requests = [[FitRequest(noisy_blobs(seed=10 * job + i), SMALL, FitOptions(seed=i))
                 for i in range(2)] for job in range(3)]
    results: dict[int, list] = {}
    entered = threading.Barrier(3)

    def job(number):
        with shared.member() as fitter:
            entered.wait()  # all three are members before anyone submits
            results[number] = fitter.fit(requests[number])

    threads = [threading.Thread(target=job, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert list(shared.fitter.batches) == [6]  # nobody ran early: everyone was a member
    alone = SingleFitter("cpu", dtype=torch.float64)
    for number in range(3):
        for got, expected in zip(results[number], alone.fit(requests[number])):
            np.testing.assert_allclose(got.output, expected.output, atol=1e-6)


def test_shared_fitter_does_not_wait_for_a_member_that_never_submits():
    shared = SharedFitter(BatchedFitter("cpu", 1 << 40, max_batch=8), linger=0.5)
    done = threading.Event()
    with shared.member():  # a job still reading its pages
        def job():
            with shared.member() as fitter:
                fitter.fit([FitRequest(noisy_blobs(), SMALL)])
            done.set()
        thread = threading.Thread(target=job)
        thread.start()
        assert done.wait(timeout=60)  # ran after lingering, not when the idle member left
    thread.join()


def test_shared_fitter_hands_a_batch_error_to_every_job_in_it():
    class Stop(BaseException):
        pass

    def stop(iteration, total):
        raise Stop()

    shared = SharedFitter(BatchedFitter("cpu", 1 << 40, max_batch=8), linger=30.0)
    errors: list[BaseException] = []
    entered = threading.Barrier(2)

    def job(progress):
        with shared.member() as fitter:
            entered.wait()
            try:
                fitter.fit([FitRequest(noisy_blobs(), SMALL, progress=progress)])
            except Stop as error:
                errors.append(error)

    threads = [threading.Thread(target=job, args=(p,)) for p in (stop, None)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(errors) == 2


def test_run_together_keeps_to_its_slots_and_order_and_raises_after_all_end():
    """Five calls, two slots: never more than two run at once, the first two share a
    batch (both members before either starts), results come back in call order, and
    the failing call's error is raised only once the calls after it have run too."""
    shared = make_shared_fitter(torch.device("cpu"), "on", 8, 1 << 40, linger=30.0)
    assert isinstance(shared, SharedFitter)
    assert make_shared_fitter(torch.device("cpu"), "auto") is None  # CPU: single fits
    lock = threading.Lock()
    running, most, finished = [0], [0], []

    def call(number, fitter):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            if number == 2:
                raise ValueError("file 2 is broken")
            fitter = fitter or SingleFitter("cpu")  # given None: the caller fits alone
            [result] = fitter.fit([FitRequest(noisy_blobs(seed=number), SMALL,
                                              FitOptions(seed=number))])
            return number, result.batch
        finally:
            with lock:
                running[0] -= 1
                finished.append(number)

    calls = [lambda fitter, n=n: call(n, fitter) for n in range(5)]
    with pytest.raises(ValueError, match="file 2 is broken"):
        run_together(shared, calls, slots=2)
    assert most[0] == 2 and sorted(finished) == [0, 1, 2, 3, 4]
    assert list(shared.fitter.batches)[0] == 2
    assert sum(shared.fitter.batches) == 4
    results = run_together(shared, [c for n, c in enumerate(calls) if n != 2], slots=2)
    assert [number for number, _ in results] == [0, 1, 3, 4]
    assert all(1 <= batch <= 2 for _, batch in results)
    assert run_together(None, calls[:2]) == [(0, 1), (1, 1)]  # no sharing: one by one


def test_a_slot_hands_over_before_leaving_so_the_next_pair_shares_a_batch():
    """a1 and a2 share a batch; a2 then takes a while (writing its output, say). The
    slot freed by a1 takes b1, and b1 must not be fitted alone when a2 leaves: a2's
    slot takes b2 into the fitter before it leaves, so b1 and b2 share a batch too, and
    no membership is left behind. (In-process the gap a late joiner could fall into is
    short; the daemon's worker, whose loop polls, is where it mattered.)"""
    import time

    shared = make_shared_fitter(torch.device("cpu"), "on", 8, 1 << 40, linger=30.0)

    def call(name, seed, pause, fitter):
        [result] = fitter.fit([FitRequest(noisy_blobs(seed=seed), SMALL, FitOptions(seed=seed))])
        time.sleep(pause)
        return name, result.batch

    calls = [lambda fitter, n=name, s=seed, p=pause: call(n, s, p, fitter)
             for name, seed, pause in (("a1", 0, 0.0), ("a2", 1, 1.0), ("b1", 2, 0.0),
                                       ("b2", 3, 0.0))]
    assert run_together(shared, calls, slots=2) == [("a1", 2), ("a2", 2), ("b1", 2),
                                                    ("b2", 2)]
    assert shared._members == 0  # every membership was left


def zstack(path, planes=6):
    channels = [{"name": "DAPI", "acquisition_mode": "WideField"}]
    data = structured((planes, 1, 40, 36), np.uint16)
    write_ome_tiff(path, data, "ZCYX", channels=channels)
    return data


def test_pipeline_batches_planes_of_a_file(tmp_path):
    source = tmp_path / "stack.ome.tif"
    zstack(source)
    # One fit per plane (no ensemble): the batches are the planes' own.
    common = dict(depth=4, width="16", skip=4, iterations=3, device="cpu", members=1)
    fitter = BatchedFitter("cpu", 1 << 40, max_batch=4, dtype=torch.float64)
    batched = denoise_file(source, DenoiseSettings(**common), out=tmp_path / "batched.ome.tif",
                           fitter=fitter)
    single = denoise_file(source, DenoiseSettings(**common), out=tmp_path / "single.ome.tif",
                          fitter=SingleFitter("cpu", dtype=torch.float64))
    assert list(fitter.batches) == [4, 2]
    np.testing.assert_array_equal(tifffile.imread(batched.output), tifffile.imread(single.output))
    entries = read_provenance(batched.output)[0]["entries"]
    assert entries["settings.batching"] == "on" and entries["settings.max_batch"] == "4"
    assert entries["channel.0.largest_batch"] == "4"
    assert read_provenance(single.output)[0]["entries"]["channel.0.largest_batch"] == "1"
    assert [p.note for p in batched.planes] == ["fitted in a batch of 4"] * 4 + \
        ["fitted in a batch of 2"] * 2


@pytest.mark.slow
def test_pipeline_batching_setting_in_float32(tmp_path):
    """``batching="on"`` through the settings, as the CLI and the daemon pass it."""
    source = tmp_path / "stack.ome.tif"
    data = zstack(source, planes=3)
    settings = DenoiseSettings(depth=4, width="16", skip=4, iterations=20, device="cpu",
                               batching="on", max_batch=8)
    report = denoise_file(source, settings)
    out = tifffile.imread(report.output)
    assert out.shape == data.reshape(3, 40, 36).shape
    alone = denoise_file(source, DenoiseSettings(depth=4, width="16", skip=4, iterations=20,
                                                 device="cpu", batching="off"),
                         out=tmp_path / "alone.ome.tif")
    difference = np.abs(out.astype(float) - tifffile.imread(alone.output).astype(float))
    assert difference.mean() < 0.05 * (data.max() - data.min())
    assert json.dumps(report.as_dict())  # the report (with batch notes) stays serialisable


def test_speed_settings_reach_the_fit_and_the_provenance(tmp_path):
    source = tmp_path / "stack.ome.tif"
    zstack(source, planes=1)
    settings = DenoiseSettings(depth=4, width="16", skip=4, iterations=2, device="cpu",
                               speed="channels_last,bf16,cuda_graphs")
    options = settings.fit_options(torch.device("cpu"))
    assert options.channels_last and options.bf16 and not options.cuda_graphs  # CUDA only
    assert settings.fit_options(torch.device("cuda")).cuda_graphs
    report = denoise_file(source, settings)
    entries = read_provenance(report.output)[0]["entries"]
    assert entries["settings.speed"] == "channels_last,bf16"  # what was applied here
    with pytest.raises(ValueError, match="unknown speed setting"):
        denoise_file(source, DenoiseSettings(device="cpu", speed="warp"),
                     out=tmp_path / "never.ome.tif")
    assert not (tmp_path / "never.ome.tif").exists()


needs_cuda = pytest.mark.cuda


@needs_cuda
def test_cuda_batches_by_default_and_the_estimate_bounds_real_memory():
    fitter = make_fitter(torch.device("cuda"))
    assert isinstance(fitter, BatchedFitter)
    assert fitter.budget() > 0
    params, shape = DipParams(5, "32", 4, 3), (256, 256)
    tiles = [np.random.default_rng(k).random(shape, dtype=np.float32) for k in range(4)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    from autodip_watch.dip.fit import fit_tiles
    fit_tiles(tiles, params, "cuda", [FitOptions(seed=k) for k in range(4)])
    peak = torch.cuda.max_memory_allocated() - before
    estimate = 4 * fit_memory_bytes(params, shape) * ESTIMATE_MARGIN + BATCH_OVERHEAD_BYTES
    assert peak < estimate


@needs_cuda
def test_cuda_batched_planes_are_as_good_as_single_fits():
    planes = [structured((96, 80), np.uint16, seed=s) for s in range(4)]
    jobs = [PlaneJob(p, DipParams(4, "16", 4, 30), FitOptions(seed=1)) for p in planes]
    fitter = BatchedFitter("cuda", max_batch=8)
    batched = denoise_planes(jobs, fitter)
    single = denoise_planes(jobs, SingleFitter("cuda"))
    assert list(fitter.batches) == [4]
    for a, b in zip(batched, single):
        difference = np.abs(a.output.astype(float) - b.output.astype(float)).mean()
        assert difference < 0.05 * (planes[0].max() - planes[0].min())


@needs_cuda
def test_cuda_ensemble_members_share_one_batch_in_the_default_mode():
    """The default mode on a GPU: the members of a tile are one batch of the pipeline's
    fitter, and the ensemble is as good as the same members fitted one by one."""
    from autodip_watch.dip.modes import MODES, STABLE

    stable = MODES[STABLE]
    plane = structured((96, 80), np.uint16, seed=3)
    job = PlaneJob(plane, DipParams(4, "16", 4, 30), stable.fit_options(FitOptions(seed=1)),
                   members=stable.members("cuda"))
    fitter = make_fitter(torch.device("cuda"))
    together = denoise_planes([job], fitter)[0]
    apart = denoise_planes([job], SingleFitter("cuda"))[0]
    assert list(fitter.batches) == [stable.members_cuda] and together.members == stable.members_cuda
    difference = np.abs(together.output.astype(float) - apart.output.astype(float)).mean()
    assert difference < 0.05 * (plane.max() - plane.min())


def test_fit_key_from_metadata_and_none_when_unknowable(tmp_path):
    from autodip_watch.pipeline.plan import fit_key

    source = tmp_path / "stack.ome.tif"
    zstack(source, planes=2)
    settings = DenoiseSettings(depth=4, width="16", skip=4, iterations=3)
    assert fit_key(source, settings) == "d4/w16/s4/3it@40x36"
    broken = tmp_path / "broken.ome.tif"
    broken.write_bytes(source.read_bytes()[:200])  # truncated: unreadable, not an error here
    assert fit_key(broken, settings) is None
    nearest = DenoiseSettings(depth=4, width="16", skip=4, iterations=3, transfer="nearest-mse")
    assert fit_key(source, nearest) is None  # chosen per plane, from the pixels
