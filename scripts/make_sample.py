"""Write a small synthetic noisy OME-TIFF for trying autodip-watch out.

Nuclei-like blobs with Poisson-Gaussian noise, one DAPI channel acquired on a widefield
microscope (OME ``AcquisitionMode="WideField"``), so the daemon infers the
widefield/nucleus group from the metadata alone. Written to a hidden temporary name
and renamed, as an acquisition program should.

    python scripts/make_sample.py incoming/sample-dapi.ome.tif [--size 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import tifffile
from ome_types import model


def nuclei(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    clean = np.zeros((size, size))
    for _ in range(max(4, size // 24)):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(size / 40, size / 14, 2)
        clean += np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) ** 2)
    return np.clip(clean, 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    photons = rng.poisson(nuclei(args.size, rng) * 40 + 5)
    pixels = np.clip(photons * 20 + rng.normal(100, 15, photons.shape), 0, 65535).astype(np.uint16)

    ome = model.OME(images=[model.Image(
        name=args.out.name,
        pixels=model.Pixels(
            dimension_order="XYCZT", type="uint16", size_x=args.size, size_y=args.size,
            size_c=1, size_z=1, size_t=1, physical_size_x=0.1, physical_size_y=0.1,
            channels=[model.Channel(name="DAPI", fluor="DAPI", acquisition_mode="WideField",
                                    samples_per_pixel=1)],
            tiff_data_blocks=[model.TiffData(plane_count=1)],
        ),
    )])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_name(f".{args.out.name}.tmp")
    tifffile.imwrite(temporary, pixels, description=ome.to_xml().encode(), metadata=None)
    os.replace(temporary, args.out)
    print(f"wrote {args.out} ({args.size}x{args.size} uint16, DAPI, widefield)")


if __name__ == "__main__":
    main()
