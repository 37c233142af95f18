"""Units of physical sizes and times, as files spell them: parsed with pint.

Files write ``micron``, ``um``, ``\\u00B5m`` (ImageJ), ``sec``; pint reads them all once
:func:`normalise_unit` has undone the spellings it does not know.
"""

from __future__ import annotations

from functools import cache


@cache
def unit_registry():
    """The shared pint unit registry (built once; about half a second)."""
    import pint

    return pint.UnitRegistry()


def normalise_unit(text: str) -> str:
    """Unit text as pint reads it: ImageJ's escaped micro sign, Greek mu, ``micron``."""
    text = str(text).strip()
    text = text.replace("\\u00B5", "µ").replace("\\u00b5", "µ").replace("μ", "µ")
    lowered = text.lower()
    if lowered in ("micron", "microns", "micrometre", "micrometres"):
        return "micrometer"
    return text


def parse_unit(text: str):
    """A pint Unit for ``text``, or None."""
    try:
        registry = unit_registry()
        unit = registry.Unit(normalise_unit(text))
    except Exception:  # pint raises many kinds for text it cannot read
        return None
    return unit


def repair_unit(enum_type, default: str | None, text: str, value_text: str | None):
    """A unit spelled outside an OME unit vocabulary (``enum_type``), as
    ``(OME unit, converted value or None)``; None when it cannot be read.

    The same unit spelled another way keeps the value; another unit of the same
    dimension converts the value to ``default`` (else the vocabulary's first unit).
    """
    unit = parse_unit(text)
    if unit is None:
        return None
    registry = unit_registry()
    candidates = []
    for member in enum_type:
        candidate = parse_unit(member.value)
        if candidate is not None and candidate.dimensionality == unit.dimensionality:
            candidates.append((member.value, candidate))
    for value, candidate in candidates:  # the same unit, spelled another way
        try:
            if abs(registry.Quantity(1, unit).to(candidate).magnitude - 1) < 1e-12:
                return value, None
        except Exception:
            continue
    target = next((c for c in candidates if c[0] == default), candidates[0] if candidates else None)
    if target is None or value_text is None:
        return None
    try:
        converted = registry.Quantity(float(value_text), unit).to(target[1]).magnitude
    except Exception:
        return None
    return target[0], f"{converted:.10g}"
