"""What denoising a file did, plane by plane: the report ``denoise --json`` prints and the
daemon keeps with each job."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..io.model import PlaneKey
from ..metadata.labels import POLICY_COPY
from ..transfer.hierarchy import Transfer
from .plan import ChannelPlan


@dataclass
class PlaneReport:
    """What was done to one 2-D plane.

    ``series``/``plane``/``channel`` locate it (OME image index, ``Z/C/T`` label,
    channel index); ``microscope``/``specimen`` are its channel's labels and
    ``evidence`` why; ``level`` and ``group`` are where the transfer found its DIP
    configuration ``params`` (depth, width, skip, iterations; paper §II-B), or ``copy``
    for a channel written unchanged; ``seconds`` the wall time of its fits (s),
    ``tiles`` how many tiles it was cut into, ``members`` the ensemble size,
    ``rollbacks`` weight restores, ``noise`` the estimated noise model where used,
    ``iterations_run`` the [lowest, highest] iteration its fits' outputs were taken at
    (above ``params["iterations"]`` where the stable mode's extension went on).
    """

    series: int
    plane: str
    channel: int
    microscope: str
    specimen: str
    level: str
    group: str
    params: dict
    seconds: float
    tiles: int
    note: str = ""
    channel_name: str | None = None
    policy: str = "denoise"
    evidence: list[str] = field(default_factory=list)
    members: int = 1  # ensemble size the plane was fitted with
    rollbacks: int = 0  # weight restores after loss spikes over its fits
    noise: dict | None = None  # the estimated noise-level function, where used
    iterations_run: list[int] | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class FileReport:
    """What denoising one file did: what :func:`~.denoise.denoise_file` returns,
    ``denoise --json`` prints and the daemon keeps with each job.

    ``input``/``output`` are paths; ``device`` the device that fitted (e.g. ``cpu``,
    ``cuda:0 (NVIDIA H100)``); ``seconds`` the wall time (s); ``planes`` one
    :class:`PlaneReport` each; ``started``/``finished`` ISO 8601 UTC; ``format`` the
    input's kind (``ome-tiff``, ``tiff``, ...); ``sources`` every source file with its
    size and SHA-256; ``warnings`` the reader's and writer's notes; ``host`` and
    ``worker`` where it ran; ``missing`` what an incomplete input lacked.
    """

    input: str
    output: str
    device: str
    seconds: float
    planes: list[PlaneReport]
    started: str = ""
    finished: str = ""
    format: str = ""
    sources: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    host: str = ""  # the machine that ran the fit
    worker: str = ""  # the executor that ran it, when not this process (a Dask worker)
    #: What an incomplete input lacked (read with allow_missing): planes, member files.
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "device": self.device,
                "host": self.host, "worker": self.worker, "missing": self.missing,
                "seconds": round(self.seconds, 3), "started": self.started,
                "finished": self.finished, "format": self.format, "sources": self.sources,
                "warnings": self.warnings,
                "planes": [plane.as_dict() for plane in self.planes]}


def plane_report(key: PlaneKey, plan: ChannelPlan, transfer: Transfer | None, seconds: float,
                  tiles: int, note: str) -> PlaneReport:
    group = plan.group
    return PlaneReport(series=key.series, plane=key.label(), channel=key.channel,
                       microscope=group.microscope, specimen=group.specimen,
                       level=transfer.level if transfer else POLICY_COPY,
                       group=transfer.group if transfer else "",
                       params=transfer.params.as_dict() if transfer else {},
                       seconds=round(seconds, 3), tiles=tiles, note=note,
                       channel_name=group.name, policy=group.policy,
                       evidence=list(group.evidence))
