"""A before/after picture of a denoised file: what a person looks at before trusting it.

For one plane position (series, T, Z) and each chosen channel, a row of four panels: the
raw plane, the denoised plane, and a zoomed crop of each around the most structured
region. Raw and denoised share one contrast stretch per channel, taken from the raw
plane's percentiles, so that a difference in the picture is a difference in the data.
A caption gives, from the output's provenance, the group, transfer level, DIP
parameters and seconds of each channel, the device, and when it was made.

The figure is drawn with matplotlib (Agg backend, no display needed). ``autodip-watch
show`` writes it; the daemon writes a small one beside each output with ``[output]
preview = true``.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io.atomic import AtomicFile
from .io.reader import ImageFile
from .io.model import SeriesInfo
from .provenance import read_provenance
from .io.checksums import sha256_file
from .io.outputs import preview_path

__all__ = ["PreviewError", "PreviewFigure", "build_preview", "find_pair",
           "structured_region", "write_preview"]

#: Contrast stretch: these percentiles of the raw plane map to black and white.
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.8
#: Raw files up to this size are checked against the provenance's SHA-256 (larger ones
#: by size only: hashing many gigabytes would make `show` slow).
VERIFY_BYTES = 1 << 30


class PreviewError(ValueError):
    """The picture cannot be made; the message says why and what to give instead."""


@dataclass
class ChannelPanels:
    """One channel's row: the planes shown and where its panels lie in the PNG."""

    channel: int
    name: str | None
    raw: np.ndarray  # 2-D, the raw plane as stored
    denoised: np.ndarray  # 2-D, the output plane as stored
    low: float  # contrast stretch (raw percentiles), in the planes' units
    high: float
    crop: tuple[int, int, int, int]  # top, left, height, width of the zoomed region
    caption: str
    #: panel name ("raw", "denoised", "raw_crop", "denoised_crop") -> (x0, y0, x1, y1),
    #: pixel box of its image in the saved PNG (origin top left, just inside the frame;
    #: sizes may differ by a pixel between panels).
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)


@dataclass
class PreviewFigure:
    """The figure and what is in it (the tests read the panels back from the PNG)."""

    figure: object  # matplotlib.figure.Figure
    raw_path: Path
    output_path: Path
    series: int
    position: dict[str, int]  # T, Z of the plane shown
    channels: list[ChannelPanels]
    dpi: int
    notes: list[str] = field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        """Write the PNG atomically (temporary file, rename), readable as the umask allows."""
        return write_png(self.figure, Path(path), self.dpi)

    def close(self) -> None:
        from matplotlib import pyplot as plt

        plt.close(self.figure)


def _raw_of(output: Path, name: str, denoised_at: str | None) -> Path | None:
    """The raw file named ``name`` beside ``output``, else in the folder it was denoised
    in (the provenance's ``input.path``: outputs under an output root or ``--out``)."""
    candidates = [output.parent / name]
    if denoised_at:
        candidates.append(Path(denoised_at).parent / name)
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def find_pair(path: str | Path, raw: str | Path | None = None,
              denoised: str | Path | None = None, verify: bool = True
              ) -> tuple[Path, Path, list[str]]:
    """(raw file, output file, notes) for ``path``, which may be either.

    An output is recognised by its provenance record; its raw file is the one the record
    names, beside the output, else where it was denoised (``input.path``: an output root,
    ``denoise --out``), unless ``raw`` says where. For a raw file, the output is
    ``<stem>.autodip.ome.tif`` beside it unless ``denoised`` says where. With
    ``verify``, notes say when the raw file is not the one the output was made from
    (size, or SHA-256 for files up to :data:`VERIFY_BYTES`, differ from the provenance).
    Raises :class:`PreviewError` naming what is missing.
    """
    from .io.outputs import output_path_for

    path = Path(path)
    if not path.exists():
        raise PreviewError(f"{path} does not exist")
    if path.is_dir():
        raise PreviewError(f"{path} is a folder; give one image file (raw or denoised)")
    records = _provenance(path)
    if records:
        output = path
        entries = records[0]["entries"]
        if raw is None:
            name = entries.get("source.file")
            if not name:
                raise PreviewError(f"{path}: the provenance names no source file; give it "
                                   f"with --raw")
            raw = _raw_of(output, name, entries.get("input.path"))
            if raw is None:
                raise PreviewError(f"{path} was made from {name}, which is neither beside it "
                                   f"nor where it was denoised; give the raw file with --raw")
        raw = Path(raw)
    else:
        raw = path
        output = Path(denoised) if denoised is not None else output_path_for(raw)
        if not output.exists():
            raise PreviewError(f"no denoised output of {raw} at {output} (denoise it first, "
                               f"or give the output with --denoised)")
        records = _provenance(output)
        if not records:
            raise PreviewError(f"{output} has no autodip-watch provenance record: not an "
                               f"output of autodip-watch")
        entries = records[0]["entries"]
    notes = []
    if not Path(raw).exists():
        raise PreviewError(f"raw file {raw} does not exist")
    if verify:
        size = entries.get("source.size")
        actual = Path(raw).stat().st_size
        if size and str(actual) != size:
            notes.append(f"{raw} is not the file {output.name} was made from "
                         f"(size {actual}, provenance {size})")
        elif (entries.get("source.sha256") and actual <= VERIFY_BYTES
              and sha256_file(raw) != entries["source.sha256"]):
            notes.append(f"{raw} changed since {output.name} was made from it "
                         f"(SHA-256 differs)")
    return Path(raw), output, notes


def _provenance(path: Path) -> list[dict]:
    try:
        return read_provenance(path)
    except Exception:  # not a TIFF, no OME-XML, not ours: not an output
        return []


def structured_region(plane: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` window with the most gradient energy.

    Gradient energy (squared Sobel magnitude, averaged over the window) is high where
    there is structure: edges, filaments, nuclei borders. Measure it on the denoised
    plane, where noise does not count as structure.
    """
    from scipy import ndimage

    values = np.asarray(plane, dtype=np.float64)
    span = float(values.max() - values.min())
    if span > 0:
        values = (values - values.min()) / span
    energy = ndimage.sobel(values, axis=0) ** 2 + ndimage.sobel(values, axis=1) ** 2
    height, width = values.shape
    size_y, size_x = min(size, height), min(size, width)
    mean = ndimage.uniform_filter(energy, size=(size_y, size_x), mode="constant")
    # uniform_filter centres the window; keep centres whose window lies inside the plane
    top, left = size_y // 2, size_x // 2
    inside = mean[top:height - (size_y - 1 - top), left:width - (size_x - 1 - left)]
    row, column = np.unravel_index(int(np.argmax(inside)), inside.shape)
    return int(row), int(column)


def _select_planes(image: ImageFile, series: int, t: int | None, z: int | None,
                   channels: list[int] | None) -> tuple[dict[str, int], dict[int, np.ndarray]]:
    """The planes at (T, Z) of the chosen logical channels: {channel: plane}."""
    info: SeriesInfo = image.series[series]
    position = {"T": _index(info, "T", t, 0), "Z": _index(info, "Z", z, None)}
    count = info.channel_count
    wanted = list(range(count)) if channels is None else channels
    for channel in wanted:
        if not 0 <= channel < count:
            raise PreviewError(f"{image.path}: no channel {channel} (it has {count}: "
                               f"0..{count - 1})")
    planes: dict[int, np.ndarray] = {}
    for keys, page in image.pages(series):
        page_position = dict(keys[0].position)
        if any(page_position.get(axis, 0) != index for axis, index in position.items()):
            continue
        for key, plane in zip(keys, info.split_page(page)):
            if key.channel in wanted:
                planes[key.channel] = np.array(plane)
        if len(planes) == len(wanted):
            break
    return position, planes


def _index(info: SeriesInfo, axis: str, value: int | None, default: int | None) -> int:
    size = info.sizes.get(axis, 1)
    if value is None:
        return size // 2 if default is None else default  # Z: the middle of the stack
    if not 0 <= value < size:
        raise PreviewError(f"--{axis.lower()} {value} is outside the image (size {size}: "
                           f"0..{size - 1})")
    return value


def build_preview(path: str | Path, *, raw: str | Path | None = None,
                  denoised: str | Path | None = None, series: int = 0, t: int | None = None,
                  z: int | None = None, channels: list[int] | None = None,
                  small: bool = False, verify: bool = True) -> PreviewFigure:
    """The before/after figure of one plane position of a raw file and its output.

    ``path`` is the output (``.autodip.ome.tif``) or the raw file (see
    :func:`find_pair`). ``t`` defaults to 0, ``z`` to the middle of the stack,
    ``channels`` to all. ``small`` makes the daemon's preview (fewer dots per inch);
    ``verify`` checks the raw file against the provenance (see :func:`find_pair`).
    Raises :class:`PreviewError` for a missing file or a plane outside the image, and
    ``ImageReadError`` (a ``ValueError``) for a file that cannot be read.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)  # never a window: a daemon and ssh sessions have none
    from matplotlib import pyplot as plt

    raw_path, output_path, notes = find_pair(path, raw, denoised, verify)
    position, raw_planes, out_planes = _read_planes(raw_path, output_path, series, t, z,
                                                    channels)
    records = {record["image"]: record["entries"] for record in _provenance(output_path)}
    entries = records.get(series) or (next(iter(records.values())) if records else {})
    rows = sorted(raw_planes)
    if not rows:
        raise PreviewError(f"{raw_path}: no plane at T={position['T']}, Z={position['Z']}")

    dpi = 60 if small else 100
    panel_inches = 2.4 if small else 3.2
    fig_width = 4 * panel_inches
    font_points = 8 if small else 9
    where = ", ".join(f"{axis}={index}" for axis, index in position.items())
    header = (f"{raw_path.name} -> {output_path.name}   image {series}, {where}   "
              f"contrast: raw {LOW_PERCENTILE}-{HIGH_PERCENTILE} percentiles, same for both")
    made = (f"{entries.get('software', 'autodip-watch')} {entries.get('software.version', '')}"
            f" on {entries.get('device', '?')}, finished {entries.get('finished', '?')}")
    captions = [_channel_caption(entries, channel) for channel in rows]
    # Wrapped to the figure's width: a monospace character is about 0.6 em wide.
    columns = max(40, int(fig_width * 72 / (0.6 * font_points)) - 2)
    caption_lines = [wrapped for line in [header, made, *captions, *notes]
                     for wrapped in textwrap.wrap(line, columns, subsequent_indent="    ")]
    line_inches = 1.25 * font_points / 72
    fig_height = (len(rows) * (panel_inches + 0.35) + line_inches * len(caption_lines) + 0.6)
    figure, axes = plt.subplots(len(rows), 4, figsize=(fig_width, fig_height), dpi=dpi,
                                squeeze=False)
    bottom = (line_inches * len(caption_lines) + 0.2) / fig_height
    figure.subplots_adjust(left=0.01, right=0.99, top=1 - 0.45 / fig_height, bottom=bottom,
                           wspace=0.04, hspace=0.18)
    panels = [_draw_row(axes[row], channel, raw_planes[channel], out_planes[channel],
                        entries.get(f"channel.{channel}.name") or None, captions[row])
              for row, channel in enumerate(rows)]
    figure.text(0.01, 0.1 / fig_height, "\n".join(caption_lines), fontsize=font_points,
                family="monospace", va="bottom", ha="left", linespacing=1.1)
    figure.canvas.draw()
    figure_height_px = figure.bbox.height
    for row, panel in enumerate(panels):
        for column, key in enumerate(("raw", "denoised", "raw_crop", "denoised_crop")):
            # inside the frame line drawn around each panel
            image_box = axes[row][column].get_window_extent()
            panel.boxes[key] = (int(np.ceil(image_box.x0)) + 2,
                                int(np.ceil(figure_height_px - image_box.y1)) + 2,
                                int(np.floor(image_box.x1)) - 2,
                                int(np.floor(figure_height_px - image_box.y0)) - 2)
    return PreviewFigure(figure, raw_path, output_path, series, position, panels, dpi, notes)


def _read_planes(raw_path: Path, output_path: Path, series: int, t: int | None,
                 z: int | None, channels: list[int] | None):
    """The planes at one position of a raw file and of its output: (position, raw planes
    by channel, denoised planes by channel). Raises :class:`PreviewError` for an image
    that is not there or plane sizes that differ."""
    with ImageFile(raw_path) as raw_image, ImageFile(output_path) as out_image:
        if not 0 <= series < len(raw_image.series):
            raise PreviewError(f"{raw_path}: no image {series} (it has "
                               f"{len(raw_image.series)})")
        if len(out_image.series) <= series:
            raise PreviewError(f"{output_path}: no image {series}")
        position, raw_planes = _select_planes(raw_image, series, t, z, channels)
        _, out_planes = _select_planes(out_image, series, position["T"], position["Z"],
                                       channels)
        raw_info, out_info = raw_image.series[series], out_image.series[series]
        if (raw_info.sizes.get("Y"), raw_info.sizes.get("X")) != (
                out_info.sizes.get("Y"), out_info.sizes.get("X")):
            raise PreviewError(f"{output_path} and {raw_path} have different plane sizes; "
                               f"not a raw file and its output")
    return position, raw_planes, out_planes


def _draw_row(axes_row, channel: int, raw_plane: np.ndarray, out_plane: np.ndarray,
              name: str | None, caption: str) -> ChannelPanels:
    """One channel's four panels (raw, denoised, and a zoom of each on the most
    structured region), with the raw plane's contrast for both."""
    from matplotlib.patches import Rectangle

    low, high = (float(v) for v in np.percentile(raw_plane, [LOW_PERCENTILE,
                                                             HIGH_PERCENTILE]))
    if high <= low:
        high = low + 1.0
    height, width = raw_plane.shape
    size = max(16, min(128, min(height, width) // 4))
    top, left = structured_region(out_plane, size)
    crop = (top, left, min(size, height), min(size, width))
    views = [("raw", raw_plane, "raw"), ("denoised", out_plane, "denoised"),
             ("raw_crop", raw_plane[top:top + crop[2], left:left + crop[3]], "raw, zoom"),
             ("denoised_crop", out_plane[top:top + crop[2], left:left + crop[3]],
              "denoised, zoom")]
    for column, (_key, data, title) in enumerate(views):
        ax = axes_row[column]
        ax.imshow(data, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        label = f"ch {channel}" + (f" {name}" if name else "")
        ax.set_title(f"{label}: {title}", fontsize=9)
        if column < 2:  # where the zoom comes from
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), crop[3], crop[2], fill=False,
                                   edgecolor="#ffcc00", linewidth=1.2))
    return ChannelPanels(channel, name, raw_plane, out_plane, low, high, crop, caption)


def _channel_caption(entries: dict, channel: int) -> str:
    prefix = f"channel.{channel}."
    get = lambda key: entries.get(prefix + key, "")  # noqa: E731
    name = get("name")
    label = f"ch {channel}" + (f" '{name}'" if name else "")
    if get("policy") == "copy":
        return f"{label}: {get('microscope')}/{get('specimen')}: copied unchanged (not fluorescence)"
    if not get("group"):
        return f"{label}: no provenance for this channel"
    ran = get("iterations_run")  # the stable mode's extension may go past the count
    iterations = get("iterations") + (f" iterations (ran {ran})"
                                      if ran and ran != get("iterations") else " iterations")
    return (f"{label}: {get('microscope')}/{get('specimen')} -> group {get('group')} "
            f"(level {get('level')}), depth {get('depth')}, width {get('width')}, skip "
            f"{get('skip')}, {iterations}, seed {get('seed')}, "
            f"{float(get('seconds') or 0):.1f} s")


def write_png(figure, path: Path, dpi: int) -> Path:
    """Save ``figure`` as a PNG at ``path`` atomically; mode as the umask gives a new file.

    (``mkstemp`` makes 0600 files; a preview is for people, so it gets 0666 & ~umask.)
    """
    path = Path(path)
    target = AtomicFile(path)
    try:
        with open(target.temp, "wb") as handle:
            figure.savefig(handle, format="png", dpi=dpi)
        os.chmod(target.temp, 0o666 & ~_umask())
        target.publish()
    except BaseException:
        target.discard()
        raise
    return path


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (Umask: in
    /proc/self/status), because setting it even briefly races other threads' files."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_preview(output: str | Path, raw: str | Path | None = None) -> Path:
    """The daemon's preview: a small figure of the middle Z plane at T=0 of the first
    image, every channel, written atomically beside ``output`` (``x.autodip.preview.png``)."""
    # The daemon just made the output from this raw file, whose hash it checked.
    picture = build_preview(output, raw=raw, small=True, verify=False)
    try:
        return picture.save(preview_path(output))
    finally:
        picture.close()
