"""Physical calibration and display settings that live outside OME-XML.

Many files state their pixel size only in the TIFF resolution tags (``XResolution`` in
pixels per ``ResolutionUnit``: inch, centimetre, or none) or in an ImageJ description
(``unit=nm``, ``spacing=0.3``, ``finterval=2.5``, slice labels, channel LUTs and display
ranges). This module reads them with tifffile's own parsers
(:meth:`tifffile.TiffPage.get_resolution`, :attr:`tifffile.TiffFile.imagej_metadata`)
and converts units with pint, so every spelling pint knows (``nm``, ``µm``, ``um``,
``micron``, ``\\u00B5m``, ``mm``, ``inch``...) is understood without a hand-made table.

Sizes are returned in micrometres (OME's default length unit) and seconds, with the
unit the file used kept for the output's OME where OME has it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .units import normalise_unit, unit_registry

#: Resolutions image editors write when nobody calibrated the image (dots per inch of a
#: screen): not a microscope's pixel size, so not taken as one.
SCREEN_DPI = (72.0, 96.0)


@dataclass
class Calibration:
    """What a TIFF says about physical size, time and display, besides OME.

    ``sizes`` maps X, Y, Z to micrometres; ``units`` the unit symbol the file used
    (an OME ``UnitsLength`` value, e.g. ``nm``) for each; ``time_increment`` is in
    seconds; ``channel_names``, ``channel_colors`` (``(r, g, b)`` 0-255) and
    ``display_ranges`` (``(min, max)`` in pixel values) are per stored channel, None
    where the file says nothing; ``notes`` say where each value came from.
    """

    sizes: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    time_increment: float | None = None
    channel_names: list[str | None] = field(default_factory=list)
    channel_colors: list[tuple[int, int, int] | None] = field(default_factory=list)
    display_ranges: list[tuple[float, float] | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def length_in_micrometres(value: float, unit: str) -> tuple[float, str] | None:
    """``value`` in ``unit`` as micrometres, plus the OME symbol of ``unit``; None when
    pint cannot read the unit or it is not a length."""
    from ome_types.model import UnitsLength

    registry = unit_registry()
    try:
        quantity = registry.Quantity(float(value), normalise_unit(unit))
        micrometres = quantity.to("micrometer").magnitude
    except Exception:  # pint: undefined unit, not a length, ...
        return None
    symbol = "µm"
    for member in UnitsLength:
        try:
            if registry.Unit(normalise_unit(member.value)) == quantity.units:
                symbol = member.value
                break
        except Exception:
            continue
    return float(f"{micrometres:.12g}"), symbol


def seconds(value: float, unit: str = "s") -> float | None:
    """``value`` in time ``unit`` as seconds, or None."""
    try:
        return float(unit_registry().Quantity(float(value), normalise_unit(unit)).to("second").magnitude)
    except Exception:
        return None


def _valid(value: float | None) -> bool:
    return value is not None and np.isfinite(value) and value > 0


def resolution_sizes(page) -> tuple[dict[str, float], list[str]]:
    """Pixel size (µm) from a page's resolution tags in a real ``ResolutionUnit``.

    ``ResolutionUnit`` none (or absent) says nothing physical; 72 and 96 dots per inch
    are editors' screen defaults and are ignored (with a note).
    """
    import tifffile

    notes: list[str] = []
    tags = page.tags
    if "XResolution" not in tags:
        return {}, notes
    unit = page.resolutionunit
    if unit in (tifffile.RESUNIT.NONE, None) or int(unit) == 1:
        return {}, notes
    try:
        raw_x, raw_y = page.get_resolution()
        per_um_x, per_um_y = page.get_resolution(tifffile.RESUNIT.MICROMETER)
    except (ValueError, TypeError, ZeroDivisionError, KeyError):
        return {}, notes
    unit_name = tifffile.RESUNIT(unit).name.lower()
    if unit == tifffile.RESUNIT.INCH and float(raw_x) in SCREEN_DPI:
        notes.append(f"TIFF resolution {float(raw_x):g} dots per inch is a screen default, "
                     f"not a pixel size; ignored")
        return {}, notes
    sizes = {}
    if _valid(per_um_x):
        sizes["X"] = 1.0 / float(per_um_x)
    if _valid(per_um_y):
        sizes["Y"] = 1.0 / float(per_um_y)
    if sizes:
        notes.append(f"pixel size {sizes.get('X', 0):.6g} x {sizes.get('Y', 0):.6g} µm from the "
                     f"TIFF resolution tags ({float(raw_x):g} pixels per {unit_name})")
    return sizes, notes


def _rgb_of_lut(lut) -> tuple[int, int, int] | None:
    array = np.asarray(lut)
    if array.ndim != 2 or 3 not in array.shape:
        return None
    if array.shape[0] != 3:
        array = array.T
    top = array[:, -1].astype(np.float64)
    if array.dtype.itemsize > 1 or top.max() > 255:
        top = top / max(1.0, float(np.iinfo(array.dtype).max) if array.dtype.kind in "iu" else 1.0) * 255
    return tuple(int(round(v)) for v in top)  # type: ignore[return-value]


def _label(text) -> str | None:
    if text is None:
        return None
    first = str(text).strip().splitlines()
    return first[0].strip() if first and first[0].strip() else None


def tiff_calibration(tif, page, channels: int, planes_per_channel: int = 1) -> Calibration:
    """Calibration of an ImageJ or plain TIFF series.

    Parameters
    ----------
    tif : tifffile.TiffFile
    page : tifffile.TiffPage
        The series' first page (its resolution tags).
    channels : int
        Stored channels of the series (ImageJ ``channels``); labels, LUTs and ranges
        are taken per channel.
    planes_per_channel : int
        Z x T, to tell whether every plane of a channel carries the same label.
    """
    calibration = Calibration(channel_names=[None] * channels, channel_colors=[None] * channels,
                              display_ranges=[None] * channels)
    metadata = tif.imagej_metadata if tif.is_imagej else None
    unit = str(metadata.get("unit", "")).strip() if metadata else ""
    if metadata and unit and unit.lower() not in ("pixel", "pixels", "px"):
        try:
            per_unit_x, per_unit_y = page.get_resolution()
        except (ValueError, TypeError, ZeroDivisionError):
            per_unit_x = per_unit_y = None
        for letter, per_unit in (("X", per_unit_x), ("Y", per_unit_y)):
            if per_unit and float(per_unit) > 0 and "XResolution" in page.tags:
                converted = length_in_micrometres(1.0 / float(per_unit), unit)
                if converted and _valid(converted[0]):
                    calibration.sizes[letter], calibration.units[letter] = converted
        spacing = metadata.get("spacing")
        if spacing:
            converted = length_in_micrometres(float(spacing), str(metadata.get("zunit", unit)))
            if converted and _valid(converted[0]):
                calibration.sizes["Z"], calibration.units["Z"] = converted
        if calibration.sizes:
            calibration.notes.append(
                "physical size from the ImageJ description (unit " + repr(unit) + "): " +
                ", ".join(f"{k}={v:.6g} µm" for k, v in calibration.sizes.items()))
        elif unit:
            calibration.notes.append(f"ImageJ unit {unit!r} is not a length pint can read; "
                                     f"no physical size")
    if "X" not in calibration.sizes:
        sizes, notes = resolution_sizes(page)
        calibration.notes.extend(notes)
        for letter, value in sizes.items():
            calibration.sizes[letter] = value
            calibration.units[letter] = "µm"
    if metadata:
        interval = metadata.get("finterval")
        if interval:
            value = seconds(float(interval), str(metadata.get("tunit", "s")))
            if _valid(value):
                calibration.time_increment = value
        labels = metadata.get("Labels") or []
        if labels and channels:
            for channel in range(channels):
                own = labels[channel::channels] if channels > 1 else labels
                names = {_label(text) for text in own[:planes_per_channel]}
                if len(names) == 1 and None not in names:
                    calibration.channel_names[channel] = names.pop()
        luts = metadata.get("LUTs") or []
        for channel, lut in enumerate(luts[:channels]):
            calibration.channel_colors[channel] = _rgb_of_lut(lut)
        ranges = metadata.get("Ranges")
        if ranges and len(ranges) >= 2 * channels:
            for channel in range(channels):
                calibration.display_ranges[channel] = (float(ranges[2 * channel]),
                                                       float(ranges[2 * channel + 1]))
        elif metadata.get("min") is not None and metadata.get("max") is not None:
            for channel in range(channels):
                calibration.display_ranges[channel] = (float(metadata["min"]), float(metadata["max"]))
    return calibration
