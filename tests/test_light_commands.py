"""Light commands stay light: `inspect`, `status`, `groups`, `queue` and `config check`
never import torch (or other heavy modules they do not need).

Each command runs for real in a fresh interpreter (the typer app, real files, a real
queue database), which then reports what it imported. Importing torch costs seconds on
a small machine; `inspect` answers a metadata question in well under that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from autodip_watch.daemon.queue import JobQueue

#: Modules a metadata or queue question never needs.
#: Modules a light command must not load. Not listed: ``dask`` (core) and ``scipy``, which
#: pint imports when they are installed (pint.compat probes them), and pint comes with
#: ome-types' unit support, which reading OME calibration needs (about 0.1 s of the
#: ~1.5 s of `inspect`); dask's cluster part (``distributed``) stays out.
HEAVY = ("torch", "torchvision", "lpips", "distributed", "matplotlib", "skimage")

_RUNNER = """
import json, sys
from autodip_watch.cli import app
commands = json.loads(sys.argv[2])
results = []
for args in commands:
    try:
        # standalone_mode=False: typer.Exit(n) comes back as the return value
        code = app(args, prog_name="autodip-watch", standalone_mode=False) or 0
    except SystemExit as stop:
        code = stop.code or 0
    except BaseException as error:
        code = repr(error)
    results.append({"code": code, "modules": sorted(sys.modules)})
with open(sys.argv[1], "w") as report:
    json.dump(results, report)
"""


def run_light(tmp_path: Path, *commands: list[str]) -> list[dict]:
    """Run each ``autodip-watch ARGS`` in turn in one fresh interpreter; per command its
    exit code and sys.modules after it (modules only accumulate, so the first command
    after which a module appears is the one that imported it)."""
    report = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    env = {k: v for k, v in os.environ.items() if k != "AUTODIP_WATCH_CONFIG"}
    result = subprocess.run([sys.executable, "-c", _RUNNER, str(report), json.dumps(commands)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert report.exists(), f"{commands} crashed:\n{result.stdout}\n{result.stderr}"
    outcomes = json.loads(report.read_text())
    for outcome in outcomes:
        outcome["stdout"], outcome["stderr"] = result.stdout, result.stderr
    return outcomes


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict[str, Path]:
    """A sample image, a queue database with a job in every state the views show, a config."""
    root = tmp_path_factory.mktemp("light")
    sample = root / "sample-dapi.ome.tif"
    subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" /
                                        "make_sample.py"), str(sample)], check=True,
                   capture_output=True, timeout=120)
    plain = root / "plain.tif"
    tifffile.imwrite(plain, np.zeros((2, 16, 16), np.uint16))
    state = root / "state"
    queue = JobQueue(state)
    queued = queue.enqueue(str(sample), 1, 1, "aa")
    running = queue.enqueue(str(plain), 2, 2, "bb")
    assert queued and running
    claimed = queue.claim("cpu@1")
    queue.progress(claimed.id, 1, 2, 1, 1, 5, 10, fraction=0.25, rate=0.01)
    queue.close()
    watched = root / "watched"
    watched.mkdir()
    config = root / "config.toml"
    config.write_text(f'device = "auto"\nstate_dir = "{state}"\n[[watch]]\npath = "{watched}"\n',
                      encoding="utf-8")
    return {"sample": sample, "plain": plain, "state": state, "config": config}


LIGHT_COMMANDS = {
    "inspect": lambda s: ["inspect", str(s["sample"])],
    "inspect --json, two files": lambda s: ["inspect", "--json", str(s["sample"]), str(s["plain"])],
    "inspect of a missing file": lambda s: ["inspect", str(s["state"] / "missing.tif")],
    # a typo or an unmounted share is said before the seconds of loading torch
    "denoise of missing files": lambda s: ["denoise", str(s["state"] / "missing.tif"),
                                           str(s["state"] / "missing2.tif")],
    "groups": lambda s: ["groups"],
    "groups --json": lambda s: ["groups", "--json"],
    "status": lambda s: ["status", "--state-dir", str(s["state"])],
    "status --json --config": lambda s: ["status", "--json", "--config", str(s["config"])],
    "status of a state dir never used": lambda s: ["status", "--state-dir", str(s["state"] / "none")],
    "queue list": lambda s: ["queue", "list", "--state-dir", str(s["state"])],
    "queue list --json": lambda s: ["queue", "list", "--json", "--state-dir", str(s["state"])],
    "queue list --history": lambda s: ["queue", "list", "--history", "1", "--state-dir",
                                       str(s["state"])],
    "config check": lambda s: ["config", "check", str(s["config"])],
    "config check --json": lambda s: ["config", "check", "--json", str(s["config"])],
}
#: status exits 3 when the daemon is not running (systemctl's convention; README).
EXPECTED_CODE = {"inspect of a missing file": 1, "denoise of missing files": 1, "status": 3, "status --json --config": 3,
                 "status of a state dir never used": 3}


@pytest.mark.slow
def test_light_commands_import_nothing_heavy(site, tmp_path):
    names = list(LIGHT_COMMANDS)
    outcomes = run_light(tmp_path, *(LIGHT_COMMANDS[name](site) for name in names))
    problems = []
    for name, outcome in zip(names, outcomes):
        if outcome["code"] != EXPECTED_CODE.get(name, 0):
            problems.append(f"{name}: exit {outcome['code']}")
        heavy = [module for module in HEAVY if module in outcome["modules"]]
        if heavy:
            problems.append(f"{name} imported {heavy}")
            break  # later commands inherit the modules
    assert not problems, (problems, outcomes[0]["stderr"])


@pytest.mark.slow
def test_the_check_sees_heavy_imports(site, tmp_path):
    """The guard can fail: after a light command, a command that loads the engine (denoise
    on a device that is not there) shows torch, and only from that command on."""
    first, second = run_light(tmp_path, ["groups"],
                              ["denoise", str(site["sample"]), "--device", "cuda:99"])
    assert "torch" not in first["modules"]
    assert second["code"] == 1  # the file fails with the device error, before any fit
    assert "torch" in second["modules"]


@pytest.mark.slow
def test_inspect_answers_what_denoise_would_do(site, tmp_path):
    (outcome,) = run_light(tmp_path, ["inspect", "--json", str(site["sample"])])
    channel = json.loads(outcome["stdout"])["images"][0]["channels"][0]
    assert (channel["microscope"], channel["specimen"], channel["group"]) == (
        "widefield", "nucleus", "widefield/nucleus")


LIGHT_MODULES = ("metadata.infer", "io.reader", "daemon.queue", "daemon.status", "settings.config",
                 "daemon.watcher", "provenance", "transfer.table", "transfer.images",
                 "pipeline.plan", "daemon.progress", "daemon.log", "daemon.exporter")


def test_modules_the_light_commands_use_do_not_import_torch():
    """The kind, not the instance: every module on the metadata and queue paths."""
    code = ("import importlib, json, sys\n"
            f"for name in {LIGHT_MODULES!r}:\n"
            "    importlib.import_module('autodip_watch.' + name)\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert json.loads(result.stdout) == []
