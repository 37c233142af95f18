"""Where two OME models differ: shows that an output differs from its input only where
intended (tests of the writer and the provenance)."""

from __future__ import annotations


def diff_ome(before, after, path: str = "") -> list[str]:
    """Dotted paths where two OME models differ (lists compared element by element).

    Used to show that an output differs from its input only where intended.
    """
    left = before.model_dump() if hasattr(before, "model_dump") else before
    right = after.model_dump() if hasattr(after, "model_dump") else after
    return _diff(left, right, path)


def _diff(left, right, path: str) -> list[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        out = []
        for key in list(left) + [k for k in right if k not in left]:
            out.extend(_diff(left.get(key), right.get(key), f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(left, list) and isinstance(right, list):
        if len(left) != len(right):
            return [path]
        out = []
        for index, (a, b) in enumerate(zip(left, right)):
            out.extend(_diff(a, b, f"{path}[{index}]"))
        return out
    return [] if left == right else [path]
