"""A plane's intensities on the network's scale and back (DESIGN §2, paper §II-E).

Each plane is min-max rescaled to [0, 1] with its own noisy minimum and maximum (the
paper's preprocessing), and the denoised [0, 1] plane is mapped back to the input's
range and dtype, rounding integers and clipping to the dtype's range. NumPy only:
nearest-image transfer normalises planes the same way without loading torch.
"""

from __future__ import annotations

import numpy as np


#: Dtypes a plane may have; others are refused with a clear error.
SUPPORTED_DTYPES = tuple(np.dtype(name) for name in
                         ("uint8", "uint16", "int8", "int16", "uint32", "int32",
                          "float32", "float64"))


def check_dtype(dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported pixel type {dtype}; supported: "
                         f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")
    return dtype


def normalise(plane: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Min-max rescale to [0, 1]; returns the rescaled plane and the (min, max) used."""
    values = np.asarray(plane, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("plane contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros_like(values), low, high
    return (values - low) / (high - low), low, high


def denormalise(unit: np.ndarray, low: float, high: float, dtype: np.dtype) -> np.ndarray:
    """Map [0, 1] back to ``[low, high]`` in ``dtype``: round integers, clip to the dtype."""
    dtype = np.dtype(dtype)
    values = np.asarray(unit, dtype=np.float64) * (high - low) + low
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    else:
        info = np.finfo(dtype)
        values = np.clip(values, info.min, info.max)
    return values.astype(dtype)
