"""What every settings model shares: strict types, located problems, relative paths.

Settings are pydantic models (DESIGN §5: CAREamics' ``config/``). Unknown keys are
refused, booleans and numbers are strict (``"yes"`` is not true, ``"10"`` is not ten),
and every problem of a document is reported at once, each with its location in the
document (``watch.0.settle_seconds``) and how to fix it: the field's example, or for an
unknown key the key it was probably meant to be. A model that cannot be built raises
:class:`ConfigError`, whether it came from a TOML file, the command line or Python.
"""

from __future__ import annotations

import difflib
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Strict,
                      StringConstraints, ValidationError, ValidationInfo)
from pydantic.fields import FieldInfo

from ..dip.modes import MODES
from ..metadata.labels import validate_microscope, validate_specimen

#: A number: TOML integers and floats, never a string or a boolean.
Number = Annotated[float, Strict()]
#: A whole number: TOML integers only.
Whole = Annotated[int, Strict()]
#: true or false, never ``"yes"`` or 1.
Flag = Annotated[bool, Strict()]
#: A non-empty string, surrounding whitespace dropped.
Text = Annotated[str, Strict(), StringConstraints(strip_whitespace=True, min_length=1)]


def _optional(check):
    return lambda value: None if value is None else check(value)


def _known_mode(name: str) -> str:
    if name not in MODES:
        raise ValueError(f"unknown fit mode {name!r}; choose from {', '.join(MODES)}")
    return name


#: A microscope label (``metadata.labels``), canonicalised; None: unset.
MicroscopeLabel = Annotated[Optional[Text], AfterValidator(_optional(validate_microscope))]
#: A specimen label (``metadata.labels``), canonicalised; None: unset.
SpecimenLabel = Annotated[Optional[Text], AfterValidator(_optional(validate_specimen))]
#: The name of a fit mode (``dip.modes.MODES``).
FitModeName = Annotated[Text, AfterValidator(_known_mode)]


def _lowered(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def lowercase(kind: Any) -> Any:
    """``kind`` (usually a ``Literal`` of choices) compared case-insensitively."""
    return Annotated[kind, BeforeValidator(_lowered)]


def _config_path(value: Any, info: ValidationInfo) -> Path:
    """A path from a settings document: ``~`` and ``$VARIABLES`` expanded; a relative path
    is relative to the document's folder (``context["base"]``), else the working folder."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a path string, got {value!r}")
    path = Path(os.path.expandvars(value.strip())).expanduser()
    if path.is_absolute():
        return path
    base = (info.context or {}).get("base")
    return Path(os.path.abspath(Path(base) / path if base is not None else path))


#: A file or folder named in a settings document.
ConfigPath = Annotated[Path, BeforeValidator(_config_path)]


@dataclass(frozen=True)
class Recorded:
    """Marks a settings field that each output's provenance records, under ``key``
    (``DenoiseSettings.provenance_record``)."""

    key: str


class ConfigError(ValueError):
    """Settings that cannot be used; ``problems`` lists every ``location: what to do``.

    ``str()`` is one line per problem under a header naming the ``source`` (the file,
    ``command line``, or the model).
    """

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


class Problems(ValueError):
    """Several problems found by one validator, each ``(location, message)`` with the
    location relative to the model that raised it ("" for the model itself)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{where}: {what}" if where else what
                                   for where, what in problems))


class Settings(BaseModel):
    """Base of every settings model: frozen, unknown keys refused, all problems at once."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              arbitrary_types_allowed=True)

    @classmethod
    def parse(cls, document: Any, base: str | Path | None = None, source: str = "config"):
        """Validate a settings document (parsed TOML, or the command line's options);
        relative paths are relative to ``base``.

        Raises :class:`ConfigError` with every problem, located, naming ``source``.
        (Building a model directly, ``Model(**values)``, raises pydantic's
        ``ValidationError``, also a ``ValueError``.)"""
        try:
            return cls.model_validate(document, context={"base": base})
        except ValidationError as error:
            raise ConfigError(problems_of(error, cls), source) from None


def problems_of(error: ValidationError, model: type[BaseModel]) -> list[str]:
    """Every error of ``error`` as ``location: what is wrong[, got X][ (e.g. key = value)]``."""
    problems: list[str] = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        where = ".".join(str(part) for part in loc)
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, Problems):
            for inner, message in cause.problems:
                located = ".".join(part for part in (where, inner) if part)
                problems.append(f"{located}: {message}" if located else message)
            continue
        message = _message(item, model, loc)
        problems.append(f"{where}: {message}" if where else message)
    return problems


_KINDS = {
    "bool_type": "must be true or false", "bool_parsing": "must be true or false",
    "int_type": "must be a whole number", "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number", "float_type": "must be a number",
    "float_parsing": "must be a number", "string_type": "must be a string",
    "string_too_short": "must be a non-empty string", "list_type": "must be a list",
    "tuple_type": "must be a list", "path_type": "must be a path string",
}


def _message(item: dict, model: type[BaseModel], loc: tuple) -> str:
    kind, ctx = item["type"], item.get("ctx") or {}
    owner, field = _field_at(model, loc)
    key = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        allowed = sorted(_keys(owner)) if owner is not None else []
        close = difflib.get_close_matches(key, allowed, n=1)
        return "unknown key; " + (f"did you mean {close[0]!r}?" if close else
                                  f"allowed keys: {', '.join(allowed)}")
    if kind == "missing":
        return "missing" + _example(key, field)
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", item["msg"]))
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        if len(loc) > 1 and isinstance(loc[-1], int):
            return f"must be a table written [[{loc[-2]}]]"
        return f"must be a table, written [{'.'.join(map(str, loc))}]"
    if kind == "literal_error":
        text = "must be one of " + ", ".join(map(str, _choices(field) or [ctx.get("expected")]))
    elif kind == "greater_than_equal":
        text = f"must be at least {_number(ctx['ge'])}"
    elif kind == "less_than_equal":
        text = f"must be at most {_number(ctx['le'])}"
    elif kind == "greater_than":
        text = f"must be more than {_number(ctx['gt'])}"
    elif kind == "less_than":
        text = f"must be less than {_number(ctx['lt'])}"
    else:
        text = _KINDS.get(kind, item["msg"])
    return f"{text}, got {item.get('input')!r}" + _example(key, field)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _example(key: str, field: FieldInfo | None) -> str:
    """`` (e.g. key = value)`` from the field's first example, written as TOML."""
    if field is None or not field.examples:
        return ""
    value = field.examples[0]
    text = ("true" if value is True else "false" if value is False else json.dumps(value)
            if not isinstance(value, (int, float)) else f"{value:g}")
    return f" (e.g. {key} = {text})"


def _keys(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def _field_at(model: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None,
                                                          FieldInfo | None]:
    """The model that owns the last part of ``loc``, and that part's field (if any)."""
    owner: type[BaseModel] | None = model
    field: FieldInfo | None = None
    for part in loc:
        if isinstance(part, int):
            continue
        if owner is None:
            return None, None
        field = next((f for name, f in owner.model_fields.items()
                      if part in (name, f.alias)), None)
        if field is None:
            return owner, None
        nested = _model_of(field.annotation)
        if nested is not None and part != loc[-1]:
            owner = nested
    return owner, field


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings model inside an annotation (``X``, ``X | None``, ``list[X]``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_of(argument)
        if found is not None:
            return found
    return None


def _choices(field: FieldInfo | None) -> list | None:
    """The ``Literal`` choices of a field's annotation."""
    if field is None:
        return None
    stack = [field.annotation]
    while stack:
        annotation = stack.pop()
        if typing.get_origin(annotation) is Literal:
            return list(typing.get_args(annotation))
        if typing.get_origin(annotation) in (typing.Union, types.UnionType, Annotated) or \
                typing.get_args(annotation):
            stack.extend(typing.get_args(annotation))
    return None
