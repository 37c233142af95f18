"""The speed settings of the fit (issue: speed on the GPU) run and keep the result.

On CPU this checks that each path computes the same fit; their speed is measured by
``bench/speed.py``, never here. CUDA graphs exist only on a GPU: their tests are skipped
without one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from autodip_watch.dip.device import configure_tf32
from autodip_watch.dip.fit import GRAPH_WARMUP_ITERATIONS, fit_tile, fit_tiles
from autodip_watch.dip.modes import MODES, STABLE
from autodip_watch.dip.options import FitOptions
from autodip_watch.dip.network import DipParams

from helpers.images import noisy_blobs

SMALL = DipParams(4, "16", 4, 3)


def test_channels_last_is_the_same_fit():
    tile = noisy_blobs()
    plain = fit_tile(tile, SMALL, "cpu", FitOptions(seed=1))
    nhwc = fit_tile(tile, SMALL, "cpu", FitOptions(seed=1, channels_last=True))
    np.testing.assert_allclose(nhwc.losses, plain.losses, rtol=1e-3)
    assert np.abs(nhwc.output - plain.output).max() < 1e-2


def test_bf16_autocast_fits_and_stays_close():
    tile = noisy_blobs(seed=4)
    params = DipParams(4, "16", 4, 30)
    plain = fit_tile(tile, params, "cpu", FitOptions(seed=0))
    bf16 = fit_tile(tile, params, "cpu", FitOptions(seed=0, bf16=True))
    assert bf16.output.dtype == np.float32
    assert bf16.losses[-1] < 0.7 * bf16.losses[0]
    assert bf16.losses[0] == pytest.approx(plain.losses[0], rel=0.05)


def _tf32() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def tf32_switches():
    """torch's process-wide TF32 switches, put back after the test."""
    saved = _tf32()
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("enabled", [True, False])
def test_tf32_is_a_process_setting_that_no_fit_changes(tf32_switches, enabled):
    """TF32 is switched for the process (configure_tf32, where a process sets up its
    engine), never per fit: fits run side by side in threads, and a switch flipped and
    restored around one fit would change the arithmetic of the others. Each value is
    set, then a fit with every speed option the CPU has must leave it as it is."""
    configure_tf32(enabled)
    assert _tf32() == (enabled, enabled)
    fit_tile(noisy_blobs(), SMALL, "cpu", FitOptions(channels_last=True, bf16=True))
    assert _tf32() == (enabled, enabled)
    configure_tf32(None)  # None: leave torch's switches as they are
    assert _tf32() == (enabled, enabled)


@pytest.mark.cuda
def test_tf32_on_cuda_is_close(tf32_switches):
    tile = noisy_blobs()
    configure_tf32(False)
    strict = fit_tile(tile, SMALL, "cuda", FitOptions(seed=0))
    configure_tf32(True)
    fast = fit_tile(tile, SMALL, "cuda", FitOptions(seed=0))
    assert np.abs(strict.output - fast.output).max() < 2e-2


@pytest.mark.slow
def test_compiled_network_is_the_same_fit():
    tile = noisy_blobs()
    plain = fit_tile(tile, SMALL, "cpu", FitOptions(seed=2))
    compiled = fit_tile(tile, SMALL, "cpu", FitOptions(seed=2, compile=True))
    np.testing.assert_allclose(compiled.losses, plain.losses, rtol=1e-3)


def test_cuda_graphs_are_refused_off_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        fit_tile(noisy_blobs(), SMALL, "cpu", FitOptions(cuda_graphs=True))


def test_cuda_graphs_do_not_combine_with_compile():
    with pytest.raises(ValueError, match="compile"):
        FitOptions(cuda_graphs=True, compile=True)


# The graphed fit runs GRAPH_WARMUP_ITERATIONS eager steps, captures, then replays: 10
# iterations replay the graph 7 times.
GRAPHED = DipParams(4, "16", 4, GRAPH_WARMUP_ITERATIONS + 7)
needs_cuda = pytest.mark.cuda
#: The default (stable) mode's fit settings (dip/modes.py), and with rollback, which it
#: leaves off but a user may turn on: the parts of the loop that only these options run.
STABLE_OPTIONS = MODES[STABLE].fit_options(FitOptions())
STABLE_ROLLBACK_OPTIONS = dataclasses.replace(STABLE_OPTIONS, rollback=True)


@pytest.fixture
def float64_default():
    """Exact comparisons need float64 throughout: a graphed fit's Adam is ``capturable``
    and computes its bias corrections from a step tensor of torch's default dtype, where
    the eager Adam uses Python floats. In float32 that 1e-7 difference grows to percents
    within 10 iterations (DIP's first steps amplify any rounding: measured on CPU, also
    between batched and single fits), so float32 paths are compared as fits, not digits."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def _eager_and_graphed(tiles, options: FitOptions, dtype=torch.float32):
    seeded = [dataclasses.replace(options, seed=k) for k in range(len(tiles))]
    graphed = [dataclasses.replace(o, cuda_graphs=True) for o in seeded]
    return (fit_tiles(tiles, GRAPHED, "cuda", seeded, dtype=dtype),
            fit_tiles(tiles, GRAPHED, "cuda", graphed, dtype=dtype))


def _assert_same_digits(eager, graphed):
    for alone, replayed in zip(eager, graphed):
        np.testing.assert_allclose(replayed.losses, alone.losses, rtol=1e-6)
        np.testing.assert_allclose(replayed.output, alone.output, atol=1e-6)


def _assert_as_good_a_fit(eager, graphed):
    for alone, replayed in zip(eager, graphed):
        assert np.all(np.isfinite(replayed.losses))
        assert replayed.losses[0] == pytest.approx(alone.losses[0], rel=1e-4)  # no update yet
        assert replayed.losses[-1] < 0.6 * replayed.losses[0]  # the replays do optimise
        assert replayed.losses[-1] == pytest.approx(alone.losses[-1], rel=0.25)
        assert np.abs(replayed.output - alone.output).mean() < 0.05


@needs_cuda
@pytest.mark.parametrize("options",
                         [FitOptions(), FitOptions(ema_weight=0.9, reg_noise_std=1 / 30),
                          STABLE_OPTIONS, STABLE_ROLLBACK_OPTIONS],
                         ids=["plain", "ema-and-input-noise", "stable", "stable-rollback"])
@pytest.mark.parametrize("count", [1, 3])
def test_graphed_fit_equals_eager_fit_in_float64(float64_default, options, count):
    """Every iteration's loss and the output, K=1 and K=3 stacked. The input noise is
    drawn inside the graph from the fit's registered generator, so it follows the eager
    draws; the EMA and the stable mode's late-window mean read the graph's output tensor
    after each replay; a rollback writes the weights the graph reads."""
    tiles = [noisy_blobs(seed=s) for s in range(count)]
    eager, graphed = _eager_and_graphed(tiles, options, dtype=torch.float64)
    _assert_same_digits(eager, graphed)
    if count > 1:
        assert not np.allclose(graphed[0].output, graphed[1].output)


@needs_cuda
@pytest.mark.parametrize("count", [1, 3])
def test_graphed_fit_in_strict_fp32_is_as_good_as_eager(tf32_switches, count):
    configure_tf32(False)
    tiles = [noisy_blobs(seed=s) for s in range(count)]
    _assert_as_good_a_fit(*_eager_and_graphed(tiles, FitOptions()))


@needs_cuda
def test_graphed_fit_with_bf16_and_channels_last():
    tiles = [noisy_blobs(seed=s) for s in range(2)]
    eager, graphed = _eager_and_graphed(tiles, FitOptions(bf16=True, channels_last=True))
    _assert_as_good_a_fit(eager, graphed)


@needs_cuda
def test_graphed_fit_calls_back_every_iteration_with_that_iterations_output(float64_default):
    """Snapshots must be copies: the next replay overwrites the graph's output tensor.
    Tiles of different shapes get a list of crops (views, no stacking copy)."""
    tiles = [noisy_blobs((32, 32)), noisy_blobs((30, 28), seed=1)]
    options = [FitOptions(seed=k) for k in range(2)]
    eager_seen, seen, calls = [], [], []
    fit_tiles(tiles, GRAPHED, "cuda", options, dtype=torch.float64,
              snapshot=lambda i, out: eager_seen.append(out), snapshot_every=1)
    fit_tiles(tiles, GRAPHED, "cuda", [dataclasses.replace(o, cuda_graphs=True) for o in options],
              dtype=torch.float64, progress=lambda i, total: calls.append((i, total)),
              snapshot=lambda i, out: seen.append((i, out)), snapshot_every=1)
    total = GRAPHED.iterations
    assert calls == [(i, total) for i in range(1, total + 1)]
    assert [i for i, _ in seen] == list(range(1, total + 1))
    for (_, crops), expected in zip(seen, eager_seen):
        assert [tuple(c.shape) for c in crops] == [(32, 32), (30, 28)]
        for crop, eager_crop in zip(crops, expected):
            torch.testing.assert_close(crop, eager_crop, rtol=0, atol=1e-6)
    assert (seen[-1][1][1] - seen[-2][1][1]).abs().max().item() > 1e-4  # not one aliased tensor


@needs_cuda
@pytest.mark.parametrize("options", [FitOptions(), FitOptions(cuda_graphs=True),
                                     FitOptions(bf16=True, channels_last=True,
                                                ema_weight=0.9),
                                     STABLE_OPTIONS,
                                     dataclasses.replace(STABLE_OPTIONS, cuda_graphs=True)],
                         ids=["eager", "graphed", "bf16-ema", "stable", "stable-graphed"])
def test_fit_loop_never_waits_for_the_gpu(options):
    """No host sync inside the loop: CUDA's sync debug mode turns any (an ``.item()``, a
    device-to-host copy) into an error for the iterations after the graph capture
    (capturing synchronises once, by design) up to the last."""
    capture = GRAPH_WARMUP_ITERATIONS + 1
    params = DipParams(4, "16", 4, capture + 4)

    def strict_between_first_and_last(iteration, total):
        torch.cuda.set_sync_debug_mode("error" if capture <= iteration < total else "default")

    try:
        results = fit_tiles([noisy_blobs(seed=s) for s in range(2)], params, "cuda",
                            [dataclasses.replace(options, seed=s) for s in range(2)],
                            progress=strict_between_first_and_last)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(np.all(np.isfinite(r.losses)) for r in results)


@needs_cuda
def test_graph_capture_is_not_broken_by_another_thread_using_the_gpu(float64_default):
    """In the daemon, other jobs' threads use CUDA while one thread fits (uploading
    tiles, scoring similarity, freeing memory after an error). The capture is
    thread-local, so their calls neither fail it nor are refused while it captures."""
    import threading

    stop = threading.Event()
    errors: list[BaseException] = []

    def other_job() -> None:
        stream = torch.cuda.Stream()
        size = 1 << 20
        try:
            while not stop.is_set():
                with torch.cuda.stream(stream):
                    # A fresh size each time: new device memory, not a cached block.
                    block = torch.ones(size, device="cuda")
                    block.mul_(2).sum()
                del block
                size += 4096
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            errors.append(error)

    tiles = [noisy_blobs(seed=s) for s in range(2)]
    options = [FitOptions(seed=s) for s in range(2)]
    eager = fit_tiles(tiles, GRAPHED, "cuda", options, dtype=torch.float64)
    thread = threading.Thread(target=other_job, daemon=True)
    thread.start()
    try:
        graphed = fit_tiles(tiles, GRAPHED, "cuda",
                            [dataclasses.replace(o, cuda_graphs=True) for o in options],
                            dtype=torch.float64)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    _assert_same_digits(eager, graphed)
