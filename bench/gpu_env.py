"""What a GPU session runs on: device, driver, torch, and whether the project's
dependencies are there in versions it accepts (bench/gpu_session.sh, first step).

The lent machine runs its own python3 and packages (torch among them), plus the wheels
carried in ``.whl`` (scripts/gpu-wheels.sh); this step says which versions were used
and names any requirement of ``pyproject.toml`` that is missing or too old there, and
any module of the package that does not import, before the measurements start.

    python bench/gpu_env.py --out env.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import platform
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def requirement_report() -> list[dict]:
    """Each dependency of pyproject.toml (and pytest): installed version, and whether it
    meets the specifier (needs ``packaging``, which pip brings)."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    rows = []
    for text in [*project["dependencies"], "pytest>=8"]:
        requirement = Requirement(text)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            version = None
        rows.append({"name": requirement.name, "wanted": str(requirement.specifier),
                     "version": version,
                     "ok": version is not None and requirement.specifier.contains(
                         version, prereleases=True)})
    return rows


def import_report() -> list[dict]:
    """Every module of the autodip_watch package, imported; the error of each that fails."""
    import autodip_watch

    rows = []
    names = ["autodip_watch", *(m.name for m in pkgutil.walk_packages(
        autodip_watch.__path__, "autodip_watch."))]
    for name in names:
        try:
            importlib.import_module(name)
            rows.append({"module": name, "ok": True})
        except Exception as error:  # noqa: BLE001 - reported, the session goes on
            rows.append({"module": name, "ok": False, "error": f"{type(error).__name__}: {error}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    import torch

    env = {"python": platform.python_version(), "executable": sys.executable,
           "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "cuda_available": torch.cuda.is_available(), "cpu_count": __import__("os").cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update({"device": props.name, "capability": f"{props.major}.{props.minor}",
                    "multiprocessors": props.multi_processor_count,
                    "memory_gib": round(props.total_memory / 2**30, 1)})
    env["requirements"] = requirement_report()
    env["imports"] = import_report()
    Path(args.out).write_text(json.dumps(env, indent=2) + "\n")
    for key in ("python", "torch", "torch_cuda", "cudnn", "cuda_available", "device",
                "capability", "memory_gib", "cpu_count"):
        if key in env:
            print(f"{key}: {env[key]}")
    for row in env["requirements"]:
        print(f"{'ok     ' if row['ok'] else 'MISSING'} {row['name']} {row['version']} "
              f"(wanted {row['wanted'] or 'any'})")
    failed = [row for row in env["imports"] if not row["ok"]]
    print(f"imports: {len(env['imports']) - len(failed)} of {len(env['imports'])} modules")
    for row in failed:
        print(f"IMPORT FAILED {row['module']}: {row['error']}")
    sys.exit(1 if failed or not all(r["ok"] for r in env["requirements"]) else 0)


if __name__ == "__main__":
    main()
