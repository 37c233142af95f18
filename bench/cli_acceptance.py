"""Run ``autodip-watch denoise`` exactly as a user would on a real pair, and score it.

    python bench/cli_acceptance.py --pair fmd-widefield-nucleus -- --device cpu

Everything after ``--`` is passed to ``autodip-watch denoise``; the pair's microscope
and specimen are passed too. Reports wall time of the whole command (start-up, read,
fit, write) and PSNR/SSIM of the written OME-TIFF against the ground truth.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pairs import PAIRS, PAIRS_DIR, Scorer, load, run_denoise  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="fmd-widefield-nucleus")
    parser.add_argument("extra", nargs="*", help="arguments for autodip-watch denoise")
    args = parser.parse_args()
    pair = PAIRS[args.pair]
    noisy, truth = load(pair)
    scorer = Scorer(pair, noisy, truth)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.ome.tif"
        arguments = [str(PAIRS_DIR / pair.noisy), "--microscope", pair.microscope,
                     "--specimen", pair.specimen, "--out", str(out), *args.extra]
        summary, seconds = run_denoise(arguments)
        denoised = tifffile.imread(out)
    if pair.channel is not None:
        denoised = denoised[..., pair.channel]
    result = {"pair": pair.name, "command": "autodip-watch denoise " + " ".join(arguments).replace(
                  str(PAIRS_DIR), "../shared/data/pairs").replace(str(out), "OUT.ome.tif"),
              "wall_seconds": round(seconds, 1), "psnr_noisy": round(scorer.psnr(noisy), 2),
              "psnr": round(scorer.psnr(denoised), 2), "ssim": round(scorer.ssim(denoised), 3),
              "planes": summary["planes"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
