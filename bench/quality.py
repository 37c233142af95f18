"""Quality benchmark: noisy vs DIP baseline vs AUTO-DIP vs a tuned TV filter on real pairs.

Each method denoises the noisy plane through the project's engine (``denoise_plane``:
normalisation, tiling, padding, dtype mapping) and is scored on the noisy plane's
normalised scale against the (affine-matched, where needed) ground truth.

Usage (writes bench/results/quality-<device>-<date>.json and prints a Markdown table):

    python bench/quality.py --pairs fmd-widefield-nucleus,w2s-005-ch0,w2s-056-ch1 \
        --methods noisy,tv,autodip --device cpu --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage.restoration import denoise_tv_chambolle

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pairs import PAIRS, Scorer, load  # noqa: E402

from autodip_watch import __version__  # noqa: E402
from autodip_watch.dip.device import choose_device, describe_device  # noqa: E402
from autodip_watch.dip.fit import FitOptions  # noqa: E402
from autodip_watch.dip.network import BASELINE  # noqa: E402
from autodip_watch.dip.plane import denoise_plane  # noqa: E402
from autodip_watch.transfer import CalibrationTable  # noqa: E402

TV_WEIGHTS = np.geomspace(0.005, 0.5, 25)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def tuned_tv(noisy: np.ndarray, scorer: Scorer) -> tuple[float, float, float]:
    """Best TV-Chambolle weight chosen with the ground truth (an oracle upper bound)."""
    unit = scorer.scale(noisy)
    best = max(((scorer.psnr(denoise_tv_chambolle(unit, weight=w) * (scorer.high - scorer.low)
                             + scorer.low), w) for w in TV_WEIGHTS))
    plane = denoise_tv_chambolle(unit, weight=best[1]) * (scorer.high - scorer.low) + scorer.low
    return best[0], scorer.ssim(plane), float(best[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="fmd-widefield-nucleus,w2s-005-ch0,w2s-056-ch1")
    parser.add_argument("--methods", default="noisy,tv,autodip",
                        help="comma list of noisy, tv, autodip, baseline")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default=None, help="JSON results path")
    args = parser.parse_args()

    device = choose_device(args.device)
    table = CalibrationTable.load()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    rows = []
    for name in args.pairs.split(","):
        pair = PAIRS[name]
        noisy, truth = load(pair)
        scorer = Scorer(pair, noisy, truth)
        if "noisy" in methods:
            rows.append({"pair": name, "method": "noisy", "psnr": scorer.psnr(noisy),
                         "ssim": scorer.ssim(noisy)})
            print(rows[-1], flush=True)
        if "tv" in methods:
            psnr, ssim, weight = tuned_tv(noisy, scorer)
            rows.append({"pair": name, "method": "tv (oracle weight)", "psnr": psnr,
                         "ssim": ssim, "params": {"weight": weight}})
            print(rows[-1], flush=True)
        configs = []
        if "baseline" in methods:
            configs.append(("dip baseline", BASELINE, "baseline"))
        if "autodip" in methods:
            transfer = table.lookup(pair.microscope, pair.specimen)
            configs.append(("auto-dip", transfer.params, f"{transfer.level} {transfer.group}"))
        for label, params, why in configs:
            for seed in seeds:
                started = time.perf_counter()
                result = denoise_plane(noisy, params, device, FitOptions(seed=seed))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - started
                rows.append({"pair": name, "method": label, "seed": seed,
                             "psnr": scorer.psnr(result.output), "ssim": scorer.ssim(result.output),
                             "params": params.as_dict(), "transfer": why, "seconds": seconds,
                             "tiles": result.tiles})
                print(rows[-1], flush=True)
    date = datetime.date.today().isoformat()
    document = {"command": " ".join(["python", *sys.argv]), "date": date, "machine": machine(),
                "device": describe_device(device), "autodip_watch": __version__,
                "python": platform.python_version(), "rows": rows}
    out = Path(args.out) if args.out else (Path(__file__).resolve().parent / "results" /
                                           f"quality-{device.type}-{date}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwritten {out}\n")
    print("| pair | method | seed | PSNR dB | SSIM | seconds | configuration |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        params = row.get("params", {})
        config = "/".join(str(v) for v in params.values())
        seconds = f"{row['seconds']:.0f}" if "seconds" in row else ""
        print(f"| {row['pair']} | {row['method']} | {row.get('seed', '')} | {row['psnr']:.2f} | "
              f"{row['ssim']:.3f} | {seconds} | {config} {row.get('transfer', '')} |")


if __name__ == "__main__":
    main()
