"""Run ``autodip-watch denoise`` exactly as a user would on a real pair, and score it.

    python bench/cli_acceptance.py --pair fmd-widefield-nucleus -- --device cpu

Everything after ``--`` is passed to ``autodip-watch denoise``; the pair's microscope
and specimen are passed too. Reports wall time of the whole command (start-up, read,
fit, write) and PSNR/SSIM of the written OME-TIFF against the ground truth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pairs import PAIRS, PAIRS_DIR, Scorer, load  # noqa: E402


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
        command = [sys.executable, "-m", "autodip_watch.cli", "denoise", str(PAIRS_DIR / pair.noisy),
                   "--microscope", pair.microscope, "--specimen", pair.specimen,
                   "--out", str(out), "--json", *args.extra]
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if completed.returncode != 0:
            sys.exit(f"denoise failed:\n{completed.stderr}")
        summary = json.loads(completed.stdout)
        denoised = tifffile.imread(out)
    if pair.channel is not None:
        denoised = denoised[..., pair.channel]
    result = {"pair": pair.name, "command": "autodip-watch " + " ".join(command[3:]).replace(
                  str(PAIRS_DIR), "../shared/data/pairs").replace(str(out), "OUT.ome.tif"),
              "wall_seconds": round(seconds, 1), "psnr_noisy": round(scorer.psnr(noisy), 2),
              "psnr": round(scorer.psnr(denoised), 2), "ssim": round(scorer.ssim(denoised), 3),
              "planes": summary["planes"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
