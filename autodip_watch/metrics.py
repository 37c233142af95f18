"""Image quality and image similarity measures used by calibration and transfer.

All measures work on 2-D float planes on the normalised scale (the noisy plane
min-max rescaled to [0, 1], DESIGN §2), so PSNR uses a data range of 1.

LPIPS is the ``lpips`` package with AlexNet (``lpips.LPIPS(net='alex')``), as in the
paper. Its linear layers ship inside the package; the AlexNet backbone comes from the
torch hub cache. Nothing is ever downloaded: when the backbone file is missing the
error names it and says how to get it, instead of a download that hangs on an
offline microscope workstation.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from .provenance import sha256_file

#: Quality measures a calibration records, and whether lower values are better.
LOWER_IS_BETTER = {"mse": True, "mae": True, "psnr": False, "ssim": False, "lpips": True}
#: File name of torchvision's ImageNet AlexNet weights (AlexNet_Weights.IMAGENET1K_V1).
ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = "https://download.pytorch.org/models/" + ALEXNET_CHECKPOINT


class LpipsWeightsMissing(RuntimeError):
    """The AlexNet backbone of LPIPS is not in the torch hub cache."""


# --------------------------------------------------------------------------- pairs

def fit_affine(source: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Least-squares ``a, b`` with ``source * a + b ≈ target``.

    Used to bring a ground truth onto its noisy image's intensity scale: W2S and Hagen
    ground truths were contrast-stretched separately from their noisy frames, and a
    comparison on different scales would measure the stretch, not the denoiser.
    """
    x = np.asarray(source, dtype=np.float64).ravel()
    y = np.asarray(target, dtype=np.float64).ravel()
    design = np.stack([x, np.ones_like(x)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(slope), float(intercept)


def evaluation_pair(noisy: np.ndarray, ground_truth: np.ndarray,
                    match: str = "affine") -> tuple[np.ndarray, np.ndarray]:
    """Noisy and ground truth on the evaluation scale, both float32.

    The noisy plane is min-max rescaled to [0, 1] (what the denoiser sees); the ground
    truth gets the same rescaling, after an affine fit onto the noisy plane when
    ``match == "affine"``. The ground truth is not clipped, so a fit that leaves it
    slightly outside [0, 1] is measured as it is.
    """
    if match not in ("affine", "none"):
        raise ValueError(f"match must be 'affine' or 'none', got {match!r}")
    noisy = np.asarray(noisy, dtype=np.float64)
    truth = np.asarray(ground_truth, dtype=np.float64)
    if noisy.shape != truth.shape:
        raise ValueError(f"noisy {noisy.shape} and ground truth {truth.shape} differ in shape")
    low, high = float(noisy.min()), float(noisy.max())
    if high == low:
        raise ValueError("the noisy plane is constant; there is nothing to calibrate on")
    if match == "affine":
        slope, intercept = fit_affine(truth, noisy)
        truth = truth * slope + intercept
    scale = high - low
    return ((noisy - low) / scale).astype(np.float32), ((truth - low) / scale).astype(np.float32)


# --------------------------------------------------------------------------- pixel measures

def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return a, b


def mse(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _pair(a, b)
    return float(np.mean((a - b) ** 2))


def mae(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _pair(a, b)
    return float(np.mean(np.abs(a - b)))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB; ``inf`` for identical planes."""
    error = mse(a, b)
    if error == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / error))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM with the Wang et al. settings (11x11 Gaussian window, sigma 1.5).

    These are also the defaults of ``ignite.metrics.SSIM`` that the AUTO-DIP reference
    used. Planes too small for that window fall back to the largest odd uniform window.
    """
    a, b = _pair(a, b)
    if min(a.shape) >= 11:
        return float(structural_similarity(a, b, data_range=data_range, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False))
    window = min(a.shape) - (1 - min(a.shape) % 2)
    if window < 3:
        raise ValueError(f"plane {a.shape} is too small for SSIM")
    return float(structural_similarity(a, b, data_range=data_range, win_size=window))


def mean_gradient(image: np.ndarray) -> float:
    """Mean Sobel gradient magnitude, the paper's image-complexity measure.

    As in the AUTO-DIP reference: ``sqrt((gx**2 + gy**2) / 2)`` averaged over the plane.
    """
    values = np.asarray(image, dtype=np.float64)
    gradient_y = ndimage.sobel(values, axis=0)
    gradient_x = ndimage.sobel(values, axis=1)
    return float(np.mean(np.sqrt((gradient_x**2 + gradient_y**2) / 2.0)))


# --------------------------------------------------------------------------- LPIPS

def alexnet_checkpoint_path() -> Path:
    """Where torchvision looks for the AlexNet weights: ``<torch hub dir>/checkpoints``.

    The hub dir is ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``).
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT


def missing_backbone_message(path: Path) -> str:
    return (f"LPIPS needs the AlexNet backbone weights at {path}, and that file does not "
            f"exist (nothing is downloaded here). Get it on a machine with internet access "
            f"(python -c \"import torchvision; torchvision.models.alexnet(weights='IMAGENET1K_V1')\" "
            f"or download {ALEXNET_URL}) and copy it to {path}, or set TORCH_HOME to a "
            f"folder whose hub/checkpoints/ holds {ALEXNET_CHECKPOINT}. To calibrate without "
            f"LPIPS use `autodip-watch calibrate --no-lpips`.")


#: SHA-256 of a file (one implementation for provenance, calibration and the sidecar check).
file_sha256 = sha256_file


class Lpips:
    """LPIPS (AlexNet, v0.1) between two grayscale planes in [0, 1].

    A grayscale plane goes in as three identical channels scaled to [-1, 1], the range
    the network was trained on.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.backbone = alexnet_checkpoint_path()
        if not self.backbone.is_file():
            raise LpipsWeightsMissing(missing_backbone_message(self.backbone))
        import lpips  # imported late: it pulls in torchvision and is only needed here

        with warnings.catch_warnings():
            # lpips 0.1.4 calls torchvision's deprecated ``pretrained=True``; the file is
            # in the cache (checked above), so torchvision loads it without downloading.
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net="alex", pretrained=True, verbose=False)
        self.model = self.model.to(self.device).eval()

    def _tensor(self, plane: np.ndarray | torch.Tensor) -> torch.Tensor:
        tensor = torch.as_tensor(plane, dtype=torch.float32)
        if tensor.ndim != 2:
            raise ValueError(f"expected a 2-D plane, got shape {tuple(tensor.shape)}")
        tensor = tensor.to(self.device) * 2.0 - 1.0
        return tensor.expand(1, 3, *tensor.shape)

    @torch.no_grad()
    def __call__(self, a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
        first, second = self._tensor(a), self._tensor(b)
        if first.shape != second.shape:
            raise ValueError(f"shapes differ: {tuple(first.shape)} vs {tuple(second.shape)}")
        return float(self.model(first, second).item())


_LPIPS_CACHE: dict[tuple[str, str], Lpips] = {}
_LPIPS_LOCK = threading.Lock()


def get_lpips(device: torch.device | str = "cpu") -> Lpips:
    """One LPIPS network per (device, torch hub dir) and process: loading it takes a second."""
    key = (str(torch.device(device)), os.fspath(alexnet_checkpoint_path()))
    with _LPIPS_LOCK:
        if key not in _LPIPS_CACHE:
            _LPIPS_CACHE[key] = Lpips(device)
        return _LPIPS_CACHE[key]


def lpips_distance(a: np.ndarray, b: np.ndarray, device: torch.device | str = "cpu") -> float:
    return get_lpips(device)(a, b)


def quality(output: np.ndarray, truth: np.ndarray,
            lpips_metric: Lpips | None = None) -> dict[str, float | None]:
    """Every calibration measure of ``output`` against ``truth``; lpips is None without a net."""
    return {"mse": mse(output, truth), "mae": mae(output, truth), "psnr": psnr(output, truth),
            "ssim": ssim(output, truth),
            "lpips": lpips_metric(output, truth) if lpips_metric is not None else None}
