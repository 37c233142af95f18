"""AUTO-DIP parameter transfer: calibration table + group hierarchy -> DIP parameters.

The paper's best strategy is group-based transfer: use the configuration that was
best on average for calibration images of the same microscope type and specimen.
When a group is missing from the table (e.g. an unknown specimen) the lookup falls
back to the microscope-only group, then the specimen-only group, then ``all``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .dip.params import DipParams

MICROSCOPES = ("confocal", "widefield", "two-photon")
SPECIMENS = ("actin", "mito", "nucleus")
UNKNOWN = "unknown"
METRICS = ("lpips_psnr", "psnr", "lpips", "ssim", "mse", "mae")
#: Transfer levels, most specific first.
LEVELS = ("microscope+specimen", "microscope", "specimen", "all")
DEFAULT_TABLE_NAME = "fmd_bpae.toml"

_MICROSCOPE_ALIASES = {
    "confocal": "confocal", "widefield": "widefield", "wide-field": "widefield",
    "wf": "widefield", "epifluorescence": "widefield",
    "two-photon": "two-photon", "twophoton": "two-photon", "2p": "two-photon",
    "multiphoton": "two-photon", "multi-photon": "two-photon", "two photon": "two-photon",
    "spinning-disk": "confocal", "spinning disk": "confocal", "laser-scanning": "confocal",
    # modes outside the calibration (metadata.py: their policy and fallback)
    "tirf": "tirf", "total internal reflection": "tirf",
    "light-sheet": "light-sheet", "lightsheet": "light-sheet", "light sheet": "light-sheet",
    "spim": "light-sheet",
    "bright-field": "brightfield", "bf": "brightfield", "phase": "phase-contrast",
    "phase contrast": "phase-contrast",
}
_SPECIMEN_ALIASES = {
    "actin": "actin", "f-actin": "actin", "mito": "mito", "mitochondria": "mito",
    "mitochondrion": "mito", "nucleus": "nucleus", "nuclei": "nucleus", "dna": "nucleus",
    "nuclear": "nucleus",
}


def canonical_microscope(label: str | None) -> str:
    """Canonical microscope label; anything not in the calibration passes through lower-cased."""
    if label is None or not str(label).strip():
        return UNKNOWN
    text = str(label).strip().lower()
    return _MICROSCOPE_ALIASES.get(text, text)


def canonical_specimen(label: str | None) -> str:
    if label is None or not str(label).strip():
        return UNKNOWN
    text = str(label).strip().lower()
    return _SPECIMEN_ALIASES.get(text, text)


@dataclass(frozen=True)
class Transfer:
    """The outcome of a lookup: parameters, and which level and group supplied them."""

    params: DipParams
    level: str  # one of LEVELS, or "override" when the user set every parameter
    group: str  # e.g. "widefield/nucleus", "widefield", "nucleus", "all"
    metric: str

    def as_dict(self) -> dict:
        return {"level": self.level, "group": self.group, "metric": self.metric,
                "params": self.params.as_dict()}


class TableError(ValueError):
    """A calibration table that cannot be used; the message says what is wrong."""


def default_table_path() -> Path:
    """The shipped table: ``calibration/`` of the source tree, or its installed copy.

    In a checkout (editable install, or the package imported from the repository
    root) the table is read from ``calibration/`` beside the package; a wheel installs
    that folder as ``autodip_watch.calibration``.
    """
    in_checkout = Path(__file__).resolve().parents[1] / "calibration" / DEFAULT_TABLE_NAME
    if in_checkout.is_file():
        return in_checkout
    return Path(str(resources.files("autodip_watch.calibration") / DEFAULT_TABLE_NAME))


def _params(entry: dict, where: str) -> DipParams:
    try:
        return DipParams(depth=int(entry["depth"]), width=str(entry["width"]),
                         skip=int(entry["skip"]), iterations=int(entry["iterations"]))
    except KeyError as missing:
        raise TableError(f"{where}: missing key {missing}") from None
    except (TypeError, ValueError) as error:
        raise TableError(f"{where}: {error}") from None


class CalibrationTable:
    """A calibration table: per metric, the best configuration of every group."""

    def __init__(self, document: dict, path: Path | None = None) -> None:
        self.path = path
        self.document = document
        self.provenance: dict = document.get("provenance", {})
        metrics = document.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            raise TableError(f"{path or 'table'}: no [metrics] section")
        self.default_metric = document.get("default_metric", "lpips_psnr")
        if self.default_metric not in metrics:
            raise TableError(f"{path or 'table'}: default_metric {self.default_metric!r} "
                             f"has no table (have: {', '.join(metrics)})")
        self._metrics = metrics
        for metric in metrics:  # validate every entry up front, not at first use
            for level, group, _ in self.entries(metric):
                self.params_for(metric, level, group)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "CalibrationTable":
        """Load a table file; ``None`` loads the shipped FMD table."""
        path = Path(path) if path is not None else default_table_path()
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TableError(f"calibration table {path} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise TableError(f"calibration table {path} is not valid TOML: {error}") from None
        return cls(document, path)

    @property
    def metrics(self) -> list[str]:
        return list(self._metrics)

    def _metric(self, metric: str | None) -> tuple[str, dict]:
        name = metric or self.default_metric
        if name not in self._metrics:
            raise TableError(f"metric {name!r} not in table (have: {', '.join(self._metrics)})")
        return name, self._metrics[name]

    def _entry(self, metric: str | None, level: str, group: str) -> dict | None:
        _, table = self._metric(metric)
        if level == "all":
            return table.get("all")
        if level == "microscope":
            return table.get("microscope", {}).get(group)
        if level == "specimen":
            return table.get("specimen", {}).get(group)
        if level == "microscope+specimen":
            microscope, _, specimen = group.partition("/")
            return table.get("microscope_specimen", {}).get(microscope, {}).get(specimen)
        raise ValueError(f"unknown level {level!r}")

    def params_for(self, metric: str | None, level: str, group: str) -> DipParams:
        entry = self._entry(metric, level, group)
        if entry is None:
            raise TableError(f"no entry for {level} group {group!r}")
        return _params(entry, f"{metric}/{level}/{group}")

    def entries(self, metric: str | None = None) -> list[tuple[str, str, DipParams]]:
        """Every (level, group, params) of one metric, most specific level first."""
        name, table = self._metric(metric)
        rows: list[tuple[str, str, DipParams]] = []
        for microscope, specimens in table.get("microscope_specimen", {}).items():
            for specimen, entry in specimens.items():
                rows.append(("microscope+specimen", f"{microscope}/{specimen}",
                             _params(entry, f"{name}/{microscope}/{specimen}")))
        for microscope, entry in table.get("microscope", {}).items():
            rows.append(("microscope", microscope, _params(entry, f"{name}/{microscope}")))
        for specimen, entry in table.get("specimen", {}).items():
            rows.append(("specimen", specimen, _params(entry, f"{name}/{specimen}")))
        if "all" in table:
            rows.append(("all", "all", _params(table["all"], f"{name}/all")))
        return rows

    def lookup(self, microscope: str | None, specimen: str | None,
               metric: str | None = None) -> Transfer:
        """Walk the hierarchy microscope+specimen -> microscope -> specimen -> all."""
        name, _ = self._metric(metric)
        microscope = canonical_microscope(microscope)
        specimen = canonical_specimen(specimen)
        candidates = [
            ("microscope+specimen", f"{microscope}/{specimen}"),
            ("microscope", microscope),
            ("specimen", specimen),
            ("all", "all"),
        ]
        for level, group in candidates:
            if UNKNOWN in group.split("/"):
                continue
            entry = self._entry(name, level, group)
            if entry is not None:
                return Transfer(_params(entry, f"{name}/{level}/{group}"), level, group, name)
        raise TableError(f"table has no 'all' entry for metric {name!r}, and no group "
                         f"matches microscope={microscope!r} specimen={specimen!r}")


def apply_overrides(transfer: Transfer, depth: int | None = None, width: str | int | None = None,
                    skip: int | None = None, iterations: int | None = None) -> Transfer:
    """Replace parameters the user set by hand; the level records that they did."""
    changes = {key: value for key, value in
               (("depth", depth), ("width", width), ("skip", skip), ("iterations", iterations))
               if value is not None}
    if not changes:
        return transfer
    merged = {**transfer.params.as_dict(), **changes}
    params = DipParams(**merged)
    level = "override" if len(changes) == 4 else f"{transfer.level}+override"
    return Transfer(params, level, transfer.group, transfer.metric)
