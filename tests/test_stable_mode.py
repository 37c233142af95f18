"""The stabilised fit (issue 14): each setting changes the fit as documented, and the
paper's mode stays the reference loop, operation for operation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from autodip_watch.cli.app import app
from autodip_watch.dip.batching import SingleFitter
from autodip_watch.dip.fit import (ROLLBACK_CHECK_EVERY, _Stabiliser, build_network, fit_tile, fit_tiles, make_input, training_step)
from autodip_watch.dip.options import FitOptions
from autodip_watch.dip.modes import MODES, PAPER, STABLE, fit_mode
from autodip_watch.dip.noise import Anscombe, NoiseModel, estimate_noise
from autodip_watch.dip.params import DipParams
from autodip_watch.dip.plane import PlaneJob, VarianceStabilised, denoise_planes, member_seed
from autodip_watch.dip.intensity import denormalise, normalise
from autodip_watch.settings.denoise import DenoiseSettings
from autodip_watch.pipeline.denoise import denoise_file
from autodip_watch.provenance import PROVENANCE_NAMESPACE

SMALL = DipParams(depth=4, width="16", skip=4, iterations=12)


def cells(shape=(64, 64), photons=40.0, read_noise=2.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A clean fluorescence-like plane (blobs on a dim background, in photons) and a
    Poisson-Gaussian noisy version of it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    clean = np.full(shape, 2.0)
    for _ in range(6):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        clean += photons * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(3, 8) ** 2))
    noisy = rng.poisson(clean) + rng.normal(0, read_noise, shape)
    return clean, noisy


# ------------------------------------------------------------------------- paper mode

def reference_dip(tile: np.ndarray, params: DipParams, seed: int) -> tuple[np.ndarray, list]:
    """The published DIP loop written out plainly: fixed z, Adam lr 0.01, MSE, last output."""
    net, generator = build_network(params, seed)
    z = make_input(tile.shape, generator)
    target = torch.from_numpy(tile)[None, None]
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    net.train()
    losses = []
    for _ in range(params.iterations):
        optimiser.zero_grad(set_to_none=True)
        output = net(z)
        loss = ((output - target) ** 2).mean(dim=(0, 2, 3))
        loss.sum().backward()
        optimiser.step()
        losses.append(float(loss.detach()[0]))
    return output.detach()[0, 0].numpy(), losses


def test_paper_mode_is_the_reference_loop_bit_for_bit():
    tile = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    expected, losses = reference_dip(tile, SMALL, seed=3)
    options = DenoiseSettings(mode=PAPER, seed=3, table=None).fit_options(torch.device("cpu"))
    assert options == FitOptions(seed=3)  # nothing of the stable mode leaks into it
    result = fit_tile(tile, SMALL, "cpu", options)
    assert np.array_equal(result.output, np.clip(expected, 0, 1))
    assert np.array_equal(result.losses, np.asarray(losses, dtype=np.float32))


def test_paper_mode_through_the_pipeline_is_one_plain_fit(tmp_path):
    clean, noisy = cells()
    plane = np.clip(noisy * 20, 0, 65535).astype(np.uint16)
    source = tmp_path / "cells.ome.tif"
    tifffile.imwrite(source, plane, ome=True, metadata={"axes": "YX"})
    settings = DenoiseSettings(mode=PAPER, depth=4, width="16", skip=4, iterations=12,
                               microscope="widefield", specimen="nucleus", device="cpu",
                               seed=5)
    report = denoise_file(source, settings, out=tmp_path / "out.ome.tif")
    written = tifffile.imread(report.output)
    unit, low, high = normalise(plane)
    single = fit_tile(unit.astype(np.float32), SMALL, "cpu", FitOptions(seed=5))
    assert np.array_equal(written, denormalise(single.output, low, high, plane.dtype))
    assert report.planes[0].members == 1 and report.planes[0].noise is None


# -------------------------------------------------------------------- averaging, spikes

def test_window_average_is_the_mean_of_the_late_snapshots():
    tile = np.random.default_rng(2).random((64, 64)).astype(np.float32)
    snapshots = {}
    result = fit_tile(tile, SMALL, "cpu", FitOptions(seed=0, average_fraction=0.25),
                      snapshot=lambda i, out: snapshots.__setitem__(i, out.clone().numpy()),
                      snapshot_every=1)
    plain = fit_tile(tile, SMALL, "cpu", FitOptions(seed=0))
    assert np.array_equal(result.losses, plain.losses)  # averaging never steers the fit
    late = np.mean([snapshots[i] for i in (10, 11, 12)], axis=0)  # last 25 % of 12
    np.testing.assert_allclose(result.output, np.clip(late, 0, 1), atol=1e-6)
    assert not np.allclose(result.output, plain.output)


def test_spikes_are_left_out_of_the_average():
    tile = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    params = DipParams(4, "16", 4, 40)
    snapshots = {}
    # A factor barely above 1 flags every iteration whose loss rose: they must be left out.
    factor = 1.0001
    result = fit_tile(tile, params, "cpu",
                      FitOptions(seed=0, average_fraction=0.5, spike_factor=factor),
                      snapshot=lambda i, out: snapshots.__setitem__(i, out.clone().numpy()),
                      snapshot_every=1)
    losses = result.losses
    kept = [i for i in range(21, 41)
            if losses[i - 1] <= factor * losses[max(0, i - 21):i - 1].min()]
    assert 0 < len(kept) < 20, "the test needs both kinds of iteration in the window"
    np.testing.assert_allclose(result.output,
                               np.clip(np.mean([snapshots[i] for i in kept], axis=0), 0, 1),
                               atol=1e-6)


def _fit_with_planted_spike(rollback: bool, spike_at: int = 30, iterations: int = 60):
    """The fit loop of fit_tiles on a real network, with the weights thrown off at
    ``spike_at`` as a loss spike does. Returns the losses, the stabiliser, the network,
    and the weights at the start of every iteration."""
    tile = np.random.default_rng(4).random((64, 64)).astype(np.float32)
    params = DipParams(4, "16", 4, iterations)
    options = FitOptions(seed=0, spike_factor=1.2, rollback=rollback)
    net, generator = build_network(params, 0)
    net.train()
    z = make_input(tile.shape, generator)
    target = torch.from_numpy(tile)[None, None]
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    stabiliser = _Stabiliser(options, iterations, net, 1)
    losses = torch.zeros(iterations, 1)
    history = {}
    for iteration in range(1, iterations + 1):
        if iteration == spike_at:
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(torch.randn_like(p) * 0.5)
        history[iteration] = [p.detach().clone() for p in net.parameters()]
        output, per_network = training_step(net, optimiser, z, target, None, None, options,
                                            torch.device("cpu"))
        losses[iteration - 1] = per_network
        stabiliser.observe(iteration, output.detach()[0], per_network, losses)
    return losses[:, 0].numpy(), stabiliser, net, history


@pytest.mark.slow
def test_a_planted_spike_is_rolled_back():
    spike_at = 30
    kept, stabiliser, _, _ = _fit_with_planted_spike(rollback=True, spike_at=spike_at)
    free, unguarded, _, _ = _fit_with_planted_spike(rollback=False, spike_at=spike_at)
    # (Later small spikes may be rolled back too: only the first is planted.)
    assert stabiliser.rollbacks[0] >= 1 and unguarded.rollbacks == [0]
    healthy = kept[spike_at - 2]
    assert free[spike_at - 1] > 1.5 * healthy  # the planted spike is a spike
    # Rolled back at the check of its own iteration to the weights of iteration 21:
    # the next loss is about that iteration's, and the fit goes on falling from there.
    assert kept[spike_at] == pytest.approx(kept[20], rel=0.02)
    assert kept[spike_at + 14] < healthy < free[spike_at + 14]


def test_rollback_restores_the_last_verified_weights():
    spike_at = 30  # a check iteration (ROLLBACK_CHECK_EVERY = 5)
    assert spike_at % ROLLBACK_CHECK_EVERY == 0
    _, stabiliser, net, history = _fit_with_planted_spike(rollback=True, spike_at=spike_at,
                                                          iterations=spike_at)
    # The check at 30 sees the spike and restores the checkpoint: the weights saved at the
    # check of 20 (those the fit entered iteration 21 with), verified healthy by the
    # losses of 21..25 at the check of 25.
    verified = history[spike_at - 2 * ROLLBACK_CHECK_EVERY + 1]
    for restored, expected in zip(net.parameters(), verified):
        assert torch.equal(restored.detach(), expected)


@pytest.mark.slow
def test_rollback_in_a_stack_touches_only_the_network_that_spiked():
    tiles = [np.random.default_rng(s).random((64, 64)).astype(np.float32) for s in (5, 6)]
    params = DipParams(4, "16", 4, 30)
    options = [FitOptions(seed=s, spike_factor=1.0001, rollback=True) for s in (0, 1)]
    stacked = fit_tiles(tiles, params, "cpu", options, dtype=torch.float64)
    alone = [fit_tiles([t], params, "cpu", [o], dtype=torch.float64)[0]
             for t, o in zip(tiles, options)]
    for joint, single in zip(stacked, alone):
        assert joint.rollbacks == single.rollbacks
        np.testing.assert_allclose(joint.output, single.output, atol=1e-8)
    assert any(result.rollbacks for result in alone)


def test_several_stopping_points_average_their_own_windows():
    tile = np.random.default_rng(7).random((64, 64)).astype(np.float32)
    params = DipParams(4, "16", 4, 20)
    options = FitOptions(seed=0, average_fraction=0.2)
    long = fit_tiles([tile], params, "cpu", [options], stops=[10, 20])[0]
    short = fit_tile(tile, DipParams(4, "16", 4, 10), "cpu", options)
    np.testing.assert_allclose(long.stopped[10], short.output, atol=1e-6)
    np.testing.assert_allclose(long.stopped[20], long.output, atol=1e-6)


# ------------------------------------------------------------------------ noise, VST

@pytest.mark.parametrize("gain,sigma", [(1.0, 0.0), (1.0, 2.0), (3.0, 5.0)])
def test_the_transform_stabilises_and_its_inverse_is_unbiased(gain, sigma):
    rng = np.random.default_rng(0)
    transform = Anscombe(gain, 0.0, sigma / gain)
    for counts in (2.0, 5.0, 20.0, 200.0):
        y = gain * rng.poisson(counts, 400_000) + rng.normal(0, sigma, 400_000)
        d = transform.forward(y)
        if counts >= 5:
            assert abs(d.var() - 1.0) < 0.1
        # The exact unbiased inverse of E[f(y)] is E[y]; the closed form is within 2 %
        # of it from a few counts up (Makitalo & Foi 2013, fig. 2).
        assert transform.inverse(d.mean()) == pytest.approx(gain * counts, rel=0.02, abs=0.05)


def test_the_inverse_of_the_plain_transform_is_biased_the_exact_one_is_not():
    rng = np.random.default_rng(1)
    transform = Anscombe(1.0, 0.0, 0.0)
    y = rng.poisson(3.0, 400_000)
    d = transform.forward(y).mean()
    algebraic = (d / 2) ** 2 - 0.375
    assert abs(algebraic - 3.0) > 0.2  # the known bias of the algebraic inverse
    assert transform.inverse(d) == pytest.approx(3.0, rel=0.02)


@pytest.mark.parametrize("photons,read_noise", [(40, 2.0), (200, 5.0), (15, 0.5)])
def test_noise_estimate_recovers_the_simulated_noise(photons, read_noise):
    clean, noisy = cells((256, 256), photons, read_noise, seed=photons)
    low, high = noisy.min(), noisy.max()
    unit = (noisy - low) / (high - low)
    model = estimate_noise(unit)
    # In unit scale: var = clean/(high-low)^2 + s^2/(high-low)^2, clean = unit*(high-low)+low.
    span = high - low
    true_slope = 1.0 / span
    true_intercept = (low / span ** 2) + read_noise ** 2 / span ** 2
    means = np.quantile(unit, [0.3, 0.9])
    for mean in means:
        truth = true_slope * mean + true_intercept
        assert model.variance(mean) == pytest.approx(truth, rel=0.25)


def test_the_stabilised_plane_goes_back_to_the_plane():
    clean, noisy = cells((128, 128), 60, 1.0)
    unit = (noisy - noisy.min()) / np.ptp(noisy)
    stabilised = VarianceStabilised(unit)
    assert stabilised.transform is not None
    assert stabilised.plane.min() == 0.0 and stabilised.plane.max() == pytest.approx(1.0)
    # Forward then back on a smooth (noise-free) plane: the inverse is for expectations,
    # so a plane of expectations must come back close to itself.
    smooth = (clean - noisy.min()) / np.ptp(noisy)
    forward = (stabilised.transform.forward(smooth) - stabilised.low) / (stabilised.high -
                                                                         stabilised.low)
    np.testing.assert_allclose(stabilised.back(forward), np.clip(smooth, 0, 1), atol=0.02)


def test_homoscedastic_noise_is_not_transformed():
    rng = np.random.default_rng(0)
    plane = np.clip(0.5 + rng.normal(0, 0.05, (128, 128)), 0, 1)
    stabilised = VarianceStabilised(plane)
    model = stabilised.model
    assert model.slope < 0.01 * max(model.intercept, 1e-12) / 0.5 or stabilised.transform is None


# -------------------------------------------------------------------------- ensembles

@pytest.mark.slow
def test_an_ensemble_is_the_mean_of_its_members_fits():
    _, noisy = cells()
    plane = np.clip(noisy * 20, 0, 65535).astype(np.uint16)
    job = PlaneJob(plane, SMALL, FitOptions(seed=2), members=3)
    result = denoise_planes([job], SingleFitter("cpu"))[0]
    unit, low, high = normalise(plane)
    members = [fit_tile(unit.astype(np.float32), SMALL, "cpu",
                        FitOptions(seed=member_seed(2, m))).output for m in range(3)]
    assert member_seed(2, 0) == 2  # member 0 is the single fit of the seed
    expected = denormalise(np.mean(members, axis=0), low, high, plane.dtype)
    assert np.array_equal(result.output, expected)
    assert result.members == 3


def test_members_of_different_seeds_never_overlap():
    seeds = {member_seed(seed, member) for seed in range(50) for member in range(16)}
    assert len(seeds) == 50 * 16


# ----------------------------------------------------------------- modes in the product

def test_the_stable_mode_is_the_default_everywhere():
    assert fit_mode(None) is MODES[STABLE]
    assert DenoiseSettings(table=None).fit_mode().name == STABLE
    options = DenoiseSettings(table=None).fit_options(torch.device("cpu"))
    stable = MODES[STABLE]
    assert (options.average_fraction, options.spike_factor, options.rollback) == \
        (stable.average_fraction, stable.spike_factor, stable.rollback)
    with pytest.raises(ValueError, match="unknown fit mode"):
        fit_mode("fastest")


def test_denoise_records_the_mode_in_provenance_and_report(tmp_path):
    from ome_types import from_tiff

    _, noisy = cells((128, 128), photons=200)
    source = tmp_path / "cells.ome.tif"
    tifffile.imwrite(source, np.clip(noisy * 20, 0, 65535).astype(np.uint16), ome=True,
                     metadata={"axes": "YX"})
    result = CliRunner().invoke(app, [
        "denoise", str(source), "--depth", "4", "--width", "16", "--skip", "4",
        "--iterations", "6", "--device", "cpu", "--members", "2", "--microscope", "widefield",
        "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    plane = summary["planes"][0]
    assert plane["members"] == 2
    # vst is off in stable, but the extension estimates the noise: the report shows it
    assert plane["noise"]["slope"] >= 0 and plane["noise"]["intercept"] is not None
    assert 6 <= plane["iterations_run"][0] <= plane["iterations_run"][1] <= 6 + 2
    ome = from_tiff(summary["output"])
    record = {}
    for annotation in ome.structured_annotations.map_annotations:
        if annotation.namespace == PROVENANCE_NAMESPACE:
            record = {item.k: item.value for item in annotation.value.ms}
    assert record["settings.mode"] == STABLE
    assert record["settings.mode_members"] == "2" and record["settings.mode_vst"] == "False"
    assert record["settings.mode_extend_fraction"] == "0.25"

    paper = CliRunner().invoke(app, [
        "denoise", str(source), "--depth", "4", "--width", "16", "--skip", "4",
        "--iterations", "6", "--device", "cpu", "--mode", "paper", "--microscope", "widefield",
        "--out", str(tmp_path / "paper.ome.tif"), "--json"])
    assert paper.exit_code == 0, paper.output
    paper_plane = json.loads(paper.stdout)["planes"][0]
    assert paper_plane["members"] == 1 and paper_plane["iterations_run"] == [6, 6]
    assert paper_plane["noise"] is None  # the paper mode estimates nothing
    bad = CliRunner().invoke(app, ["denoise", str(source), "--mode", "fastest"])
    assert bad.exit_code == 2 and "unknown fit mode" in bad.output


def test_inspect_shows_the_mode(tmp_path):
    source = tmp_path / "x.ome.tif"
    tifffile.imwrite(source, np.zeros((16, 16), np.uint16), ome=True, metadata={"axes": "YX"})
    text = CliRunner().invoke(app, ["inspect", str(source)])
    assert "fit mode: stable" in text.output and "ensemble of 3 fits on CPU" in text.output
    assert "by up to 25%" in text.output and "discrepancy principle" in text.output
    data = json.loads(CliRunner().invoke(app, ["inspect", "--json", str(source)]).stdout)
    assert data["images"][0]["mode"]["name"] == STABLE


@pytest.mark.slow
def test_a_batching_fitter_fits_the_members_together():
    from autodip_watch.dip.batching import BatchedFitter

    _, noisy = cells()
    plane = np.clip(noisy * 20, 0, 65535).astype(np.uint16)
    job = PlaneJob(plane, SMALL, FitOptions(seed=1, average_fraction=0.25), members=3)
    fitter = BatchedFitter("cpu", 1 << 40, max_batch=8, dtype=torch.float64)
    together = denoise_planes([job], fitter)[0]
    apart = denoise_planes([job], SingleFitter("cpu", dtype=torch.float64))[0]
    assert list(fitter.batches) == [3] and together.batch == 3 and apart.batch == 1
    assert np.abs(together.output.astype(int) - apart.output.astype(int)).max() <= 1
