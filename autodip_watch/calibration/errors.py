"""What stops a calibration."""

from __future__ import annotations


class CalibrationError(ValueError):
    """Bad pairs, grid or state; the message says what to fix."""


class CalibrationInterrupted(RuntimeError):
    """Stopped on request (``stop_after``); the finished fits are in the state file."""
