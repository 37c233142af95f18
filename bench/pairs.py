"""The real noisy / ground-truth pairs in ../shared/data/pairs, and how to score them.

Scoring follows DESIGN §2 and §4: the noisy plane's min-max maps everything to [0, 1]
(noisy, denoised and ground truth alike); W2S and Hagen ground truths were
contrast-stretched separately from their noisy frames, so they are first matched to
the noisy image by a least-squares affine fit (a step independent of the denoiser).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
import tifffile

#: ../shared/data/pairs beside the checkout; AUTODIP_PAIRS_DIR names another copy (the
#: GPU machine gets only the checkout, so the pairs travel in an ignored folder of it).
PAIRS_DIR = Path(os.environ.get("AUTODIP_PAIRS_DIR") or
                 Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pairs")


@dataclass(frozen=True)
class Pair:
    name: str
    noisy: str
    truth: str
    microscope: str
    specimen: str
    channel: int | None = None  # RGB composites: which sample
    affine_match: bool = False  # W2S/Hagen: fit ground truth onto noisy first


PAIRS = {
    p.name: p for p in [
        Pair("fmd-widefield-nucleus", "fmd/FMD_WideField_BPAE_B_1_raw.png",
             "fmd/FMD_WideField_BPAE_B_1_gt.png", "widefield", "nucleus"),
        Pair("fmd-confocal-mito", "fmd/image_R_1_001.png", "fmd/image_R_1_avg50.png",
             "confocal", "mito"),
        Pair("fmd-widefield-rgb-mito", "fmd/WideField_BPAE_raw_rgb_new1.png",
             "fmd/WideField_BPAE_gt_rgb_new1.png", "widefield", "mito", channel=0),
        Pair("fmd-widefield-rgb-actin", "fmd/WideField_BPAE_raw_rgb_new1.png",
             "fmd/WideField_BPAE_gt_rgb_new1.png", "widefield", "actin", channel=1),
        Pair("fmd-widefield-rgb-nucleus", "fmd/WideField_BPAE_raw_rgb_new1.png",
             "fmd/WideField_BPAE_gt_rgb_new1.png", "widefield", "nucleus", channel=2),
        Pair("w2s-005-ch0", "w2s/input_avg1_005_0.tif", "w2s/target_avg400_005_0.tif",
             "widefield", "unknown", affine_match=True),
        Pair("w2s-010-ch0", "w2s/input_avg1_010_0.tif", "w2s/target_avg400_010_0.tif",
             "widefield", "unknown", affine_match=True),
        Pair("w2s-056-ch1", "w2s/input_avg1_056_1.tif", "w2s/target_avg400_056_1.tif",
             "widefield", "unknown", affine_match=True),
        Pair("w2s-118-ch2", "w2s/input_avg1_118_2.tif", "w2s/target_avg400_118_2.tif",
             "widefield", "unknown", affine_match=True),
        Pair("hagen-nucleus", "hagen2021/nucleus-lowsnr-sample.png",
             "hagen2021/nucleus-highsnr-sample.png", "widefield", "nucleus", affine_match=True),
        Pair("hagen-actin-60x", "hagen2021/actin-60x-noise1-lowsnr-sample.png",
             "hagen2021/actin-60x-noise1-highsnr-sample.png", "widefield", "actin",
             affine_match=True),
    ]
}


def read_plane(path: Path, channel: int | None = None) -> np.ndarray:
    """A 2-D plane; palette PNGs give their index (the intensity), not rendered colours."""
    if path.suffix.lower() == ".png":
        with Image.open(path) as image:
            array = np.array(image)
    else:
        array = tifffile.imread(path)
    if channel is not None:
        array = array[..., channel]
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D plane, got {array.shape}")
    return array


def load(pair: Pair, root: Path = PAIRS_DIR) -> tuple[np.ndarray, np.ndarray]:
    return read_plane(root / pair.noisy, pair.channel), read_plane(root / pair.truth, pair.channel)


def match_truth(noisy: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Least-squares ``a * truth + b`` closest to ``noisy``."""
    t = truth.astype(np.float64).ravel()
    design = np.stack([t, np.ones_like(t)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, noisy.astype(np.float64).ravel(), rcond=None)
    return (a * truth.astype(np.float64) + b)


class Scorer:
    """PSNR / SSIM against the ground truth on the noisy plane's normalised scale."""

    def __init__(self, pair: Pair, noisy: np.ndarray, truth: np.ndarray) -> None:
        self.low, self.high = float(noisy.min()), float(noisy.max())
        reference = match_truth(noisy, truth) if pair.affine_match else truth.astype(np.float64)
        self.truth = self.scale(reference)

    def scale(self, plane: np.ndarray) -> np.ndarray:
        return (plane.astype(np.float64) - self.low) / (self.high - self.low)

    def psnr(self, plane: np.ndarray) -> float:
        return float(peak_signal_noise_ratio(self.truth, self.scale(plane), data_range=1.0))

    def ssim(self, plane: np.ndarray) -> float:
        return float(structural_similarity(self.truth, self.scale(plane), data_range=1.0))


def run_denoise(arguments: list[str]) -> tuple[dict, float]:
    """``autodip-watch denoise ARGUMENTS --json`` as a user runs it (a fresh process):
    its JSON summary and the wall seconds of the whole command. Exits on failure."""
    import json
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "autodip_watch.cli", "denoise", *arguments, "--json"]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        sys.exit(f"denoise failed:\n{completed.stderr}")
    return json.loads(completed.stdout), seconds

