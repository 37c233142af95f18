"""Shipped AUTO-DIP calibration tables (data only; installed as ``autodip_watch.calibration``)."""
