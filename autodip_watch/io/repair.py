"""Lenient OME-XML: repair values the schema's types reject but whose meaning is clear.

Acquisition software and converters write OME-XML that a strict reader refuses over
details: ``PhysicalSizeX="0.0"`` (an uncalibrated size written as zero), enum values
from newer schema versions or from a vendor (``AcquisitionMode="Lightsheet"``), IDs
that break the ``Kind:N`` pattern (Micro-Manager's ``Detector ID="Multi Camera"``),
units spelled ``micron``. Bio-Formats reads such files with warnings; so do we.

:func:`repair_tree` walks the XML tree alongside the ome-types model (the pydantic
classes in :mod:`ome_types.model` are the schema: each field's XML name, type, enum and
numeric bounds come from them, not from a hand-written list) and, for every value the
model would reject:

- an enum value outside the vocabulary: matched ignoring case and punctuation
  (``widefield`` -> ``WideField``), else mapped to ``Other`` where the enum has it, else
  dropped (the attribute is left unset); a unit spelled differently (``micron``, ``um``,
  ``sec``, ``degC``) is parsed with pint and the value converted to an OME unit;
- a number out of range or not a number (``PhysicalSizeX="0.0"``, ``Attenuation="1.5"``):
  dropped;
- an invalid ID: made valid as ``Kind:<old value>`` (whitespace replaced), with every
  reference to it rewritten the same way, so ``Detector ID="Left-EMCCD"`` becomes
  ``Detector:Left-EMCCD`` and the camera keeps its name (an empty ``Name`` gets the old
  ID too);
- an invalid UUID: replaced by a name-based UUID of the old text (the same old text
  always gives the same UUID, so a file's ``TiffData`` UUIDs still match its own);
- a required value that is invalid: repaired where the meaning is known (``Pixels``
  sizes and pixel type from the TIFF pages, ``DimensionOrder`` XYZCT), otherwise the
  element that needs it is dropped (a ``Plane`` with ``TheZ="-1"``).

Every repair is reported as one warning naming the element, the attribute, the value
and what was done. Reference: OME Data Model 2016-06 (``ome-2016-06.xsd``); Bio-Formats
drops non-positive physical sizes the same way (ome/bioformats#2073).
"""

from __future__ import annotations

import enum
import re
import types
import typing
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache

from .units import repair_unit

__all__ = ["repair_tree"]

OME_NS = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"
#: Namespace for name-based UUIDs of repaired UUID values.
_UUID_NAMESPACE = uuid.UUID("6f1c5b1e-3c43-4f1e-9a63-0a7d0d3f2e13")
_UUID_PATTERN = re.compile(r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                           r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


# --------------------------------------------------------------------------- the model as a schema

@dataclass
class _Field:
    name: str          # python field name
    xml: str           # XML attribute or element name
    kind: str          # "attribute", "element" (model), "value" (simple-typed element), "text"
    required: bool
    types: tuple       # non-None annotation types
    metadata: tuple
    pattern: str | None = None
    default: object = None

    @property
    def enum(self) -> type[enum.Enum] | None:
        return next((t for t in self.types if isinstance(t, type) and issubclass(t, enum.Enum)), None)


@dataclass
class _Schema:
    attributes: dict[str, _Field] = field(default_factory=dict)
    children: dict[str, list[tuple[_Field, type]]] = field(default_factory=dict)
    values: dict[str, _Field] = field(default_factory=dict)
    text: _Field | None = None


def _flatten(annotation) -> list:
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType):
        out = []
        for argument in typing.get_args(annotation):
            out.extend(_flatten(argument))
        return out
    return [annotation]


def _is_model(kind) -> bool:
    from pydantic import BaseModel

    return isinstance(kind, type) and issubclass(kind, BaseModel)


@cache
def _schema(cls) -> _Schema:
    schema = _Schema()
    for name, info in cls.model_fields.items():
        extra = info.json_schema_extra or {}
        kinds = tuple(k for k in _flatten(info.annotation) if k is not type(None))
        xml_type = extra.get("type")
        spec = _Field(name=name, xml=extra.get("name", name), kind="", required=info.is_required(),
                      types=kinds, metadata=tuple(info.metadata), pattern=extra.get("pattern"),
                      default=info.default)
        if xml_type == "Attribute":
            spec.kind = "attribute"
            schema.attributes[spec.xml] = spec
        elif xml_type == "Element":
            models = [k for k in kinds if _is_model(k)]
            if models:
                spec.kind = "element"
                schema.children.setdefault(spec.xml, []).extend((spec, m) for m in models)
            else:
                spec.kind = "value"
                schema.values[spec.xml] = spec
        elif xml_type is None and name == "value" and not any(_is_model(k) for k in kinds):
            spec.kind = "text"
            schema.text = spec
    return schema


def _id_prefix(pattern: str) -> str | None:
    """``Detector`` from the ID pattern ``(urn:lsid:...:Detector:\\S+)|(Detector:\\S+)``."""
    match = re.search(r"\|\((\w+):\\S\+\)$", pattern)
    return match.group(1) if match else None


def _is_reference(cls) -> bool:
    from ome_types.model import Reference

    return issubclass(cls, Reference)


# --------------------------------------------------------------------------- checking one value

def _bounds_text(metadata) -> str:
    parts = []
    for item in metadata:
        for attribute, word in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(item, attribute, None)
            if value is not None:
                parts.append(f"{word} {value:g}")
    return " and ".join(parts)


def _check(spec: _Field, text: str) -> str | None:
    """None when ``text`` is a valid value of ``spec``, else why it is not."""
    kind = spec.types[0] if spec.types else str
    enum_type = spec.enum
    if enum_type is not None:
        if text in {member.value for member in enum_type}:
            return None
        return f"not a {enum_type.__name__} value"
    if spec.pattern is not None:
        if re.fullmatch(spec.pattern, text):
            return None
        return "does not match the schema's pattern"
    if kind is bool:
        return None if text.strip() in ("true", "false", "1", "0") else "not a boolean"
    if kind in (int, float):
        try:
            number = int(text) if kind is int else float(text)
        except ValueError:
            return f"not {'an integer' if kind is int else 'a number'}"
        if kind is float and number != number:
            return "not a number"
        for item in spec.metadata:
            for attribute, test in (("gt", lambda a, b: a > b), ("ge", lambda a, b: a >= b),
                                    ("lt", lambda a, b: a < b), ("le", lambda a, b: a <= b)):
                bound = getattr(item, attribute, None)
                if bound is not None and not test(number, bound):
                    return f"out of range (must be {_bounds_text(spec.metadata)})"
        return None
    if kind is datetime:
        try:
            datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            return "not an ISO 8601 date and time"
        return None
    if kind is bytes:
        return None if re.fullmatch(r"\s*[0-9a-fA-F]{40}\s*", text) else "not 40 hexadecimal digits"
    if getattr(kind, "__name__", "") == "Color":
        try:
            value = int(text)
        except ValueError:
            return "not an integer RGBA colour"
        return None if -(1 << 31) <= value < (1 << 32) else "out of the 32-bit RGBA range"
    return None


def _squash(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def _enum_match(enum_type: type[enum.Enum], text: str) -> str | None:
    """The vocabulary value ``text`` means, ignoring case and punctuation."""
    wanted = _squash(text)
    for member in enum_type:
        if _squash(member.value) == wanted or _squash(member.name) == wanted:
            return member.value
    return None


def _pixel_type(text: str) -> str | None:
    """OME PixelType for a NumPy-style type name (``float32``, ``UINT16``, ``<u2``)."""
    import numpy as np

    try:
        dtype = np.dtype(text.strip().lower())
    except TypeError:
        return None
    names = {"f4": "float", "f8": "double", "c8": "complex", "c16": "double-complex",
             "b1": "bit"}
    key = f"{dtype.kind}{dtype.itemsize}"
    if key in names:
        return names[key]
    if dtype.kind in "iu":
        return f"{'u' if dtype.kind == 'u' else ''}int{dtype.itemsize * 8}"
    return None


# --------------------------------------------------------------------------- the walk

def _local(tag) -> str | None:
    if not isinstance(tag, str):
        return None  # comments, processing instructions
    return tag[len(OME_NS):] if tag.startswith(OME_NS) else None


class _Repair:
    def __init__(self, hints: Mapping[str, object]) -> None:
        self.hints = dict(hints)
        self.notes: list[str] = []
        self.defined: set[tuple[str, str]] = set()      # (pattern, valid ID) defined
        self.invalid: list[tuple[str, str, str]] = []   # (pattern, invalid ID, class)
        self.renamed: dict[tuple[str, str], str] = {}
        self.drop: list[tuple[object, object, str]] = []

    # ---- pass 1: IDs
    def collect(self, element, cls) -> None:
        schema = _schema(cls)
        spec = schema.attributes.get("ID")
        if spec is not None and spec.pattern:
            value = element.get("ID")
            if value is not None and not _is_reference(cls):
                if re.fullmatch(spec.pattern, value):
                    self.defined.add((spec.pattern, value))
                else:
                    self.invalid.append((spec.pattern, value, cls.__name__))
        for child in element:
            for child_cls in self._child_classes(schema, child):
                self.collect(child, child_cls)

    def plan_ids(self) -> None:
        for pattern, old, kind in self.invalid:
            self._new_id(pattern, old, kind)

    def _new_id(self, pattern: str, old: str, kind: str | None = None) -> str:
        key = (pattern, old)
        if key in self.renamed:
            return self.renamed[key]
        body = re.sub(r"\s+", "_", old.strip()) or "repaired"
        # the model's pattern names the kind; where it does not (ROI: any non-space
        # text, while the XSD wants Kind:N), the class name does
        prefix = _id_prefix(pattern) or kind
        candidate = f"{prefix}:{body}" if prefix else body
        number = 1
        base = candidate
        while (pattern, candidate) in self.defined or not re.fullmatch(pattern, candidate):
            number += 1
            candidate = f"{base}_{number}"
            if number > 1000:
                break
        self.defined.add((pattern, candidate))
        self.renamed[key] = candidate
        return candidate

    @staticmethod
    def _child_classes(schema: _Schema, child) -> list:
        name = _local(child.tag)
        entries = schema.children.get(name, []) if name else []
        return [cls for _, cls in entries][:1]

    # ---- pass 2: values
    def where(self, element, cls) -> str:
        ident = element.get("ID")
        name = _local(element.tag) or cls.__name__
        return f"{name} {ident}" if ident else name

    def visit(self, element, cls, ancestors: list, context: str) -> None:
        schema = _schema(cls)
        here = self.where(element, cls)
        label = f"{context}/{here}" if context and not element.get("ID") else here
        spec = schema.attributes.get("ID")
        if _is_reference(cls) and spec is not None and spec.pattern and ancestors:
            value = element.get("ID")
            if value is not None and not re.fullmatch(spec.pattern, value) and \
                    (spec.pattern, value) in self.renamed:
                new = self.renamed[(spec.pattern, value)]
                element.set("ID", new)
                self.notes.append(f"OME-XML {label}: reference ID={_quote(value)} does not "
                                  f"match the schema's pattern; now {new}, as the element "
                                  f"it refers to")
            elif value is not None and (spec.pattern, value) not in self.defined:
                # a reference to nothing makes the document invalid (XSD keyref)
                self.drop_element(element, ancestors, f"OME-XML {label}: reference "
                                                      f"ID={_quote(value)} names no element")
                return
        for xml_name, spec in schema.attributes.items():
            text = element.get(xml_name)
            if text is None:
                continue
            problem = _check(spec, text)
            if problem is None:
                continue
            if not self.fix_attribute(element, cls, ancestors, spec, text, problem, label):
                return  # the element was dropped
        for xml_name, spec in schema.values.items():
            for child in element.findall(OME_NS + xml_name):
                text = child.text or ""
                problem = _check(spec, text)
                if problem is not None:
                    self.notes.append(f"OME-XML {label}: {xml_name} {_quote(text)} {problem}; dropped")
                    self.drop.append((element, child, ""))
        if schema.text is not None and element.text is not None:
            spec = schema.text
            problem = _check(spec, element.text)
            if problem is not None and spec.pattern and "uuid" in spec.pattern:
                new = _repaired_uuid(element.text)
                self.notes.append(f"OME-XML {label}: UUID {_quote(element.text)} {problem}; "
                                  f"replaced by {new}")
                element.text = new
        for child in list(element):
            for child_cls in self._child_classes(schema, child):
                self.visit(child, child_cls, ancestors + [(element, cls)], label)

    def fix_attribute(self, element, cls, ancestors: list, spec: _Field, text: str,
                      problem: str, label: str) -> bool:
        """Repair one invalid attribute; False when the element itself had to go."""
        what = f"OME-XML {label}: {spec.xml}={_quote(text)} {problem}"
        xml = spec.xml
        if spec.pattern and xml == "ID":
            kind = cls.__name__[:-3] if cls.__name__.endswith("Ref") else cls.__name__
            new = self._new_id(spec.pattern, text, kind)
            element.set("ID", new)
            name_spec = _schema(cls).attributes.get("Name")
            kept = ""
            if name_spec is not None and not element.get("Name") and not _is_reference(cls):
                element.set("Name", text)
                kept = f"; Name={_quote(text)} keeps the old ID"
            self.notes.append(f"{what}; now {new}{kept}")
            return True
        if spec.pattern and "uuid" in spec.pattern:
            new = _repaired_uuid(text)
            element.set(xml, new)
            self.notes.append(f"{what}; replaced by {new}")
            return True
        enum_type = spec.enum
        if enum_type is not None:
            matched = _enum_match(enum_type, text)
            if matched is None and enum_type.__name__.startswith("Units") \
                    and self._fix_unit(element, spec, text, what):
                return True
            if matched is None and cls.__name__ == "Pixels" and xml == "Type":
                matched = _pixel_type(text) or self.hints.get("Type")
            if matched is None and cls.__name__ == "Pixels" and xml == "DimensionOrder":
                matched = "XYZCT"
            if matched is not None:
                element.set(xml, str(matched))
                self.notes.append(f"{what}; read as {matched}")
                return True
            if any(member.value == "Other" for member in enum_type):
                element.set(xml, "Other")
                self.notes.append(f"{what}; read as Other")
                return True
        if not spec.required:
            del element.attrib[xml]
            self.notes.append(f"{what}; dropped")
            return True
        if cls.__name__ == "Pixels" and xml.startswith("Size"):
            letter = xml[-1]
            value = self.hints.get(xml)
            if value is None and letter == "C":
                channels = element.findall(OME_NS + "Channel")
                samples = channels[0].get("SamplesPerPixel", "1") if channels else "1"
                value = max(1, len(channels) * (int(samples) if samples.isdigit() else 1))
            if value is None:
                value = 1
            element.set(xml, str(value))
            source = "the TIFF pages" if xml in self.hints else "the default"
            self.notes.append(f"{what}; {xml}={value} from {source}")
            return True
        if cls.__name__ == "Pixels" and xml == "Type":
            fallback = "uint16"
            element.set(xml, fallback)
            self.notes.append(f"{what}; no pixels to tell the type, shown as {fallback}")
            return True
        if not ancestors:
            return True  # the root stays; the parser will say what is wrong
        self.drop_element(element, ancestors, what)
        return False

    def _fix_unit(self, element, spec: _Field, text: str, what: str) -> bool:
        """Repair an unknown unit: read it as a known one (converting its value where
        needed) or, when nobody can read it, drop it with its value. False when the unit
        attribute has no value beside it and could not be read."""
        xml = spec.xml
        value_name = xml[:-4] if xml.endswith("Unit") else None
        repaired = repair_unit(spec.enum, getattr(spec.default, "value", None), text,
                               element.get(value_name) if value_name else None)
        if repaired is not None:
            unit, converted = repaired
            element.set(xml, unit)
            if converted is not None and value_name:
                element.set(value_name, converted)
                self.notes.append(f"{what}; {value_name} converted to {converted} {unit}")
            else:
                self.notes.append(f"{what}; read as {unit}")
            return True
        if value_name and element.get(value_name) is not None:
            # a value in a unit nobody can read has no meaning: drop both
            del element.attrib[value_name]
            del element.attrib[xml]
            self.notes.append(f"{what}; unit unknown, {value_name} and {xml} dropped")
            return True
        return False

    def drop_element(self, element, ancestors: list, what: str) -> None:
        """Drop ``element``, or the nearest ancestor that its parent can do without."""
        dropped = [_local(element.tag)]
        while ancestors:
            parent, parent_cls = ancestors[-1]
            entries = _schema(parent_cls).children.get(_local(element.tag), [])
            needed = any(spec.required or any((getattr(m, "min_length", None) or 0) >= len(
                parent.findall(element.tag)) for m in spec.metadata) for spec, _ in entries)
            if not needed or len(ancestors) == 1:
                self.drop.append((parent, element, ""))
                break
            element = parent
            ancestors = ancestors[:-1]
            dropped.append(_local(element.tag))
        self.notes.append(f"{what}; the {' and its '.join(dropped)} element that needs it "
                          f"is dropped")


def _quote(text: str, limit: int = 60) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit - 1] + "…")


def _repaired_uuid(text: str) -> str:
    match = _UUID_PATTERN.search(text or "")
    if match:  # a valid UUID with spaces or text around it
        return match.group(0)
    return f"urn:uuid:{uuid.uuid5(_UUID_NAMESPACE, (text or '').strip())}"


def repair_tree(tree, hints: Mapping[str, object] | None = None) -> list[str]:
    """Repair, in place, every value of an OME 2016-06 XML tree the model would reject.

    Parameters
    ----------
    tree : lxml or ElementTree element or tree
        The document, already in the 2016-06 namespace (ome-types upgrades older ones
        before its ``transformations`` run).
    hints : mapping, optional
        What the pixel data say, used for required ``Pixels`` values that are invalid:
        ``Type`` (OME pixel type), ``SizeX``, ``SizeY``.

    Returns
    -------
    list of str
        One warning per repair, naming the element, attribute, old value and the repair.
    """
    from ome_types import model

    root = tree.getroot() if hasattr(tree, "getroot") else tree
    if _local(root.tag) != "OME":
        return []
    repair = _Repair(hints or {})
    repair.collect(root, model.OME)
    repair.plan_ids()
    repair.visit(root, model.OME, [], "")
    for parent, child, _ in repair.drop:
        try:
            parent.remove(child)
        except ValueError:  # already gone with an element dropped before it
            pass
    return repair.notes
