"""Every constrained attribute of the OME model, found by introspecting ome-types' pydantic
classes, and OME-TIFF files with one such attribute set to a value the model rejects.

The enumeration is independent of the code under test (autodip_watch.ome_repair): it
walks ``ome_types.model`` from ``OME`` down through every element field and lists each
XML attribute whose type can reject a value: enums, numbers with bounds (``Gt``/``Ge``/
``Lt``/``Le`` metadata), patterns (IDs, references, UUIDs) and colours.
"""

from __future__ import annotations

import collections
import enum
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import ome_types
from lxml import etree
from ome_types import model
from pydantic import BaseModel

NS = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"
#: Element edges not used to reach a class: they change what the file is (a BinaryOnly
#: file is a member of a set without metadata; BinData/MetadataOnly in our Pixels would
#: replace its TiffData). BinData is reached through ROI Mask instead.
EXCLUDED_EDGES = {("OME", "BinaryOnly"), ("Pixels", "BinData"), ("Pixels", "MetadataOnly")}


def _flatten(annotation) -> list:
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        return [k for a in typing.get_args(annotation) for k in _flatten(a)]
    return [annotation]


def _models(info) -> list[type[BaseModel]]:
    return [k for k in _flatten(info.annotation) if isinstance(k, type) and issubclass(k, BaseModel)]


def _extra(info) -> dict:
    return info.json_schema_extra or {}


@dataclass(frozen=True)
class Step:
    field: str        # python field name on the parent
    xml: str          # element name
    cls: type


def paths_from_ome() -> dict[type, list[Step]]:
    """Shortest element path from OME to every reachable model class (breadth first)."""
    paths: dict[type, list[Step]] = {model.OME: []}
    queue = collections.deque([model.OME])
    while queue:
        cls = queue.popleft()
        for name, info in cls.model_fields.items():
            extra = _extra(info)
            if extra.get("type") != "Element":
                continue
            if (cls.__name__, extra.get("name")) in EXCLUDED_EDGES:
                continue
            for child in _models(info):
                if child not in paths:
                    paths[child] = paths[cls] + [Step(name, extra["name"], child)]
                    queue.append(child)
    return paths


@dataclass(frozen=True)
class Case:
    cls: type
    attribute: str    # XML attribute name
    bad: str
    category: str     # enum, bound, id, reference, uuid, colour

    @property
    def id(self) -> str:
        return f"{self.cls.__name__}.{self.attribute}={self.bad}"


def _bad_number(info, kind) -> str | None:
    for item in info.metadata:
        for attribute, offset in (("gt", 0), ("ge", -1), ("lt", 0), ("le", 1)):
            bound = getattr(item, attribute, None)
            if bound is not None:
                value = bound + offset
                return str(int(value)) if kind is int else f"{float(value):g}"
    return None


def constrained_cases() -> list[Case]:
    """One case per constrained attribute of every class reachable from OME."""
    from ome_types.model import Reference

    cases = []
    for cls in paths_from_ome():
        for name, info in cls.model_fields.items():
            extra = _extra(info)
            if extra.get("type") != "Attribute":
                continue
            xml = extra.get("name", name)
            kinds = [k for k in _flatten(info.annotation) if k is not type(None)]
            kind = kinds[0]
            if isinstance(kind, type) and issubclass(kind, enum.Enum):
                cases.append(Case(cls, xml, "NotInTheVocabulary", "enum"))
            elif kind in (int, float) and info.metadata:
                bad = _bad_number(info, kind)
                if bad is not None:
                    cases.append(Case(cls, xml, bad, "bound"))
            elif extra.get("pattern") and xml == "ID":
                category = "reference" if issubclass(cls, Reference) else "id"
                cases.append(Case(cls, xml, "not a valid id", category))
            elif extra.get("pattern") and "uuid" in extra["pattern"]:
                cases.append(Case(cls, xml, "not-a-uuid", "uuid"))
            elif getattr(kind, "__name__", "") == "Color":
                cases.append(Case(cls, xml, "not-a-colour", "colour"))
    return cases


# --------------------------------------------------------------------------- minimal instances

def _value_for(info, kind):
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return next(iter(kind))
    if kind is int:  # the lowest allowed value (a BinData Length of 0 needs no data)
        return next((int(getattr(m, "ge")) for m in info.metadata
                     if getattr(m, "ge", None) is not None), 1)
    if kind is float:
        return 1.0
    if kind is bool:
        return False
    if kind is bytes:
        return bytes(20)
    if kind is datetime:
        return datetime(2024, 5, 1, 10, 0, 0)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return minimal(kind)
    extra = _extra(info)
    if extra.get("pattern") and "uuid" in extra["pattern"]:
        return "urn:uuid:6b0d0c55-2f0e-4c1a-9d55-5a0c1d7a0001"
    if extra.get("name") == "Points":
        return "0,0 1,1"
    return "x"


def minimal(cls: type[BaseModel]) -> BaseModel:
    """A valid instance of ``cls`` with only its required fields set (plus what the XSD
    requires and the model does not: a shape in an ROI, data in a BinaryFile)."""
    kwargs = {}
    if cls is model.ROI:
        kwargs["union"] = model.ROI.Union(rectangles=[minimal(model.Rectangle)])
    if cls is model.BinaryFile:
        kwargs["bin_data"] = model.BinData(length=0, big_endian=False, value=b"")
    for name, info in cls.model_fields.items():
        needs_item = any((getattr(m, "min_length", None) or 0) > 0 for m in info.metadata)
        if needs_item and _models(info):  # a list that must not be empty (ROIRef of a
            kwargs[name] = [minimal(_models(info)[0])]  # MicrobeamManipulation)
        elif info.is_required():
            kind = [k for k in _flatten(info.annotation) if k is not type(None)][0]
            kwargs[name] = _value_for(info, kind)
    return cls(**kwargs)


def base_ome(file_name: str, file_uuid: str, size: int = 32) -> model.OME:
    """One 2-D uint16 image whose single TiffData points at IFD 0 of ``file_name``."""
    pixels = model.Pixels(
        id="Pixels:0", dimension_order="XYZCT", type="uint16", size_x=size, size_y=size,
        size_z=1, size_c=1, size_t=1, physical_size_x=0.1, physical_size_y=0.1,
        channels=[model.Channel(id="Channel:0:0", name="DAPI", samples_per_pixel=1)],
        tiff_data_blocks=[model.TiffData(ifd=0, plane_count=1, uuid=model.TiffData.UUID(
            value=file_uuid, file_name=file_name))],
        planes=[model.Plane(the_z=0, the_c=0, the_t=0)])
    return model.OME(uuid=file_uuid, images=[model.Image(id="Image:0", name="kinds", pixels=pixels)])


def ome_with(cls: type[BaseModel], file_name: str, file_uuid: str) -> tuple[model.OME, list[tuple[str, bool]]]:
    """``base_ome`` holding one instance of ``cls``; returns the model and the XML path to
    it as (element name, reuse the first existing one) steps."""
    ome = base_ome(file_name, file_uuid)
    path = paths_from_ome()[cls]
    parent = ome
    route = []
    for step in path:
        value = getattr(parent, step.field)
        if isinstance(value, list):
            existing = [v for v in value if isinstance(v, step.cls)]
            if existing:
                child, reuse = existing[0], True
            else:
                child, reuse = minimal(step.cls), False
                value.append(child)
        elif value is not None and isinstance(value, step.cls):
            child, reuse = value, True
        else:
            child, reuse = minimal(step.cls), False
            setattr(parent, step.field, child)
            if step.cls is model.External:  # a BinaryFile holds External or BinData
                parent.bin_data = None
        route.append((step.xml, reuse))
        parent = child
    return ome, route


def corrupted_xml(case: Case, file_name: str, file_uuid: str) -> str:
    """OME-XML of ``base_ome`` plus ``case.cls``, with ``case.attribute`` set to ``case.bad``."""
    ome, route = ome_with(case.cls, file_name, file_uuid)
    root = etree.fromstring(ome_types.to_xml(ome).encode("utf-8"))
    element = root
    for name, reuse in route:
        found = element.findall(NS + name)
        element = found[0] if reuse else found[-1]
    element.set(case.attribute, case.bad)
    return etree.tostring(root, encoding="unicode")


def write_case(folder: Path, case: Case, name: str | None = None) -> Path:
    """An OME-TIFF (32x32 uint16, noisy) whose OME-XML carries the case's bad value."""
    import tifffile

    name = name or f"{case.cls.__name__}-{case.attribute}.ome.tif"
    path = Path(folder) / name
    file_uuid = "urn:uuid:0e0e0e0e-1111-4222-8333-444444444444"
    xml = corrupted_xml(case, path.name, file_uuid)
    rng = np.random.default_rng(len(case.id))
    plane = (rng.poisson(200, (32, 32)) + np.linspace(0, 400, 32)).astype(np.uint16)
    tifffile.imwrite(path, plane, description=xml.encode("utf-8"), metadata=None)
    return path
