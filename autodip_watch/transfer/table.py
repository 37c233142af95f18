"""A calibration table: per metric, the best DIP configuration of every group.

Tables are TOML (layout: ``tables/README.md``): the shipped one (``tables/fmd_bpae.toml``,
the paper's FMD calibration) or a site's own, written by ``autodip-watch calibrate``.
:meth:`CalibrationTable.lookup` answers a channel's group along the transfer hierarchy
(``hierarchy.py``).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from importlib import resources
from pathlib import Path

from ..dip.params import DipParams
from ..io.checksums import sha256_file
from .hierarchy import TABLE_SECTIONS, Transfer, group_levels
from .labels import canonical_microscope, canonical_specimen

DEFAULT_TABLE_NAME = "fmd_bpae.toml"


class TableError(ValueError):
    """A calibration table that cannot be used; the message says what is wrong."""


def default_table_path() -> Path:
    """The shipped table, ``tables/fmd_bpae.toml`` of this package (package data, so the
    same path in a checkout, an editable install and a wheel)."""
    return Path(str(resources.files(__package__) / "tables" / DEFAULT_TABLE_NAME))


def _params(entry: dict, where: str) -> DipParams:
    try:
        return DipParams(depth=int(entry["depth"]), width=str(entry["width"]),
                         skip=int(entry["skip"]), iterations=int(entry["iterations"]))
    except KeyError as missing:
        raise TableError(f"{where}: missing key {missing}") from None
    except (TypeError, ValueError) as error:
        raise TableError(f"{where}: {error}") from None


class CalibrationTable:
    """A calibration table: per metric, the best DIP configuration of every group.

    The AUTO-DIP calibration (paper §III-A) scores a grid of configurations on pairs of
    noisy and ground-truth images; the table keeps, for each metric (``mae``, ``psnr``,
    ``lpips_psnr``, ...), the best configuration of every group at four levels:
    microscope+specimen, microscope, specimen and all (paper §II-B.1).
    :meth:`lookup` walks them from the most specific (``hierarchy.py``).

    Parameters
    ----------
    document : dict
        The parsed TOML (``[metrics.<metric>.<level>...]`` tables, ``default_metric``,
        ``[provenance]``).
    path : Path, optional
        Where it was read from (None for a table that travelled as its document).

    Raises
    ------
    TableError
        A table without metrics, an unknown default metric, or an entry that is not a
        valid configuration (every entry is checked up front).
    """

    def __init__(self, document: dict, path: Path | None = None) -> None:
        self.path = path
        self.document = document
        #: Data derived from the table and kept with it, computed once per table object
        #: (the calibration images of nearest-image transfer, ``images.py``).
        self.derived: dict[str, object] = {}
        self.provenance: dict = document.get("provenance", {})
        metrics = document.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            hint = (" (it looks like an autodip-watch configuration: the table is the file "
                    "its calibration_table names, by default the shipped one)"
                    if any(key in document for key in ("watch", "dip", "daemon", "inference"))
                    else "")
            raise TableError(f"{path or 'table'}: no [metrics] section; not a calibration "
                             f"table{hint}")
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
        """Load a table file; ``None`` loads the shipped FMD table (package data of
        ``autodip_watch.transfer``, ``tables/``).

        Raises :class:`TableError` for a missing file, invalid TOML or a bad table."""
        path = Path(path) if path is not None else default_table_path()
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TableError(f"calibration table {path} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise TableError(f"calibration table {path} is not valid TOML: {error}") from None
        return cls(document, path)

    def sha256(self) -> str:
        """SHA-256 of the table's file; of its canonical JSON where it has no file here (a
        table that travelled to a Dask worker as its document)."""
        if self.path is not None and Path(self.path).is_file():
            return sha256_file(self.path)
        return hashlib.sha256(json.dumps(self.document, sort_keys=True, default=str)
                              .encode("utf-8")).hexdigest()

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
        if level not in TABLE_SECTIONS:
            raise ValueError(f"unknown level {level!r}")
        section = table.get(TABLE_SECTIONS[level])
        if level == "all" or section is None:
            return section
        if level == "microscope+specimen":
            microscope, _, specimen = group.partition("/")
            return section.get(microscope, {}).get(specimen)
        return section.get(group)

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

    def specimens(self, metric: str | None = None) -> set[str]:
        """The specimens that have a group of their own (alone or with a microscope)."""
        return {group.rsplit("/", 1)[-1] for level, group, _ in self.entries(metric)
                if level in ("microscope+specimen", "specimen")}

    def lookup(self, microscope: str | None, specimen: str | None,
               metric: str | None = None) -> Transfer:
        """The configuration of a channel's group (paper §II-B.1).

        Parameters
        ----------
        microscope, specimen : str or None
            The channel's labels (None: unknown).
        metric : str, optional
            Which metric's table (default: the table's ``default_metric``).

        Returns
        -------
        Transfer
            The first entry found walking microscope+specimen -> microscope -> specimen
            -> all, with the level and group it was found at.

        Raises
        ------
        TableError
            An unknown metric, or no entry matches and the table has no ``all`` entry.
        """
        name, _ = self._metric(metric)
        for level, group in group_levels(microscope, specimen):
            entry = self._entry(name, level, group)
            if entry is not None:
                return Transfer(_params(entry, f"{name}/{level}/{group}"), level, group, name)
        raise TableError(f"table has no 'all' entry for metric {name!r}, and no group "
                         f"matches microscope={canonical_microscope(microscope)!r} "
                         f"specimen={canonical_specimen(specimen)!r}")


