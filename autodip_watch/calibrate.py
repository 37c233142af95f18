"""AUTO-DIP calibration on a site's own noisy / ground-truth pairs (paper §II-B, §III-A).

For every pair and every configuration of the grid (depth x width x skip) DIP is fitted
once for ``max_iterations`` iterations, and the output is scored against the ground
truth every ``every`` iterations of that same run. Each (pair, configuration) result
is stored in SQLite as soon as it finishes, so an interrupted calibration continues
where it stopped. From the stored scores we pick, per image and per group, the best
(configuration, iteration) for every measure and write a calibration table in the
format of the shipped one (``calibration/fmd_bpae.toml``), plus the calibration
images that metric-based transfer (:mod:`autodip_watch.similarity`) compares with.

The unit of work is :func:`run_fit`, a pure function of one :class:`FitTask`; the
local executor runs tasks one after the other on one device, and a Dask executor can
submit one task per fit without touching anything else here.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import tifffile
import tomli_w
import torch
from PIL import Image

from . import __version__
from .dip.fit import FitOptions, fit_tile, fit_tiles
from .dip.modes import PAPER, fit_mode
from .dip.plane import VarianceStabilised, member_seed
from .dip.params import BASELINE, DEPTHS, SKIPS, WIDTHS, DipParams, normalise_width
from .dip.tiling import TILE_SIZE
from .metrics import (LOWER_IS_BETTER, alexnet_checkpoint_path, evaluation_pair, file_sha256,
                      get_lpips, mean_gradient, quality)
from .transfer import UNKNOWN, CalibrationTable, canonical_microscope, canonical_specimen

#: Measures recorded at every snapshot (the columns of the SQLite ``snapshots`` table).
MEASURES = ("mse", "mae", "psnr", "ssim", "lpips")
#: The paper's combined criterion: lowest sum of LPIPS rank and PSNR rank.
RANK_SUM = "lpips_psnr"
#: Table metrics in the order they are written; lpips ones only when LPIPS was computed.
TABLE_METRICS = ("mae", "mse", "psnr", "ssim", "lpips", RANK_SUM)
METRIC_MEANING = {
    "mae": "lowest mean absolute error to the ground truth",
    "mse": "lowest mean squared error to the ground truth",
    "psnr": "highest PSNR to the ground truth",
    "ssim": "highest SSIM to the ground truth",
    "lpips": "lowest LPIPS (AlexNet) to the ground truth",
    RANK_SUM: "lowest sum of LPIPS rank and PSNR rank (the paper's choice)",
}
PAIRS_CSV = "pairs.csv"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
NOISY_TAGS = ("_noisy", "_raw")
TRUTH_TAGS = ("_gt", "_clean")
MATCH_MODES = ("affine", "none")
#: Planes smaller than this cannot be scored with SSIM's 11x11 window.
MIN_SIDE = 16

GROUP_RULE = ("per group and measure, the (configuration, iteration) with the best mean "
              "over the group's images; for lpips_psnr the mean of the per-image rank sums")
RANK_RULE = ("per image, over all (configuration, iteration) candidates: LPIPS ranked "
             "ascending plus PSNR ranked descending, tied values share their average rank; "
             "lowest sum wins")
TIE_RULE = ("equal scores: fewer iterations first, then depth, width (16..512, asc) and "
            "skip in ascending grid order")
NORMALISATION = ("noisy plane min-max to [0, 1]; ground truth affinely fitted onto the noisy "
                 "plane (least squares, unless the pair says match = none), then rescaled "
                 "with the noisy plane's min and max, not clipped; crops are cut after this, "
                 "from the whole plane's scale, like the daemon's tiles; PSNR with data range 1")


class CalibrationError(ValueError):
    """Bad pairs, grid or state; the message says what to fix."""


class CalibrationInterrupted(RuntimeError):
    """Stopped on request (``stop_after``); the finished fits are in the state file."""


# --------------------------------------------------------------------------- pairs

@dataclass(frozen=True)
class CalibrationPair:
    """One calibration image: a noisy plane, its ground truth and its group."""

    name: str
    noisy: Path
    ground_truth: Path
    microscope: str
    specimen: str
    match: str = "affine"
    channel: int | None = None  # for multi-channel files: which channel (C or RGB sample)


def _tagged_stem(path: Path, tags: Sequence[str]) -> str | None:
    stem = path.stem
    for tag in tags:
        if stem.lower().endswith(tag):
            return stem[: -len(tag)]
    return None


def load_pairs(source: str | Path, match: str = "affine") -> list[CalibrationPair]:
    """Read the calibration pairs from a CSV file or a folder.

    CSV columns: ``noisy``, ``ground_truth`` (or ``gt``), ``microscope``, ``specimen``;
    optional ``name``, ``match`` (affine / none) and ``channel``. Relative paths are
    relative to the CSV's folder. A folder either holds a ``pairs.csv`` or follows the
    layout ``<microscope>/<specimen>/<name>_noisy.<ext>`` + ``<name>_gt.<ext>``
    (``_raw`` and ``_clean`` are accepted too; ext is tif, tiff or png).
    """
    source = Path(source)
    if match not in MATCH_MODES:
        raise CalibrationError(f"match must be one of {MATCH_MODES}, got {match!r}")
    if source.is_file():
        pairs = _pairs_from_csv(source, match)
    elif source.is_dir():
        csv_path = source / PAIRS_CSV
        pairs = _pairs_from_csv(csv_path, match) if csv_path.is_file() else _pairs_from_folder(
            source, match)
    else:
        raise CalibrationError(f"calibration pairs {source} do not exist")
    if not pairs:
        raise CalibrationError(f"no calibration pairs found in {source}; see docs/calibration.md "
                               f"for the folder layout or write a {PAIRS_CSV}")
    names = [pair.name for pair in pairs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise CalibrationError(f"pair names must be unique; repeated: {', '.join(duplicates)}")
    for pair in pairs:
        for path in (pair.noisy, pair.ground_truth):
            if not path.is_file():
                raise CalibrationError(f"pair {pair.name!r}: file {path} does not exist")
    return pairs


def _pairs_from_csv(path: Path, default_match: str) -> list[CalibrationPair]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = {name.strip().lower() for name in reader.fieldnames or []}
        truth_column = "ground_truth" if "ground_truth" in columns else "gt"
        missing = {"noisy", truth_column, "microscope", "specimen"} - columns
        if missing:
            raise CalibrationError(f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                                   f"need noisy, ground_truth, microscope, specimen")
        pairs = []
        for line, raw in enumerate(reader, start=2):
            row = {key.strip().lower(): (value or "").strip() for key, value in raw.items() if key}
            if not row.get("noisy"):
                continue  # blank line
            noisy = (path.parent / row["noisy"]).resolve()
            channel_text = row.get("channel", "")
            match = row.get("match") or default_match
            if match not in MATCH_MODES:
                raise CalibrationError(f"{path}:{line}: match must be affine or none, got {match!r}")
            try:
                channel = int(channel_text) if channel_text else None
            except ValueError:
                raise CalibrationError(f"{path}:{line}: channel must be an integer") from None
            name = row.get("name") or Path(row["noisy"]).stem + (
                f"_c{channel}" if channel is not None else "")
            pairs.append(CalibrationPair(
                name=name, noisy=noisy, ground_truth=(path.parent / row[truth_column]).resolve(),
                microscope=canonical_microscope(row["microscope"]),
                specimen=canonical_specimen(row["specimen"]), match=match, channel=channel))
    return pairs


def _pairs_from_folder(folder: Path, match: str) -> list[CalibrationPair]:
    pairs = []
    unmatched = []
    for noisy in sorted(folder.glob("*/*/*")):
        if noisy.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        base = _tagged_stem(noisy, NOISY_TAGS)
        if base is None:
            continue
        truths = [noisy.with_name(base + tag + suffix) for tag in TRUTH_TAGS
                  for suffix in IMAGE_SUFFIXES]
        truth = next((candidate for candidate in truths if candidate.is_file()), None)
        if truth is None:
            unmatched.append(str(noisy))
            continue
        specimen_dir, microscope_dir = noisy.parent, noisy.parent.parent
        pairs.append(CalibrationPair(
            name=f"{microscope_dir.name}/{specimen_dir.name}/{base}", noisy=noisy.resolve(),
            ground_truth=truth.resolve(), microscope=canonical_microscope(microscope_dir.name),
            specimen=canonical_specimen(specimen_dir.name), match=match))
    if unmatched:
        raise CalibrationError("noisy image(s) without a ground truth (<name>_gt.<ext> beside "
                               "them): " + ", ".join(unmatched))
    return pairs


def read_plane(path: Path, channel: int | None = None) -> np.ndarray:
    """One 2-D plane of an image file; ``channel`` picks a channel of a multi-channel file.

    PNG palette images keep their index as the intensity (the Hagen et al. trap).
    """
    if path.suffix.lower() == ".png":
        with Image.open(path) as image:
            array = np.array(image)
        channel_axis = -1
    else:
        array = tifffile.imread(path)
        channel_axis = -1 if array.ndim == 3 and array.shape[-1] in (3, 4) else 0
    array = np.squeeze(array)
    if array.ndim == 2:
        if channel not in (None, 0):
            raise CalibrationError(f"{path} has one channel; channel {channel} does not exist")
        return array
    if array.ndim != 3:
        raise CalibrationError(f"{path}: expected a 2-D image or one with channels, got shape "
                               f"{array.shape}; calibrate on single planes")
    if channel is None:
        raise CalibrationError(f"{path} has {array.shape[channel_axis]} channels; say which one "
                               f"in the pairs CSV's channel column")
    if not 0 <= channel < array.shape[channel_axis]:
        raise CalibrationError(f"{path}: channel {channel} out of range "
                               f"(0..{array.shape[channel_axis] - 1})")
    return np.take(array, channel, axis=channel_axis)


def centre_crop_box(shape: tuple[int, int], size: int | None) -> tuple[int, int, int, int] | None:
    """``(y, x, height, width)`` of the centred crop, or None when nothing is cut."""
    height, width = shape
    crop_h = min(height, size) if size else height
    crop_w = min(width, size) if size else width
    if (crop_h, crop_w) == (height, width):
        return None
    return ((height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w)


@dataclass
class PreparedPair:
    """A pair on the evaluation scale, ready to fit: what a fit task ships to a worker."""

    name: str
    microscope: str
    specimen: str
    noisy: np.ndarray  # float32 in [0, 1]
    truth: np.ndarray  # float32, on the noisy plane's scale
    noisy_path: str
    truth_path: str
    noisy_sha256: str
    truth_sha256: str
    match: str
    channel: int | None
    crop: tuple[int, int, int, int] | None

    @property
    def key(self) -> str:
        """Identity of the pixels being scored: file contents, channel, crop and matching."""
        text = json.dumps([self.noisy_sha256, self.truth_sha256, self.channel,
                           list(self.crop) if self.crop else None, self.match])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.noisy.shape)  # type: ignore[return-value]


def prepare_pair(pair: CalibrationPair, crop: int | None = None) -> PreparedPair:
    """Read, crop and normalise one pair.

    Planes larger than the denoiser's 512 px tile are centre-cropped to it (the
    daemon fits 512 px tiles, so that is the size the optimum is for); ``crop``
    cuts a smaller centred square, e.g. to calibrate faster.
    """
    noisy = read_plane(pair.noisy, pair.channel)
    truth = read_plane(pair.ground_truth, pair.channel)
    if noisy.shape != truth.shape:
        raise CalibrationError(f"pair {pair.name!r}: noisy {noisy.shape} and ground truth "
                               f"{truth.shape} differ in shape")
    try:
        noisy01, truth01 = evaluation_pair(noisy, truth, pair.match)
    except ValueError as error:
        raise CalibrationError(f"pair {pair.name!r}: {error}") from None
    # Cut after normalising the whole plane: the daemon normalises a plane once and
    # then fits its tiles, so a crop is scored on the scale its tile would have.
    box = centre_crop_box(noisy.shape, min(crop or TILE_SIZE, TILE_SIZE))
    if box is not None:
        y, x, height, width = box
        noisy01 = np.ascontiguousarray(noisy01[y:y + height, x:x + width])
        truth01 = np.ascontiguousarray(truth01[y:y + height, x:x + width])
    if min(noisy01.shape) < MIN_SIDE:
        raise CalibrationError(f"pair {pair.name!r}: plane {noisy01.shape} is too small "
                               f"(at least {MIN_SIDE} px a side)")
    return PreparedPair(pair.name, pair.microscope, pair.specimen, noisy01, truth01,
                        str(pair.noisy), str(pair.ground_truth), file_sha256(pair.noisy),
                        file_sha256(pair.ground_truth), pair.match, pair.channel, box)


# --------------------------------------------------------------------------- grid

@dataclass(frozen=True)
class GridPoint:
    """One network shape of the grid; the iterations are the snapshots of its run."""

    depth: int
    width: str
    skip: int

    @property
    def key(self) -> str:
        return f"d{self.depth}/w{self.width}/s{self.skip}"

    @classmethod
    def from_key(cls, key: str) -> "GridPoint":
        depth, width, skip = key.split("/")
        return cls(int(depth[1:]), width[1:], int(skip[1:]))


@dataclass(frozen=True)
class CalibrationGrid:
    """The search space: depths x widths x skips, scored every ``every`` iterations."""

    depths: tuple[int, ...] = DEPTHS
    widths: tuple[str, ...] = WIDTHS
    skips: tuple[int, ...] = SKIPS
    max_iterations: int = 3000
    every: int = 100

    def __post_init__(self) -> None:
        try:
            widths = tuple(dict.fromkeys(normalise_width(w) for w in self.widths))
        except ValueError as error:
            raise CalibrationError(str(error)) from None
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "depths", tuple(dict.fromkeys(int(d) for d in self.depths)))
        object.__setattr__(self, "skips", tuple(dict.fromkeys(int(s) for s in self.skips)))
        if not self.depths or not self.widths or not self.skips:
            raise CalibrationError("the grid needs at least one depth, width and skip")
        bad_depths = [d for d in self.depths if d not in DEPTHS]
        if bad_depths:
            raise CalibrationError(f"depths must be among {DEPTHS}, got {bad_depths}")
        bad_skips = [s for s in self.skips if s not in SKIPS]
        if bad_skips:
            raise CalibrationError(f"skips must be among {SKIPS}, got {bad_skips}")
        if self.every < 1 or self.max_iterations < 1:
            raise CalibrationError("max_iterations and every must be positive")
        if self.max_iterations % self.every:
            raise CalibrationError(f"max_iterations ({self.max_iterations}) must be a multiple "
                                   f"of every ({self.every})")

    def points(self) -> list[GridPoint]:
        """Grid points in canonical order (depth, width as in WIDTHS, skip)."""
        return [GridPoint(d, w, s) for d in sorted(self.depths)
                for w in sorted(self.widths, key=WIDTHS.index) for s in sorted(self.skips)]

    @property
    def iterations(self) -> list[int]:
        return list(range(self.every, self.max_iterations + 1, self.every))

    def describe(self) -> str:
        widths = ",".join(sorted(self.widths, key=WIDTHS.index))
        depths = ",".join(str(d) for d in sorted(self.depths))
        skips = ",".join(str(s) for s in sorted(self.skips))
        return (f"depth {{{depths}}} x width {{{widths}}} x skip {{{skips}}} x iterations "
                f"{self.every}..{self.max_iterations} step {self.every}")

    def as_dict(self) -> dict:
        return {"depths": sorted(self.depths), "widths": sorted(self.widths, key=WIDTHS.index),
                "skips": sorted(self.skips), "max_iterations": self.max_iterations,
                "every": self.every}


def parse_list(text: str | Sequence | None, kind: Callable = str) -> tuple | None:
    """``"4,5"`` or ``[4, 5]`` -> ``(4, 5)``; None stays None (use the default)."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        return tuple(kind(str(item).strip()) for item in items if str(item).strip())
    except ValueError as error:
        raise CalibrationError(f"cannot read {text!r}: {error}") from None


# --------------------------------------------------------------------------- one fit

@dataclass
class FitTask:
    """Everything one fit needs; picklable, so an executor can ship it to a worker."""

    pair: PreparedPair
    point: GridPoint
    max_iterations: int
    every: int
    seed: int = 0
    with_lpips: bool = True
    mode: str = PAPER
    members: int | None = None  # stable mode: ensemble size (None: the mode's for the device)


def settings_key(max_iterations: int, every: int, seed: int, with_lpips: bool,
                 mode: str = PAPER, members: int | None = None) -> str:
    """What, besides the pixels and the shape, decides a fit's scores (state key).
    Paper-mode keys are those of earlier versions, so old states resume."""
    options = FitOptions(seed=seed)
    key = {"max_iterations": max_iterations, "every": every, "seed": seed,
           "lpips": with_lpips, "learning_rate": options.learning_rate,
           "reg_noise_std": options.reg_noise_std, "ema": options.ema_weight}
    if mode != PAPER:
        key.update(fit_mode(mode).describe("cpu", members))
        key["mode"] = mode
    return json.dumps(key, sort_keys=True)


def run_fit(pair: PreparedPair, point: GridPoint, max_iterations: int, every: int,
            device: torch.device | str = "cpu", seed: int = 0, with_lpips: bool = True,
            progress: Callable[[int, int], None] | None = None, mode: str = PAPER,
            members: int | None = None) -> list[dict]:
    """Fit DIP once and score its output every ``every`` iterations of that run.

    Returns one row per snapshot: ``{"iteration", "mse", "mae", "psnr", "ssim",
    "lpips"}`` (lpips None when ``with_lpips`` is false). Pure apart from the LPIPS
    network, which is loaded once per process and device. In ``stable`` mode
    (``dip/modes.py``) the output scored at iteration i is what a stable-mode fit stopped
    at i returns: the ensemble's mean of the late-window means, mapped back from the
    variance-stabilised domain; the ensemble's networks are fitted as one batch.
    """
    params = DipParams(point.depth, point.width, point.skip, max_iterations)
    lpips_metric = get_lpips(device) if with_lpips else None
    truth = pair.truth
    truth_on_device = torch.from_numpy(truth).to(device) if lpips_metric is not None else None
    rows: list[dict] = []

    def score(iteration: int, output: torch.Tensor) -> None:
        clipped = output.detach().float().clamp(0.0, 1.0)
        scores = quality(clipped.cpu().numpy(), truth, None)
        if lpips_metric is not None:
            scores["lpips"] = lpips_metric(clipped, truth_on_device)
        rows.append({"iteration": iteration, **scores})

    if mode == PAPER:
        fit_tile(pair.noisy, params, device, FitOptions(seed=seed), progress=progress,
                 snapshot=score, snapshot_every=every)
        return rows
    chosen = fit_mode(mode)
    count = members if members is not None else chosen.members(torch.device(device).type)
    stabilised = VarianceStabilised(pair.noisy) if chosen.vst else None
    plane = stabilised.plane if stabilised is not None else pair.noisy
    options = [chosen.fit_options(FitOptions(seed=member_seed(seed, m))) for m in range(count)]
    stops = list(range(every, max_iterations + 1, every))
    results = fit_tiles([np.asarray(plane, dtype=np.float32)] * count, params, device, options,
                        progress=progress, stops=stops)
    for stop in stops:
        mean = np.mean([result.stopped[stop] for result in results], axis=0)
        if stabilised is not None:
            mean = stabilised.back(mean)
        score(stop, torch.from_numpy(np.asarray(mean, dtype=np.float32)).to(device))
    return rows


@dataclass
class FitOutcome:
    rows: list[dict]
    seconds: float
    device: str


def run_fit_task(task: FitTask, device: torch.device | str = "cpu",
                 progress: Callable[[int, int], None] | None = None) -> FitOutcome:
    """:func:`run_fit` on a task, timed: the function a Dask executor would submit."""
    started = time.perf_counter()
    rows = run_fit(task.pair, task.point, task.max_iterations, task.every, device, task.seed,
                   task.with_lpips, progress, task.mode, task.members)
    return FitOutcome(rows, time.perf_counter() - started, str(device))


#: An executor runs tasks and yields (task, outcome) as each finishes, in any order.
Executor = Callable[[Sequence[FitTask], Callable[[FitTask, int, int], None] | None],
                    Iterator[tuple[FitTask, FitOutcome]]]


def local_executor(device: torch.device | str = "cpu") -> Executor:
    """Run the tasks one after the other on ``device`` (the default executor)."""

    def execute(tasks: Sequence[FitTask],
                progress: Callable[[FitTask, int, int], None] | None = None
                ) -> Iterator[tuple[FitTask, FitOutcome]]:
        for task in tasks:
            callback = None
            if progress is not None:
                def callback(iteration: int, total: int, _task: FitTask = task) -> None:
                    progress(_task, iteration, total)
            yield task, run_fit_task(task, device, callback)

    return execute


# --------------------------------------------------------------------------- state

class CalibrationState:
    """SQLite store of finished fits: one row per fit, one per (fit, snapshot).

    A fit and its snapshots are written in one transaction, so a run killed mid-fit
    leaves either the whole fit or none of it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.connection = sqlite3.connect(self.path, timeout=30)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.executescript("""
            CREATE TABLE IF NOT EXISTS fits (
                image_key TEXT NOT NULL, config TEXT NOT NULL, settings TEXT NOT NULL,
                image_name TEXT, device TEXT, seconds REAL, finished TEXT,
                PRIMARY KEY (image_key, config, settings));
            CREATE TABLE IF NOT EXISTS snapshots (
                image_key TEXT NOT NULL, config TEXT NOT NULL, settings TEXT NOT NULL,
                iteration INTEGER NOT NULL, mse REAL, mae REAL, psnr REAL, ssim REAL,
                lpips REAL, PRIMARY KEY (image_key, config, settings, iteration));
        """)
        self.connection.commit()

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "CalibrationState":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def done(self, settings: str) -> set[tuple[str, str]]:
        """(image_key, config) of every finished fit made with ``settings``."""
        cursor = self.connection.execute(
            "SELECT image_key, config FROM fits WHERE settings = ?", (settings,))
        return {(image, config) for image, config in cursor}

    def record(self, task: FitTask, outcome: FitOutcome, settings: str) -> None:
        finished = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with self.connection:
            self.connection.execute(
                "INSERT OR REPLACE INTO fits VALUES (?, ?, ?, ?, ?, ?, ?)",
                (task.pair.key, task.point.key, settings, task.pair.name, outcome.device,
                 outcome.seconds, finished))
            self.connection.executemany(
                "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(task.pair.key, task.point.key, settings, row["iteration"],
                  *(row.get(measure) for measure in MEASURES)) for row in outcome.rows])

    def scores(self, image_key: str, settings: str) -> dict["Candidate", dict[str, float]]:
        """Every stored (configuration, iteration) candidate of one image with its scores."""
        cursor = self.connection.execute(
            f"SELECT config, iteration, {', '.join(MEASURES)} FROM snapshots "
            "WHERE image_key = ? AND settings = ?", (image_key, settings))
        result = {}
        for config, iteration, *values in cursor:
            point = GridPoint.from_key(config)
            candidate = Candidate(point.depth, point.width, point.skip, int(iteration))
            result[candidate] = {m: v for m, v in zip(MEASURES, values) if v is not None}
        return result

    def seconds(self, settings: str, image_keys: Iterable[str]) -> float:
        keys = list(image_keys)
        if not keys:
            return 0.0
        marks = ",".join("?" * len(keys))
        cursor = self.connection.execute(
            f"SELECT COALESCE(SUM(seconds), 0) FROM fits WHERE settings = ? AND image_key IN ({marks})",
            (settings, *keys))
        return float(cursor.fetchone()[0])


# --------------------------------------------------------------------------- selection

@dataclass(frozen=True)
class Candidate:
    """A (configuration, stopping iteration) pair: one point of the search."""

    depth: int
    width: str
    skip: int
    iteration: int

    def tie_key(self) -> tuple[int, int, int, int]:
        """Order among equal scores: fewer iterations (faster) first, then grid order."""
        return (self.iteration, self.depth, WIDTHS.index(self.width), self.skip)

    def params(self) -> DipParams:
        return DipParams(self.depth, self.width, self.skip, self.iteration)

    @property
    def config(self) -> str:
        return GridPoint(self.depth, self.width, self.skip).key


def average_ranks(values: Sequence[float], descending: bool = False) -> np.ndarray:
    """Ranks from 1 (best); tied values share the mean of the ranks they span.

    NaN counts as the worst value, so a failed score never wins.
    """
    array = np.asarray(values, dtype=np.float64)
    keyed = -array if descending else array.copy()
    keyed[np.isnan(keyed)] = np.inf
    order = np.argsort(keyed, kind="stable")
    ranks = np.empty(len(keyed), dtype=np.float64)
    sorted_values = keyed[order]
    start = 0
    while start < len(sorted_values):
        stop = start + 1
        while stop < len(sorted_values) and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = (start + 1 + stop) / 2.0  # mean of ranks start+1..stop
        start = stop
    return ranks


def criterion(scores: dict[Candidate, dict[str, float]], metric: str
              ) -> tuple[dict[Candidate, float], bool]:
    """Per-candidate value of ``metric`` for one image, and whether lower is better.

    For ``lpips_psnr`` the value is the candidate's rank sum over all of the image's
    candidates (the paper's combined measure).
    """
    if metric == RANK_SUM:
        candidates = list(scores)
        lpips_ranks = average_ranks([scores[c].get("lpips", math.nan) for c in candidates])
        psnr_ranks = average_ranks([scores[c].get("psnr", math.nan) for c in candidates],
                                   descending=True)
        return {c: float(a + b) for c, a, b in zip(candidates, lpips_ranks, psnr_ranks)}, True
    if metric not in LOWER_IS_BETTER:
        raise CalibrationError(f"unknown metric {metric!r}")
    return {c: float(s.get(metric, math.nan)) for c, s in scores.items()}, LOWER_IS_BETTER[metric]


def select(values: dict[Candidate, float], lower_is_better: bool) -> tuple[Candidate, float]:
    """The best candidate; exact ties go to the smallest :meth:`Candidate.tie_key`."""
    if not values:
        raise CalibrationError("no candidates to choose from")
    best: tuple[Candidate, float] | None = None
    for candidate in sorted(values, key=Candidate.tie_key):
        value = values[candidate]
        if math.isnan(value):
            continue
        if best is None or (value < best[1] if lower_is_better else value > best[1]):
            best = (candidate, value)
    if best is None:
        raise CalibrationError("every candidate scored NaN")
    return best


def group_optimum(images: Sequence[dict[Candidate, dict[str, float]]], metric: str,
                  restrict: Callable[[Candidate], bool] | None = None) -> tuple[Candidate, float]:
    """The candidate best on average over ``images`` (each: candidate -> scores).

    The per-image criterion (the value, or for ``lpips_psnr`` the rank sum, ranked over
    that image's full grid) is averaged over the images, over the candidates every
    image has; ``restrict`` limits the choice (e.g. to the original DIP architecture)
    without changing the ranks.
    """
    if not images:
        raise CalibrationError("a group needs at least one image")
    per_image = []
    lower = True
    for scores in images:
        values, lower = criterion(scores, metric)
        per_image.append(values)
    common = set(per_image[0]).intersection(*per_image[1:])
    if restrict is not None:
        common = {c for c in common if restrict(c)}
    means = {c: float(np.mean([values[c] for values in per_image])) for c in common}
    return select(means, lower)


def image_optimum(scores: dict[Candidate, dict[str, float]], metric: str) -> tuple[Candidate, float]:
    """The best candidate of one image for ``metric``."""
    return group_optimum([scores], metric)


def group_members(pairs: Sequence[PreparedPair]) -> dict[tuple[str, str], list[int]]:
    """Indices of the pairs in every group: (level, group) -> [pair index].

    Levels follow the table: ``microscope_specimen`` (group "m/s"), ``microscope``,
    ``specimen`` and ``all``; an unknown label leaves the image out of that level only.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for index, pair in enumerate(pairs):
        keys = [("all", "all")]
        if pair.microscope != UNKNOWN:
            keys.append(("microscope", pair.microscope))
        if pair.specimen != UNKNOWN:
            keys.append(("specimen", pair.specimen))
        if UNKNOWN not in (pair.microscope, pair.specimen):
            keys.append(("microscope_specimen", f"{pair.microscope}/{pair.specimen}"))
        for key in keys:
            groups.setdefault(key, []).append(index)
    return groups


# --------------------------------------------------------------------------- table

def _rounded(value: float, digits: int = 6) -> float:
    return float(round(value, digits)) if math.isfinite(value) else float(value)


def _entry(candidate: Candidate, score: float, **extra) -> dict:
    return {"depth": candidate.depth, "width": candidate.width, "skip": candidate.skip,
            "iterations": candidate.iteration, "score": _rounded(score), **extra}


def _is_baseline(candidate: Candidate) -> bool:
    return (candidate.depth, candidate.width, candidate.skip) == (
        BASELINE.depth, BASELINE.width, BASELINE.skip)


def build_metric_tables(pairs: Sequence[PreparedPair],
                        scores: Sequence[dict[Candidate, dict[str, float]]],
                        metrics: Sequence[str]) -> dict:
    """The ``[metrics]`` section: per metric, the best configuration of every group."""
    groups = group_members(pairs)
    has_baseline = any(_is_baseline(c) for c in scores[0])
    tables: dict[str, dict] = {}
    for metric in metrics:
        table: dict = {"description": METRIC_MEANING[metric]}
        for (level, group), members in sorted(groups.items()):
            images = [scores[i] for i in members]
            best, value = group_optimum(images, metric)
            extra: dict = {"images": len(members)}
            if has_baseline:
                # Best stop of the original DIP architecture in this group, for comparison.
                baseline, _ = group_optimum(images, metric, restrict=_is_baseline)
                extra["original_architecture_iterations"] = baseline.iteration
            entry = _entry(best, value, **extra)
            if level == "all":
                table["all"] = entry
                if has_baseline:
                    baseline, baseline_value = group_optimum(images, metric, restrict=_is_baseline)
                    table["original_architecture"] = _entry(baseline, baseline_value,
                                                            images=len(members))
            elif level == "microscope_specimen":
                microscope, specimen = group.split("/")
                table.setdefault(level, {}).setdefault(microscope, {})[specimen] = entry
            else:
                table.setdefault(level, {})[group] = entry
        tables[metric] = table
    return tables


def image_entries(pairs: Sequence[PreparedPair],
                  scores: Sequence[dict[Candidate, dict[str, float]]],
                  metrics: Sequence[str], base: Path | None = None) -> list[dict]:
    """The ``[[images]]`` section: each calibration image, its group and per-metric optima."""
    entries = []
    for index, (pair, image_scores) in enumerate(zip(pairs, scores)):
        optimum = {}
        for metric in metrics:
            best, value = image_optimum(image_scores, metric)
            at_best = {m: _rounded(v) for m, v in image_scores[best].items()}
            optimum[metric] = _entry(best, value, **at_best)
        entry = {"name": pair.name, "microscope": pair.microscope, "specimen": pair.specimen,
                 "noisy": _display_path(pair.noisy_path, base),
                 "noisy_sha256": pair.noisy_sha256,
                 "ground_truth": _display_path(pair.truth_path, base),
                 "ground_truth_sha256": pair.truth_sha256, "match": pair.match,
                 "shape": list(pair.shape), "sidecar_index": index,
                 "mean_gradient": _rounded(mean_gradient(pair.noisy), 8)}
        if pair.channel is not None:
            entry["channel"] = pair.channel
        if pair.crop is not None:
            entry["crop"] = list(pair.crop)
        entry["optimum"] = optimum
        entries.append(entry)
    return entries


def _display_path(path: str, base: Path | None) -> str:
    """Paths relative to the pairs' folder where possible: tables move between machines."""
    if base is None:
        return path
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path


def sidecar_path(table_path: Path) -> Path:
    """``site.toml`` -> ``site.images.tif``: the noisy calibration planes, for nearest-* transfer."""
    return table_path.with_name(table_path.stem + ".images.tif")


def default_state_path(table_path: Path) -> Path:
    return table_path.with_name(table_path.stem + ".calibration.sqlite")


def _atomic_write_bytes(path: Path, write: Callable[[str], None]) -> None:
    from .outputs import create_temporary

    # Mode 0666 less the umask, like any file a user creates (mkstemp would give 0600).
    descriptor, temp = create_temporary(path)
    os.close(descriptor)
    try:
        write(str(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_sidecar(path: Path, pairs: Sequence[PreparedPair]) -> str:
    """Write the normalised noisy planes, one TIFF series each; returns the file's sha256."""

    def write(temp: str) -> None:
        with tifffile.TiffWriter(temp) as writer:
            for pair in pairs:
                writer.write(pair.noisy.astype(np.float32), photometric="minisblack",
                             metadata={"axes": "YX", "name": pair.name})

    _atomic_write_bytes(path, write)
    return file_sha256(path)


def versions() -> dict:
    from importlib import metadata

    try:
        lpips_version = metadata.version("lpips")
    except metadata.PackageNotFoundError:
        lpips_version = "not installed"
    return {"autodip_watch": __version__, "torch": torch.__version__, "lpips": lpips_version,
            "python": platform.python_version()}


# --------------------------------------------------------------------------- driver

@dataclass
class CalibrationReport:
    table: Path
    sidecar: Path
    state: Path
    images: int
    fits_total: int
    fits_run: int
    fits_resumed: int
    fit_seconds: float
    seconds: float
    device: str
    metrics: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {key: (str(value) if isinstance(value, Path) else value)
                for key, value in self.__dict__.items()}


#: progress(event, info): "start" {total_fits, resumed, iterations}; "iteration"
#: {task, iteration, total}; "fit" {task, seconds}.
CalibrationProgress = Callable[[str, dict], None]


def calibrate(pairs_source: str | Path, out: str | Path, grid: CalibrationGrid = CalibrationGrid(),
              state_path: str | Path | None = None, device: torch.device | str = "cpu",
              seed: int = 0, crop: int | None = None, with_lpips: bool = True,
              match: str = "affine", stop_after: int | None = None,
              progress: CalibrationProgress | None = None,
              executor: Executor | None = None, mode: str = PAPER,
              members: int | None = None) -> CalibrationReport:
    """Run (or resume) a calibration and write its table and calibration images.

    ``mode`` is the fit mode the grid is scored in (``dip/modes.py``): ``paper`` (the
    AUTO-DIP calibration) or ``stable``, with ``members`` fits per image in the latter.

    ``stop_after`` stops after that many new fits (raising
    :class:`CalibrationInterrupted`), which is how tests interrupt a run.
    """
    started = time.perf_counter()
    out = Path(out)
    pairs_source = Path(pairs_source)
    if out.suffix.lower() != ".toml":
        raise CalibrationError(f"--out must be a .toml file, got {out}")
    if not out.parent.is_dir():
        raise CalibrationError(f"folder {out.parent} for the table does not exist")
    device = torch.device(device)
    pairs = [prepare_pair(pair, crop) for pair in load_pairs(pairs_source, match)]
    lpips_sha = None
    if with_lpips:
        get_lpips(device)  # fail now, with the file name, not after hours of fitting
        lpips_sha = file_sha256(alexnet_checkpoint_path())
    fit_mode(mode)  # fail now for an unknown mode
    if members is None and mode != PAPER:
        members = fit_mode(mode).members(device.type)  # the same on every worker
    key = settings_key(grid.max_iterations, grid.every, seed, with_lpips, mode, members)
    state_path = Path(state_path) if state_path is not None else default_state_path(out)
    tasks = [FitTask(pair, point, grid.max_iterations, grid.every, seed, with_lpips, mode,
                     members)
             for pair in pairs for point in grid.points()]
    with CalibrationState(state_path) as state:
        done = state.done(key)
        pending = [task for task in tasks if (task.pair.key, task.point.key) not in done]
        if progress is not None:
            progress("start", {"total_fits": len(tasks), "resumed": len(tasks) - len(pending),
                               "pending": len(pending), "iterations": grid.max_iterations})
        run = executor or local_executor(device)

        def on_iteration(task: FitTask, iteration: int, total: int) -> None:
            if progress is not None:
                progress("iteration", {"task": task, "iteration": iteration, "total": total})

        new_fits = 0
        for task, outcome in run(pending, on_iteration):
            state.record(task, outcome, key)
            new_fits += 1
            if progress is not None:
                progress("fit", {"task": task, "seconds": outcome.seconds})
            if stop_after is not None and new_fits >= stop_after and new_fits < len(pending):
                raise CalibrationInterrupted(
                    f"stopped after {new_fits} fits; {len(pending) - new_fits} left. Run the "
                    f"same command again to continue from {state_path}.")
        scores = [state.scores(pair.key, key) for pair in pairs]
        expected = {Candidate(p.depth, p.width, p.skip, i)
                    for p in grid.points() for i in grid.iterations}
        for pair, image_scores in zip(pairs, scores):
            missing = expected - set(image_scores)
            if missing:
                raise CalibrationError(f"state {state_path} lacks {len(missing)} results for "
                                       f"{pair.name!r}; run the command again")
        fit_seconds = state.seconds(key, {pair.key for pair in pairs})
        scores = [{c: s for c, s in image_scores.items() if c in expected}
                  for image_scores in scores]
    metrics = [m for m in TABLE_METRICS if with_lpips or m not in ("lpips", RANK_SUM)]
    base = pairs_source if pairs_source.is_dir() else pairs_source.parent
    sidecar = sidecar_path(out)
    sidecar_sha = write_sidecar(sidecar, pairs)
    document = {
        "format": "autodip-watch calibration table, version 1",
        "default_metric": RANK_SUM if with_lpips else "psnr",
        "provenance": {
            "source": f"autodip-watch calibrate, on {len(pairs)} noisy/ground-truth pair(s)",
            "pairs": pairs_source.name,
            "images": len(pairs),
            "grid": grid.describe(),
            "group_rule": GROUP_RULE,
            "rank_rule": RANK_RULE if with_lpips else "not used: calibrated without LPIPS",
            "tie_rule": TIE_RULE,
            "normalisation": NORMALISATION,
            "lpips": (f"lpips AlexNet v0.1; backbone {alexnet_checkpoint_path().name} "
                      f"sha256 {lpips_sha}" if with_lpips else "not computed (--no-lpips): no lpips or lpips_psnr "
                                         "tables; default metric psnr"),
            "seed": seed,
            "fit_mode": (fit_mode(mode).describe(device.type, members) if mode != PAPER
                         else {"name": PAPER}),
            # An executor elsewhere (a Dask cluster) names itself; the state has each fit's device.
            "device": getattr(executor, "description", None) or _describe(device),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "search": grid.as_dict(),
            "versions": versions(),
        },
        "calibration_images": {
            "file": sidecar.name, "sha256": sidecar_sha,
            "content": "noisy planes after cropping, min-max normalised to [0, 1], float32, "
                       "one TIFF series per image in [[images]] order (sidecar_index)",
        },
        "metrics": build_metric_tables(pairs, scores, metrics),
        "images": image_entries(pairs, scores, metrics, base),
    }
    text = ("# Calibration table made by `autodip-watch calibrate`; see [provenance].\n"
            + tomli_w.dumps(document))
    CalibrationTable(_loads(text), out)  # refuse to write a table the daemon cannot load

    def write(temp: str) -> None:
        Path(temp).write_text(text, encoding="utf-8")

    _atomic_write_bytes(out, write)
    return CalibrationReport(out, sidecar, state_path, len(pairs), len(tasks), new_fits,
                             len(tasks) - len(pending), fit_seconds,
                             time.perf_counter() - started,
                             getattr(executor, "description", None) or _describe(device), metrics)


def _loads(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


def _describe(device: torch.device) -> str:
    from .dip.device import describe_device

    return describe_device(device)


# --------------------------------------------------------------------------- configuration

@dataclass
class CalibrateSettings:
    """The ``[calibrate]`` section of the configuration file (all keys optional)."""

    depths: tuple[int, ...] = DEPTHS
    widths: tuple[str, ...] = WIDTHS
    skips: tuple[int, ...] = SKIPS
    max_iterations: int = 3000
    every: int = 100
    crop: int | None = None
    lpips: bool = True
    match: str = "affine"
    seed: int = 0
    device: str | None = None
    mode: str = PAPER  # the fit mode the grid is scored in (dip/modes.py)
    members: int | None = None  # stable mode's ensemble size (None: the mode's for the device)

    KEYS: ClassVar[tuple[str, ...]] = ("depths", "widths", "skips", "max_iterations", "every",
                                       "crop", "lpips", "match", "seed", "device", "mode",
                                       "members")

    @classmethod
    def from_mapping(cls, section: dict) -> "CalibrateSettings":
        unknown = set(section) - set(cls.KEYS)
        if unknown:
            raise CalibrationError(f"[calibrate]: unknown key(s) {', '.join(sorted(unknown))}; "
                                   f"known: {', '.join(cls.KEYS)}")
        values = dict(section)
        for name, kind in (("depths", int), ("widths", str), ("skips", int)):
            if name in values:
                values[name] = parse_list(values[name], kind)
        settings = cls(**values)
        if settings.match not in MATCH_MODES:
            raise CalibrationError(f"[calibrate] match must be one of {MATCH_MODES}")
        try:
            fit_mode(settings.mode)
        except ValueError as error:
            raise CalibrationError(f"[calibrate] mode: {error}") from None
        settings.grid()  # validate now
        return settings

    def grid(self) -> CalibrationGrid:
        return CalibrationGrid(tuple(self.depths), tuple(self.widths), tuple(self.skips),
                               int(self.max_iterations), int(self.every))
