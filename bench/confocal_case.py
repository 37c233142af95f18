"""The 3-channel 512x512 confocal BPAE case of issue 7, end to end through the CLI.

Builds a 3-channel confocal OME-TIFF (MitoTracker, Phalloidin, DAPI; acquisition mode
LaserScanningConfocalMicroscopy) in a temporary folder, runs ``autodip-watch denoise``
on it as a user would, and reports the wall time of the whole command, the seconds of
each plane and the PSNR of each channel against its ground truth.

    python bench/confocal_case.py -- --device cuda
    python bench/confocal_case.py -- --device cuda --batching off

The data: ``../shared/data`` holds one real confocal BPAE pair (mitochondria, FMD
``image_R_1``). There is no confocal actin or nucleus pair, so those two channels carry
the FMD widefield BPAE composite's actin (G) and nucleus (B) planes, labelled confocal.
The timing depends only on the shapes and the groups (confocal/actin d6/w256/s4 1300
it, confocal/mito d5/w128/s4 1300 it, confocal/nucleus d4/w32/s4 1200 it); the PSNR of
those two channels is of a confocal configuration on widefield pixels.
Everything after ``--`` goes to ``autodip-watch denoise``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs import PAIRS, Scorer, load, run_denoise  # noqa: E402

#: (channel name, fluorophore, pair supplying the pixels)
CHANNELS = [("MitoTracker", "MitoTracker Red CMXRos", "fmd-confocal-mito"),
            ("Phalloidin", "Alexa Fluor 488 Phalloidin", "fmd-widefield-rgb-actin"),
            ("DAPI", "DAPI", "fmd-widefield-rgb-nucleus")]


def write_case(path: Path, crop: int | None = None) -> tuple[np.ndarray, list[Scorer]]:
    """Write the 3-channel OME-TIFF; return its (C, Y, X) pixels and a scorer per channel.

    ``crop``: only the top-left crop x crop pixels (smoke runs of bench/gpu_session.sh)."""
    import ome_types
    from ome_types import model

    planes, scorers = [], []
    for _, _, pair_name in CHANNELS:
        pair = PAIRS[pair_name]
        noisy, truth = load(pair)
        if crop:
            noisy, truth = noisy[:crop, :crop], truth[:crop, :crop]
        planes.append(noisy.astype(np.uint8))
        scorers.append(Scorer(pair, noisy, truth))
    data = np.stack(planes)  # C, Y, X
    pixels = model.Pixels(
        id="Pixels:0", dimension_order="XYCZT", type="uint8", size_x=data.shape[2],
        size_y=data.shape[1], size_c=3, size_z=1, size_t=1,
        channels=[model.Channel(id=f"Channel:0:{i}", name=name, fluor=fluor,
                                acquisition_mode="LaserScanningConfocalMicroscopy",
                                samples_per_pixel=1)
                  for i, (name, fluor, _) in enumerate(CHANNELS)],
        tiff_data_blocks=[model.TiffData(ifd=0, plane_count=3)])
    ome = model.OME(images=[model.Image(id="Image:0", name="confocal BPAE", pixels=pixels)])
    tifffile.imwrite(path, data, description=ome_types.to_xml(ome).encode(), metadata=None,
                     photometric="minisblack")  # three pages, not one planar RGB page
    return data, scorers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extra", nargs="*", help="arguments for autodip-watch denoise")
    parser.add_argument("--out", default=None, help="also write the result JSON here")
    parser.add_argument("--append", action="store_true",
                        help="add this run to the 'runs' list of the --out JSON (several "
                             "settings in one file)")
    parser.add_argument("--label", default=None, help="name of this run in the JSON")
    parser.add_argument("--crop", type=int, default=None,
                        help="top-left crop x crop pixels only (smoke runs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "confocal-bpae.ome.tif"
        noisy, scorers = write_case(source, args.crop)
        out = Path(folder) / "denoised.ome.tif"
        summary, seconds = run_denoise([str(source), "--out", str(out), *args.extra])
        denoised = tifffile.imread(out)
    channels = []
    for index, (name, _, pair_name) in enumerate(CHANNELS):
        plane = next(p for p in summary["planes"] if p["channel"] == index)
        scorer = scorers[index]
        channels.append({"channel": name, "pixels_from": pair_name,
                         "group": plane["group"], "params": plane["params"],
                         "seconds": plane["seconds"], "note": plane["note"],
                         "members": plane.get("members"),
                         "psnr_noisy": round(scorer.psnr(noisy[index]), 2),
                         "psnr": round(scorer.psnr(denoised[index]), 2)})
    result = {"label": args.label,
              "command": "autodip-watch denoise confocal-bpae.ome.tif " + " ".join(args.extra),
              "device": summary["device"], "wall_seconds": round(seconds, 2),
              "pipeline_seconds": summary["seconds"], "crop": args.crop, "channels": channels}
    print(json.dumps(result, indent=2))
    if args.out:
        out = Path(args.out)
        document = result
        if args.append:
            earlier = json.loads(out.read_text())["runs"] if out.exists() else []
            document = {"runs": [*earlier, result]}
        partial = out.with_name(out.name + ".part")
        partial.write_text(json.dumps(document, indent=2) + "\n")
        partial.replace(out)


if __name__ == "__main__":
    main()
