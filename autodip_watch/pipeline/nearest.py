"""``inspect`` of a nearest-image transfer: which calibration images the first planes of
each channel are nearest to. Unlike group transfer this needs pixels, and the measures
(scikit-image, LPIPS), so it is apart from ``plan.py``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..io.reader import ImageFile
from ..settings.denoise import DenoiseSettings
from ..transfer.nearest import nearest
from .plan import plan_series

if TYPE_CHECKING:
    import torch


def inspect_nearest(path: str | Path, settings: DenoiseSettings,
                    device: torch.device | str = "cpu", planes_per_channel: int = 4) -> list[dict]:
    """What a nearest-* transfer picks for the first planes of every channel of ``path``.

    Unlike group transfer this needs pixels, so ``inspect`` reads up to
    ``planes_per_channel`` planes per channel; ``denoise`` decides for every plane.
    Channels that are copied (not fluorescence) are left out. The transfer compares each
    plane with the table's calibration images (DESIGN §3, nearest-image transfer).

    Parameters
    ----------
    path : str or Path
        Any input ``denoise`` takes.
    settings : DenoiseSettings
        ``settings.transfer`` is a ``nearest-*`` mode; its table has calibration images
        (made by ``autodip-watch calibrate``).
    device : torch.device or str
        Where LPIPS runs for ``nearest-lpips``.
    planes_per_channel : int
        At least 1: planes compared per channel.

    Returns
    -------
    list of dict
        One row per plane compared: ``file``, ``series``, ``plane``, ``channel``,
        ``microscope``, ``specimen`` and the transfer found (the calibration image, its
        distance, the DIP configuration).

    Raises
    ------
    ImageReadError
        The file cannot be read.
    ValueError
        The table cannot serve the transfer (no calibration images, unknown metric).
    """
    rows: list[dict] = []
    table = settings.calibration_table()
    with ImageFile(path) as image:
        for info in image.series:
            if not info.has_pixels:
                continue
            plans = plan_series(image, info.index, settings, table)
            wanted = {plan.group.index for plan in plans if plan.transfer is not None}
            seen: dict[int, int] = {}
            for keys, page in image.pages(info.index):
                for key, plane in zip(keys, info.split_page(page)):
                    plan = plans[key.channel]
                    if key.channel not in wanted or seen.get(key.channel, 0) >= planes_per_channel:
                        continue
                    seen[key.channel] = seen.get(key.channel, 0) + 1
                    found = nearest(plane, table, plan.group.microscope,
                                    plan.group.specimen, settings.transfer,
                                    settings.within_group, settings.metric, device)
                    rows.append({"file": str(path), "series": info.index, "plane": key.label(),
                                 "channel": key.channel, "microscope": plan.group.microscope,
                                 "specimen": plan.group.specimen, **found.as_dict()})
                if all(seen.get(channel, 0) >= planes_per_channel for channel in wanted):
                    break
    return rows
