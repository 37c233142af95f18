"""What will be done to each channel of a file, decided from its metadata alone.

``inspect`` shows this plan and ``denoise`` runs it (``denoise.py``); a batching worker
groups files by the configurations their plans need (:func:`fit_key`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..io.reader import ImageFile
from ..metadata.infer import ChannelGroup, infer_image
from ..metadata.labels import POLICY_COPY
from ..settings.denoise import DenoiseSettings
from ..transfer.hierarchy import Transfer, apply_overrides
from ..transfer.modes import GROUP
from ..transfer.table import CalibrationTable


@dataclass(frozen=True)
class ChannelPlan:
    """A channel's labels and what will be done to it: a transfer, or copy (``None``)."""

    group: ChannelGroup
    transfer: Transfer | None

    def as_dict(self) -> dict:
        data = self.group.as_dict()
        if self.transfer is None:
            data.update(level=POLICY_COPY, group=None, params=None)
        else:
            data.update(level=self.transfer.level, group=self.transfer.group,
                        params=self.transfer.params.as_dict())
        return data


def plan_series(image: ImageFile, series: int, settings: DenoiseSettings,
                table: CalibrationTable) -> list[ChannelPlan]:
    """Labels and group transfer of every logical channel of one series."""
    groups = infer_image(image, series, settings.rules, settings.microscope, settings.specimen,
                         settings.folder_defaults())
    plans = []
    for group in groups:
        transfer = None if group.policy == POLICY_COPY else _transfer_for(group, settings, table)
        plans.append(ChannelPlan(group, transfer))
    return plans


def inspect_file(path: str | Path, settings: DenoiseSettings) -> list[dict]:
    """What ``denoise`` would do with every image and channel of a file; no pixels read.

    Parameters
    ----------
    path : str or Path
        Any input ``denoise`` takes, or an OME-XML file (metadata only).
    settings : DenoiseSettings
        The settings ``denoise`` would run with (overrides, rules, table, mode).

    Returns
    -------
    list of dict
        One dict per image (series): ``file``, ``format``, ``index``, ``name``, ``shape``,
        ``axes``, ``dtype``, ``pixels``, ``source_files``, ``physical_sizes_um`` (X, Y, Z
        in micrometres), ``warnings``, ``mode`` and ``channels`` (labels, evidence,
        policy, transfer level, group and DIP parameters of each logical channel).

    Raises
    ------
    ImageReadError
        The file cannot be read (a ``ValueError`` naming the file).
    """
    path = Path(path)
    table = settings.calibration_table()
    images = []
    with ImageFile(path) as image:
        for info in image.series:
            plans = plan_series(image, info.index, settings, table)
            images.append({
                "file": str(path), "format": image.kind, "index": info.index,
                "name": info.name, "shape": list(info.shape), "axes": info.axes,
                "dtype": str(info.dtype), "pixels": info.has_pixels,
                "source_files": [str(p) for p in image.source_files],
                "physical_sizes_um": dict(info.physical_sizes),
                "warnings": list(image.warnings),
                "mode": _mode_record(settings),
                "channels": [plan.as_dict() for plan in plans]})
    return images


def fit_key(path: str | Path, settings: DenoiseSettings) -> str | None:
    """What a batching worker groups files by: the DIP configurations and plane sizes
    ``path`` needs, as a stable string (metadata only, no pixels read).

    None when it cannot be known before the pixels are seen (nearest-image transfer
    picks the configuration per plane) or when the file cannot be read.
    """
    if settings.transfer != GROUP:
        return None
    try:
        images = inspect_file(path, settings)
    except (ValueError, OSError):
        return None
    needs = set()
    for image in images:
        sizes = dict(zip(image["axes"], image["shape"]))
        for channel in image["channels"]:
            params = channel.get("params")
            if params:
                needs.add(f"d{params['depth']}/w{params['width']}/s{params['skip']}/"
                          f"{params['iterations']}it@{sizes.get('Y')}x{sizes.get('X')}")
    return ";".join(sorted(needs)) or None


def _transfer_for(group: ChannelGroup, settings: DenoiseSettings,
                  table: CalibrationTable) -> Transfer:
    transfer = table.lookup(group.microscope, group.specimen, settings.metric)
    return apply_overrides(transfer, settings.depth, settings.width, settings.skip,
                           settings.iterations)


def _mode_record(settings: DenoiseSettings) -> dict:
    """The fit mode as ``inspect`` shows it: settings, and the ensemble size per device
    (which device runs the file is decided when it runs)."""
    mode = settings.fit_mode()
    record = mode.describe("cpu", settings.members)
    record.pop("members")
    record["members"] = {"cpu": settings.members or mode.members_cpu,
                         "cuda": settings.members or mode.members_cuda}
    return record
