"""How parameters are transferred to a plane: by its group, or from the nearest image.

``group`` is the paper's recommended strategy (§II-B.1, ``table.py``); the ``nearest-*``
modes (§II-B.2, §II-B.3, ``nearest.py``) take the per-image optimum of the calibration
image most similar to the plane, by one measure.
"""

from __future__ import annotations

#: The paper's group-based transfer.
GROUP = "group"
#: Transfer modes: ``group`` (the paper's recommended default) and nearest-image modes.
TRANSFER_MODES = ("group", "nearest-mae", "nearest-mse", "nearest-psnr", "nearest-ssim",
                  "nearest-lpips", "nearest-gradient")
#: Per mode: the measure, and whether a higher value means more similar.
MODE_MEASURES = {"nearest-mae": ("mae", False), "nearest-mse": ("mse", False),
                 "nearest-psnr": ("psnr", True), "nearest-ssim": ("ssim", True),
                 "nearest-lpips": ("lpips", False), "nearest-gradient": ("gradient", False)}


def check_mode(mode: str) -> str:
    if mode not in TRANSFER_MODES:
        raise ValueError(f"transfer mode must be one of {', '.join(TRANSFER_MODES)}, got {mode!r}")
    return mode
