"""Pick the torch device: CUDA, then Apple MPS, then CPU, unless the user names one."""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    names = []
    if torch.cuda.is_available():
        names.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    names.append("cpu")
    return names


def choose_device(requested: str | None = None) -> torch.device:
    """Return ``requested`` ("cuda", "cuda:1", "mps", "cpu") or the best available one.

    Raises ``ValueError`` with the available devices when the requested one is absent,
    so that a typo or a missing driver is a clear error and not a silent CPU run.
    """
    if requested in (None, "", "auto"):
        return torch.device(available_devices()[0])
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available "
                             f"(available: {', '.join(available_devices())})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {requested!r} requested but only "
                             f"{torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps" and "mps" not in available_devices():
        raise ValueError(f"device {requested!r} requested but MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {requested!r}; use cuda, mps or cpu")
    return device


def device_name(device: torch.device) -> str:
    """The resolved name a person sees: ``cpu``, ``mps``, ``cuda:0`` (never ``auto`` or a
    bare ``cuda``)."""
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type


def describe_device(device: torch.device) -> str:
    """Human-readable device name for logs and provenance."""
    if device.type == "cuda":
        name = device_name(device)
        return f"{name} ({torch.cuda.get_device_name(int(name.split(':')[1]))})"
    return device.type


def free_device_memory() -> None:
    """Return cached GPU memory between jobs, so the next job (maybe another process's)
    finds it free; harmless where there is no GPU."""
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # a broken driver must not fail the job that just succeeded
        pass


def configure_tf32(enabled: bool | None) -> None:
    """Set whether CUDA convolutions and matmuls may use TF32 in this process.

    torch keeps the switch process-wide (``torch.backends.cudnn.allow_tf32``,
    ``torch.backends.cuda.matmul.allow_tf32``), so it is set once where a process sets up
    its engine, from its settings (``denoise --speed tf32``, the daemon's ``[dip]
    speed``), never around a single fit: fits run side by side in threads, and a switch
    flipped and restored per fit would change the arithmetic of the others. ``None``
    leaves torch's defaults.
    """
    if enabled is None:
        return
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
