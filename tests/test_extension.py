"""The stable mode's extension past the transferred count (issue 14): the discrepancy
principle against the noise variance estimated from the image, with the transferred
count N as its floor. Each case plants a noise variance relative to the fit's own
recorded losses, so that where the fit must stop is known before it runs."""

from __future__ import annotations

import numpy as np
import pytest

from autodip_watch.dip.batching import FitRequest, SingleFitter
from autodip_watch.dip.discrepancy import EXTENSION_STEP
from autodip_watch.dip.fit import fit_tile, fit_tiles
from autodip_watch.dip.noise import NoiseModel
from autodip_watch.dip.options import FitOptions
from autodip_watch.dip.params import DipParams
from autodip_watch.dip.plane import PlaneJob, VarianceStabilised, denoise_planes, tile_noise_variances
from autodip_watch.dip.tiling import plane_tiles

N = 40  # transferred count; with extend_fraction 0.25 the limit is 50, candidates every 2
LIMIT = 50
SMALL = DipParams(depth=4, width="16", skip=4, iterations=N)
EXTENDED = FitOptions(seed=0, average_fraction=0.2, spike_factor=1.05, extend_fraction=0.25)


def tile(seed: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    clean = 0.2 + 0.6 * np.exp(-((yy - 30) ** 2 + (xx - 34) ** 2) / 200.0)
    return np.clip(clean + rng.normal(0, 0.08, clean.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def reference():
    """The same fit run plainly to the limit: its losses are the extended fit's, as the
    extension only decides where to stop (CPU fits are deterministic)."""
    plain = fit_tile(tile(), DipParams(4, "16", 4, LIMIT), "cpu",
                     FitOptions(seed=0, average_fraction=0.2, spike_factor=1.05))
    return np.minimum.accumulate(plain.losses.astype(np.float64))


def candidates() -> list[int]:
    step = max(1, round(EXTENSION_STEP * N))
    return sorted({*range(N, LIMIT, step), LIMIT})


def expected_stop(lowest: np.ndarray, variance: float | None, margin: float = 2.0) -> int:
    if variance is None or lowest[N - 1] <= variance or lowest[N - 1] > margin * variance:
        return N
    return next((c for c in candidates() if lowest[c - 1] <= variance), LIMIT)


@pytest.mark.parametrize("case", ["reached before N", "far above: noise not explained",
                                  "unknown", "reached between candidates", "never reached"])
def test_a_fit_stops_where_the_discrepancy_principle_says(reference, case):
    lowest = reference
    at_n = lowest[N - 1]
    variance = {
        "reached before N": at_n * 1.01,
        "far above: noise not explained": at_n / 2.5,
        "unknown": None,
        # reached at iteration 45: the fit stops at the next candidate, 46
        "reached between candidates": lowest[44],
        "never reached": lowest[LIMIT - 1] * 0.98,
    }[case]
    stop = expected_stop(lowest, variance)
    if case == "reached between candidates":
        assert lowest[43] > variance and stop == 46, "the planted crossing must lie past N"
    if case == "never reached":
        assert stop == LIMIT and variance * 2 >= at_n
    result = fit_tiles([tile()], SMALL, "cpu", [EXTENDED], noise_variances=[variance])[0]
    assert result.iterations == stop
    assert len(result.losses) == stop
    # Its output is the late-window mean of a fit stopped there, as in the stable mode.
    alone = fit_tile(tile(), DipParams(4, "16", 4, stop), "cpu",
                     FitOptions(seed=0, average_fraction=0.2, spike_factor=1.05))
    np.testing.assert_allclose(result.output, alone.output, atol=1e-6)
    np.testing.assert_array_equal(result.losses, alone.losses)


def test_each_network_of_a_batch_stops_on_its_own():
    params = DipParams(4, "16", 4, N)
    options = [EXTENDED, FitOptions(**{**EXTENDED.__dict__, "seed": 1})]
    plain = fit_tiles([tile(4), tile(5)], DipParams(4, "16", 4, LIMIT), "cpu",
                      [FitOptions(seed=0, average_fraction=0.2, spike_factor=1.05),
                       FitOptions(seed=1, average_fraction=0.2, spike_factor=1.05)])
    lowest = [np.minimum.accumulate(r.losses.astype(np.float64)) for r in plain]
    variances = [lowest[0][LIMIT - 1] * 0.98, lowest[1][N - 1] * 1.01]
    results = fit_tiles([tile(4), tile(5)], params, "cpu", options, noise_variances=variances)
    assert [r.iterations for r in results] == [LIMIT, N]
    assert [len(r.losses) for r in results] == [LIMIT, N]


@pytest.mark.parametrize("options, variances", [
    (FitOptions(seed=0, average_fraction=0.2), [1.0]),  # extension off
    (EXTENDED, None),  # nothing estimated
])
def test_without_the_extension_or_a_noise_estimate_the_fit_stops_at_n(options, variances):
    result = fit_tiles([tile()], SMALL, "cpu", [options], noise_variances=variances)[0]
    assert result.iterations == N and len(result.losses) == N


@pytest.mark.parametrize("case", ["runs to the limit", "stops at a candidate", "stops at N"])
def test_progress_counts_to_the_limit_and_ends_where_the_fit_stops(reference, case):
    variance = {"runs to the limit": reference[LIMIT - 1] * 0.98,
                "stops at a candidate": reference[44],
                "stops at N": reference[N - 1] * 1.01}[case]
    seen = []
    result = fit_tiles([tile()], SMALL, "cpu", [EXTENDED], noise_variances=[variance],
                       progress=lambda i, total: seen.append((i, total)))[0]
    stop = result.iterations
    # every iteration run is counted against the latest possible stop, so the fraction
    # only grows; a fit that stops before the limit says so with (stop, stop)
    assert seen[:stop] == [(i, LIMIT) for i in range(1, stop + 1)]
    assert seen[stop:] == ([] if stop == LIMIT else [(stop, stop)])
    assert stop == {"runs to the limit": LIMIT, "stops at a candidate": 46, "stops at N": N}[case]


@pytest.mark.parametrize("field, value", [("extend_fraction", -0.1), ("extend_fraction", 1.5),
                                          ("discrepancy_margin", 0.5)])
def test_bad_extension_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        FitOptions(**{field: value})


def test_the_noise_variance_of_a_tile_is_the_noise_level_function_over_its_pixels():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:256, :256]
    clean = 0.1 + 0.8 * (0.5 + 0.5 * np.sin(xx / 9.0) * np.cos(yy / 13.0))
    slope, intercept = 0.01, 0.0004  # Poisson-Gaussian on the [0, 1] scale
    noisy = clean + rng.normal(0, 1, clean.shape) * np.sqrt(slope * clean + intercept)
    unit = (noisy - noisy.min()) / (noisy.max() - noisy.min())
    windows = plane_tiles(unit.shape)
    variances, model = tile_noise_variances(unit, None, windows)
    truth = (slope * clean + intercept) / (noisy.max() - noisy.min()) ** 2
    for window, variance in zip(windows, variances):
        assert variance == pytest.approx(truth[window.slices].mean(), rel=0.25)
    assert isinstance(model, NoiseModel)
    stabilised = VarianceStabilised(unit)
    vst, _ = tile_noise_variances(stabilised.plane, stabilised, windows)
    assert vst == [pytest.approx(1 / (stabilised.high - stabilised.low) ** 2)] * len(windows)


def test_each_tile_of_a_large_plane_gets_its_own_noise_estimate(monkeypatch):
    """A stitched plane can have more noise on one side (gain, illumination): each tile is
    estimated on its own pixels, so memory stays bounded by a tile whatever the plane."""
    from autodip_watch.dip import plane as plane_module

    rng = np.random.default_rng(11)
    shape = (600, 1400)  # 2 x 4 overlapping tiles of at most 512 px
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    clean = 0.3 + 0.2 * np.sin(xx / 15.0) * np.cos(yy / 11.0)
    sigma = np.where(xx < 700, 0.02, 0.06)  # the right half three times as noisy
    noisy = clean + rng.normal(0, 1, shape) * sigma
    unit = (noisy - noisy.min()) / (noisy.max() - noisy.min())
    sizes = []
    real = plane_module.estimate_noise
    monkeypatch.setattr(plane_module, "estimate_noise",
                        lambda tile: sizes.append(tile.shape) or real(tile))
    windows = plane_tiles(shape)
    variances, reported = tile_noise_variances(unit, None, windows)
    assert len(windows) == 8 and reported is None  # tiles differ: no one plane model
    assert max(h * w for h, w in sizes) <= 512 * 512 and len(sizes) == 8
    scale = (noisy.max() - noisy.min()) ** 2
    # tiles wholly on one side (a tile across the edge mixes two noise levels, which a
    # robust estimator resolves towards the larger share of flat pixels)
    pure = [(w, v) for w, v in zip(windows, variances) if w.x1 <= 700 or w.x0 >= 700]
    assert len(pure) == 6  # 2 left, 4 right
    for window, variance in pure:
        truth = float(np.mean(sigma[window.slices] ** 2)) / scale
        assert variance == pytest.approx(truth, rel=0.3), window


@pytest.mark.parametrize("iterations, estimated", [(1, False), (2, False), (3, True), (8, True)])
def test_the_noise_is_estimated_only_where_the_fit_can_go_on(iterations, estimated):
    rng = np.random.default_rng(12)
    plane = (1000 + 200 * rng.random((32, 32))).astype(np.uint16)
    job = PlaneJob(plane, DipParams(4, "16", 4, iterations), EXTENDED)
    result = denoise_planes([job], SingleFitter("cpu"))[0]
    assert (result.noise is not None) == estimated
    assert iterations <= result.iterations[0] <= result.iterations[1] <= round(iterations * 1.25)


def test_a_plane_reports_the_iterations_its_fits_ran():
    rng = np.random.default_rng(8)
    plane = (1000 + 200 * rng.random((64, 64))).astype(np.uint16)
    job = PlaneJob(plane, DipParams(4, "16", 4, 8), EXTENDED, members=2)
    result = denoise_planes([job], SingleFitter("cpu"))[0]
    low, high = result.iterations
    assert 8 <= low <= high <= 10 and result.noise is not None
    paper = denoise_planes([PlaneJob(plane, DipParams(4, "16", 4, 8))], SingleFitter("cpu"))[0]
    assert paper.iterations == (8, 8) and paper.noise is None
    assert FitRequest(plane.astype(np.float32), DipParams(4, "16", 4, 8)).noise_variance is None


def test_a_calibration_state_key_ignores_the_run_time_extension(monkeypatch):
    """Calibration scores fixed stopping points, which the extension never changes: its
    settings must not make states saved before it (or with other values) start over."""
    import dataclasses
    import json

    from autodip_watch.calibration.fitting import settings_key
    from autodip_watch.dip import modes

    key = settings_key(40, 10, 0, False, mode=modes.STABLE)
    assert "extend_fraction" not in json.loads(key) and "discrepancy_margin" not in key
    assert json.loads(key)["average_fraction"] == 0.2 and json.loads(key)["members"] == 3
    original = modes.MODES[modes.STABLE]
    monkeypatch.setitem(modes.MODES, modes.STABLE, dataclasses.replace(
        original, extend_fraction=0.5, discrepancy_margin=3.0))
    assert settings_key(40, 10, 0, False, mode=modes.STABLE) == key
    # a setting that does change the scores does count
    monkeypatch.setitem(modes.MODES, modes.STABLE,
                        dataclasses.replace(original, average_fraction=0.3))
    assert settings_key(40, 10, 0, False, mode=modes.STABLE) != key


@pytest.mark.parametrize("mode, members", [("stable", 2), ("paper", 1)])
def test_provenance_and_report_say_how_far_the_fits_ran(tmp_path, mode, members):
    """A facility reading an output must see the iterations its fits really ran, not only
    the transferred count (the stable mode may go past it)."""
    import tifffile

    from autodip_watch.pipeline.denoise import denoise_file
    from autodip_watch.provenance import read_provenance
    from autodip_watch.settings.denoise import DenoiseSettings

    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[:64, :64]
    clean = 200 + 800 * np.exp(-((yy - 30) ** 2 + (xx - 30) ** 2) / 150.0)
    source = tmp_path / "cells.ome.tif"
    tifffile.imwrite(source, rng.poisson(np.stack([clean, clean[::-1]])).astype(np.uint16),
                     ome=True, metadata={"axes": "ZYX"})
    settings = DenoiseSettings(mode=mode, members=members, depth=4, width="16", skip=4,
                               iterations=8, microscope="widefield", specimen="nucleus",
                               device="cpu", table=None)
    report = denoise_file(source, settings, out=tmp_path / "out.ome.tif")
    spans = [plane.iterations_run for plane in report.planes]
    entries = read_provenance(report.output)[0]["entries"]
    assert entries["channel.0.iterations"] == "8"
    low, high = min(s[0] for s in spans), max(s[1] for s in spans)
    assert entries["channel.0.iterations_run"] == (str(low) if low == high else f"{low}-{high}")
    if mode == "paper":
        assert spans == [[8, 8], [8, 8]] and entries["channel.0.iterations_run"] == "8"
    else:
        assert 8 <= low <= high <= 10


@pytest.mark.parametrize("spans, shown", [
    ([], ""),  # a copied channel: nothing fitted
    ([(300, 300)], "300"),
    ([(300, 300), (300, 300)], "300"),
    ([(300, 315), (300, 375)], "300-375"),
    ([(345, 375), (300, 300)], "300-375"),
])
def test_a_channel_records_the_span_of_iterations_over_its_planes(spans, shown):
    from pathlib import Path

    from autodip_watch.provenance import ChannelRecord, SourceFile, provenance_entries

    record = ChannelRecord(0, "DAPI", "widefield", "nucleus", [], "denoise", "microscope",
                           "widefield")
    for span in spans:
        record.add_plane({"iterations": 300}, 1.0, iterations=span)
    entries = dict(provenance_entries(software="autodip-watch", version="0", torch_version="0",
                                      device="cpu", started="", finished="",
                                      sources=[SourceFile(Path("a.tif"), 1, "0" * 64, 0)],
                                      image_name=None, channels=[record], settings={}))
    assert entries["channel.0.iterations_run"] == shown


@pytest.mark.parametrize("ran, shown", [
    ("", "300 iterations, seed"),  # outputs made before the extension existed
    ("300", "300 iterations, seed"),
    ("300-375", "300 iterations (ran 300-375), seed"),
])
def test_the_preview_caption_says_how_far_the_fits_ran(ran, shown):
    from autodip_watch.preview import _channel_caption

    entries = {"channel.0.name": "DAPI", "channel.0.policy": "denoise",
               "channel.0.microscope": "widefield", "channel.0.specimen": "nucleus",
               "channel.0.group": "widefield/nucleus", "channel.0.level": "microscope",
               "channel.0.depth": "8", "channel.0.width": "asc", "channel.0.skip": "4",
               "channel.0.iterations": "300", "channel.0.seed": "0", "channel.0.seconds": "2"}
    if ran:
        entries["channel.0.iterations_run"] = ran
    assert shown in _channel_caption(entries, 0)


@pytest.mark.parametrize("stops, variance", [
    ([N + 1], "reached at N"),  # past N: the fit stops at N, so never reached
    ([LIMIT], "reached at N"),
    ([N + 1], None),  # no noise estimate: no extension either
    ([0], "reached at N"),
])
def test_stops_past_the_transferred_count_are_refused_before_the_fit(reference, stops,
                                                                      variance):
    """``stops`` score one run at several stopping points up to N (calibration); the
    extension past N must not widen what is accepted, or a stop the fit does not reach
    fails only after the whole fit, depending on where the extension stopped it."""
    variances = [reference[N - 1] * 1.01 if variance else None]
    seen = []
    with pytest.raises(ValueError, match=r"stop .* outside 1\.\." + str(N)):
        fit_tiles([tile()], SMALL, "cpu", [EXTENDED], stops=stops, noise_variances=variances,
                  progress=lambda i, total: seen.append(i))
    assert seen == []  # refused before the first iteration


def test_stops_up_to_n_still_score_an_extended_fit(reference):
    result = fit_tiles([tile()], SMALL, "cpu", [EXTENDED], stops=[N // 2, N],
                       noise_variances=[reference[LIMIT - 1] * 0.98])[0]
    assert result.iterations == LIMIT and sorted(result.stopped) == [N // 2, N]
    alone = fit_tile(tile(), SMALL, "cpu",
                     FitOptions(seed=0, average_fraction=0.2, spike_factor=1.05))
    np.testing.assert_allclose(result.stopped[N], alone.output, atol=1e-6)


def test_a_stable_calibration_table_does_not_claim_the_run_time_extension(tmp_path):
    """Calibration scores fixed stopping points; the table's provenance says how it
    scored, so it must not list the extension, which never acts there (as its state
    key does not)."""
    import json
    import tomllib

    from autodip_watch.calibration.fitting import RUN_TIME_ONLY, settings_key
    from autodip_watch.calibration.grid import CalibrationGrid
    from autodip_watch.calibration.run import calibrate
    from autodip_watch.dip.modes import STABLE
    from helpers.pairs import make_pairs

    grid = CalibrationGrid(depths=(4,), widths=("16",), skips=(4,), max_iterations=2, every=1)
    calibrate(make_pairs(tmp_path / "pairs"), tmp_path / "t.toml", grid, device="cpu",
              with_lpips=False, mode=STABLE, members=1)
    recorded = tomllib.loads((tmp_path / "t.toml").read_text())["provenance"]["fit_mode"]
    assert recorded["name"] == STABLE and recorded["members"] == 1
    assert recorded["average_fraction"] == 0.2  # what does shape the scores is there
    assert not set(RUN_TIME_ONLY) & set(recorded), recorded
    key = json.loads(settings_key(2, 1, 0, False, STABLE, 1))
    assert {k: v for k, v in recorded.items() if k != "name"} == {
        k: v for k, v in key.items() if k in recorded and k != "name"}
