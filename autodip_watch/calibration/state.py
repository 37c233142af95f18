"""The finished fits of a calibration, in SQLite: what makes a stopped run resumable."""

from __future__ import annotations

import datetime as _dt
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from .fitting import FitOutcome, FitTask
from .grid import GridPoint
from .selection import MEASURES, Candidate


class CalibrationState:
    """SQLite store of finished fits: one row per fit, one per (fit, snapshot).

    A fit and its snapshots are written in one transaction, so a run killed mid-fit
    leaves either the whole fit or none of it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.connection = sqlite3.connect(self.path, timeout=30)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.executescript("""
            CREATE TABLE IF NOT EXISTS fits (
                image_key TEXT NOT NULL, config TEXT NOT NULL, settings TEXT NOT NULL,
                image_name TEXT, device TEXT, seconds REAL, finished TEXT,
                PRIMARY KEY (image_key, config, settings));
            CREATE TABLE IF NOT EXISTS snapshots (
                image_key TEXT NOT NULL, config TEXT NOT NULL, settings TEXT NOT NULL,
                iteration INTEGER NOT NULL, mse REAL, mae REAL, psnr REAL, ssim REAL,
                lpips REAL, PRIMARY KEY (image_key, config, settings, iteration));
        """)
        self.connection.commit()

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "CalibrationState":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def done(self, settings: str) -> set[tuple[str, str]]:
        """(image_key, config) of every finished fit made with ``settings``."""
        cursor = self.connection.execute(
            "SELECT image_key, config FROM fits WHERE settings = ?", (settings,))
        return {(image, config) for image, config in cursor}

    def record(self, task: FitTask, outcome: FitOutcome, settings: str) -> None:
        finished = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with self.connection:
            self.connection.execute(
                "INSERT OR REPLACE INTO fits VALUES (?, ?, ?, ?, ?, ?, ?)",
                (task.pair.key, task.point.key, settings, task.pair.name, outcome.device,
                 outcome.seconds, finished))
            self.connection.executemany(
                "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(task.pair.key, task.point.key, settings, row["iteration"],
                  *(row.get(measure) for measure in MEASURES)) for row in outcome.rows])

    def scores(self, image_key: str, settings: str) -> dict["Candidate", dict[str, float]]:
        """Every stored (configuration, iteration) candidate of one image with its scores."""
        cursor = self.connection.execute(
            f"SELECT config, iteration, {', '.join(MEASURES)} FROM snapshots "
            "WHERE image_key = ? AND settings = ?", (image_key, settings))
        result = {}
        for config, iteration, *values in cursor:
            point = GridPoint.from_key(config)
            candidate = Candidate(point.depth, point.width, point.skip, int(iteration))
            result[candidate] = {m: v for m, v in zip(MEASURES, values) if v is not None}
        return result

    def seconds(self, settings: str, image_keys: Iterable[str]) -> float:
        keys = list(image_keys)
        if not keys:
            return 0.0
        marks = ",".join("?" * len(keys))
        cursor = self.connection.execute(
            f"SELECT COALESCE(SUM(seconds), 0) FROM fits WHERE settings = ? AND image_key IN ({marks})",
            (settings, *keys))
        return float(cursor.fetchone()[0])
