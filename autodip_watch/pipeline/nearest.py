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
    Channels that are copied (not fluorescence) are left out.
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
