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


def _layout_tree() -> set[str]:
    """The package paths the README's layout block names (``autodip_watch/...``)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1]
    block = [b for b in section.split("```")[1::2] if b.lstrip().startswith("autodip_watch/")][0]
    named: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        token = line.split()[0]
        if not (token.endswith((".py", "/"))):
            continue  # a wrapped description
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "".join(part for _, part in stack) + token
        if path.startswith("autodip_watch/"):
            named.add(path.rstrip("/"))
        if token.endswith("/"):
            stack.append((indent, token))
    return named


def test_the_readme_layout_matches_the_tree():
    package = ROOT / "autodip_watch"
    actual = {str(p.relative_to(ROOT)) for p in package.rglob("*.py")
              if p.name not in ("__main__.py",) and "__pycache__" not in p.parts
              and not (p.name == "__init__.py" and p.parent != package)}
    actual |= {str(p.relative_to(ROOT)) for p in package.rglob("*")
               if p.is_dir() and p.name != "__pycache__"} | {"autodip_watch"}
    named = _layout_tree()
    assert named, "no layout block found"
    assert sorted(actual - named) == [], "in the tree, missing from README's layout"
    assert sorted(named - actual) == [], "in README's layout, not in the tree"
