"""Build realistic OME-TIFF test files with tifffile + ome-types (no data is copied in)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import ome_types
import tifffile
from ome_types import model

OME_TYPES = {"uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "int8": "int8",
             "int16": "int16", "int32": "int32", "float32": "float", "float64": "double"}


def dimension_order(axes: str) -> str:
    """OME DimensionOrder of an array whose leading axes are ``axes`` minus Y, X, S."""
    present = "".join(a for a in reversed(axes) if a in "TZC")
    return "XY" + present + "".join(a for a in "ZCT" if a not in present)


def structured(shape, dtype, seed: int = 0) -> np.ndarray:
    """A smooth ramp plus noise, in the dtype's range: something worth denoising."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = max(info.min, -100), min(info.max, 4000)
    else:
        low, high = 0.0, 1.0
    ramp = np.linspace(low, high, shape[-1] if len(shape) else 1)
    values = ramp * np.ones(shape) + rng.normal(0, (high - low) * 0.05, shape)
    return np.clip(values, low, high).astype(dtype)


def ome_model(axes: str, shape, dtype, *, file_name: str, file_uuid: str | None = None,
              channels: list[dict] | None = None, image_name: str = "cells",
              description: str | None = None, instrument: model.Instrument | None = None,
              physical_size: float | None = 0.1625, planar: bool = False) -> model.OME:
    """An OME model describing ``shape`` (tifffile axes, e.g. ``TCZYX`` or ``YXS``)."""
    sizes = dict(zip(axes, shape))
    samples = sizes.get("S", 1)
    stored_c = sizes.get("C", 1)
    channels = channels or [{} for _ in range(stored_c)]
    file_uuid = file_uuid or f"urn:uuid:{uuid.uuid4()}"
    order = dimension_order(axes)
    n_pages = sizes.get("T", 1) * sizes.get("Z", 1) * stored_c
    planes = []
    for index in range(n_pages):
        position, rest = {}, index
        for letter in order[2:]:
            size = sizes.get(letter, 1)
            position[letter], rest = rest % size, rest // size
        planes.append(model.Plane(the_z=position["Z"], the_c=position["C"], the_t=position["T"],
                                  delta_t=float(index), exposure_time=50.0))
    pixels = model.Pixels(
        id="Pixels:0", dimension_order=order, type=OME_TYPES[np.dtype(dtype).name],
        size_x=sizes["X"], size_y=sizes["Y"], size_z=sizes.get("Z", 1),
        size_c=stored_c * samples, size_t=sizes.get("T", 1),
        physical_size_x=physical_size, physical_size_y=physical_size,
        interleaved=(not planar) if samples > 1 else None,
        channels=[model.Channel(id=f"Channel:0:{i}", samples_per_pixel=samples, **extra)
                  for i, extra in enumerate(channels)],
        tiff_data_blocks=[model.TiffData(ifd=0, plane_count=n_pages,
                                         uuid=model.TiffData.UUID(value=file_uuid,
                                                                  file_name=file_name))],
        planes=planes)
    image = model.Image(id="Image:0", name=image_name, description=description, pixels=pixels,
                        acquisition_date="2024-05-01T10:00:00")
    if instrument is not None:
        image.instrument_ref = model.InstrumentRef(id=instrument.id)
    return model.OME(uuid=file_uuid, creator="autodip-watch tests", images=[image],
                     instruments=[instrument] if instrument is not None else [])


def write_pages(path: Path, pages, page_shape, count: int, dtype, description: str | bytes | None,
                planar: bool = False) -> None:
    """Write ``count`` pages from an iterable, one IFD each, with ``description`` on the first."""
    samples = 1 if len(page_shape) == 2 else (page_shape[0] if planar else page_shape[-1])
    options = {}
    if samples > 1:
        options["planarconfig"] = "separate" if planar else "contig"
    with tifffile.TiffWriter(path, ome=False) as writer:
        writer.write(iter(pages), shape=(count, *page_shape), dtype=dtype,
                     photometric="rgb" if samples == 3 else "minisblack", metadata=None,
                     description=description.encode() if isinstance(description, str) else description,
                     **options)


def write_ome_tiff(path: Path, data: np.ndarray, axes: str, **ome_options) -> model.OME:
    """Write ``data`` (tifffile axes ``axes``) as a single-file OME-TIFF; return its model."""
    path = Path(path)
    planar = "S" in axes and axes.index("S") < axes.index("Y")
    ome = ome_model(axes, data.shape, data.dtype, file_name=path.name, planar=planar, **ome_options)
    page_ndim = 3 if "S" in axes else 2
    page_shape = data.shape[-page_ndim:]
    pages = data.reshape(-1, *page_shape)
    write_pages(path, pages, page_shape, len(pages), data.dtype, ome_types.to_xml(ome), planar)
    return ome


def billion_laughs(depth: int = 10) -> str:
    """The classic entity-expansion bomb, dressed as OME-XML."""
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, depth)]
    return ('<?xml version="1.0"?>\n<!DOCTYPE OME [\n' + "\n".join(entities) + "\n]>\n"
            '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
            f'<Image ID="Image:0" Name="&lol{depth - 1};"/></OME>')


def external_entity(target: str = "file:///etc/passwd") -> str:
    return ('<?xml version="1.0"?>\n<!DOCTYPE OME [<!ENTITY secret SYSTEM "' + target + '">]>\n'
            '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
            '<Image ID="Image:0" Name="&secret;"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" '
            'Type="uint8" SizeX="4" SizeY="4" SizeZ="1" SizeC="1" SizeT="1">'
            '<Channel ID="Channel:0:0"/><TiffData/></Pixels></Image></OME>')
