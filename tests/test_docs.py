"""The documentation a user is pointed to exists: every repository path named in the
README, docs/ and the systemd files (links and `docs/...` mentions) resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
           *sorted((ROOT / "systemd").glob("*"))]


def _mentions(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)  # markdown links
    named = re.findall(r"(?<![\w/.])((?:docs|systemd|bench|calibration|scripts)/[\w.-]+\.(?:md|service|toml|py|sh))",
                       text)
    return [m for m in links if not re.match(r"[a-z]+:", m)] + named


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_files_exist(source):
    missing = []
    for mention in _mentions(source):
        candidates = [(source.parent / mention), ROOT / mention]
        if not any(candidate.exists() for candidate in candidates):
            missing.append(mention)
    assert not missing, f"{source.relative_to(ROOT)} names files that do not exist: {missing}"


def test_the_unit_points_to_the_service_guide():
    unit = (ROOT / "systemd" / "autodip-watch.service").read_text(encoding="utf-8")
    assert "docs/service.md" in unit and (ROOT / "docs" / "service.md").is_file()
    assert "RequiresMountsFor=" in unit
