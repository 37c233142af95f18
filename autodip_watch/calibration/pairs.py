"""Calibration pairs: noisy planes with their ground truth, read and put on one scale.

A pair is named in a CSV or found by folder layout; preparing it reads one plane of each
file, fits the ground truth onto the noisy plane's intensity scale (``metrics.
evaluation_pair``, DESIGN §4) and crops it to the denoiser's tile, so that what is
scored is what the daemon would fit.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ..dip.tiling import TILE_SIZE
from ..io.checksums import sha256_file
from ..metrics import evaluation_pair
from ..transfer.labels import canonical_microscope, canonical_specimen
from .errors import CalibrationError


PAIRS_CSV = "pairs.csv"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
NOISY_TAGS = ("_noisy", "_raw")
TRUTH_TAGS = ("_gt", "_clean")
MATCH_MODES = ("affine", "none")
#: Planes smaller than this cannot be scored with SSIM's 11x11 window.
MIN_SIDE = 16


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
                        str(pair.noisy), str(pair.ground_truth), sha256_file(pair.noisy),
                        sha256_file(pair.ground_truth), pair.match, pair.channel, box)
