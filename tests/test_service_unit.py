"""The systemd unit: `systemd-analyze verify` accepts it, and it keeps its promises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "autodip-watch.service"


def unit_lines() -> dict[str, list[str]]:
    """Key -> values of the [Service] section (keys may repeat in unit files)."""
    values: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}{key}", []).append(value)
    return values


def test_unit_promises():
    unit = unit_lines()
    service = lambda key: unit.get(f"[Service]{key}", [])  # noqa: E731
    assert service("Type") == ["notify"]
    assert service("Restart") == ["on-failure"]
    assert service("RestartPreventExitStatus") == ["78"]  # config errors: no restart loop
    assert service("WatchdogSec") and service("StateDirectory") == ["autodip-watch"]
    assert service("User") == ["autodip"] and not service("DynamicUser")
    assert not service("PrivateDevices"), "PrivateDevices would hide the GPUs"
    allowed = service("DeviceAllow")
    assert "char-nvidia* rw" in allowed and "/dev/nvidiactl rw" in allowed
    assert "/dev/nvidia-uvm rw" in allowed
    assert service("ReadWritePaths") and service("ProtectSystem") == ["strict"]
    assert service("NoNewPrivileges") == ["yes"]
    assert "run --config" in service("ExecStart")[0]


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian: apt-get install -y systemd)")
    # verify checks that ExecStart exists: point it at this environment's entry point.
    script = Path(sys.executable).with_name("autodip-watch")
    executable = script if script.exists() else Path(sys.executable)
    text = UNIT.read_text(encoding="utf-8")
    lines = [f"ExecStart={executable} run --config /etc/autodip-watch/config.toml"
             if line.startswith("ExecStart=") else line for line in text.splitlines()]
    unit = tmp_path / "autodip-watch.service"
    unit.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=120)
    # verify exits 0 on unknown keys and bad values but prints them: those count too.
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if unit.name in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr
