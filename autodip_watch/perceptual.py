"""LPIPS, the perceptual distance of the paper (Zhang et al. 2018), on grayscale planes.

LPIPS is the ``lpips`` package with AlexNet (``lpips.LPIPS(net='alex')``), as in the
paper. Its linear layers ship inside the package; the AlexNet backbone comes from the
torch hub cache. Nothing is ever downloaded: when the backbone file is missing the
error names it and says how to get it, instead of a download that hangs on an
offline microscope workstation.

Loading a network takes about a second, so its owner keeps it: :class:`LpipsNetworks`
holds one per device for as long as its owner lives (a calibration run, a table's
calibration images).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import torch

#: File name of torchvision's ImageNet AlexNet weights (AlexNet_Weights.IMAGENET1K_V1).
#: File name of torchvision's ImageNet AlexNet weights (AlexNet_Weights.IMAGENET1K_V1).
ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = "https://download.pytorch.org/models/" + ALEXNET_CHECKPOINT


class LpipsWeightsMissing(RuntimeError):
    """The AlexNet backbone of LPIPS is not in the torch hub cache."""


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


class LpipsNetworks:
    """LPIPS networks by device, each loaded when first asked for; thread-safe.

    Owned by whoever compares many planes (a calibration run, a table's calibration
    images), so that a network is loaded once for as long as that owner lives.
    """

    def __init__(self) -> None:
        self._networks: dict[str, Lpips] = {}
        self._lock = threading.Lock()

    def get(self, device: torch.device | str = "cpu") -> Lpips:
        """The network on ``device``; raises :class:`LpipsWeightsMissing` when the AlexNet
        backbone is not in the torch hub cache."""
        key = str(torch.device(device))
        with self._lock:
            if key not in self._networks:
                self._networks[key] = Lpips(device)
            return self._networks[key]
