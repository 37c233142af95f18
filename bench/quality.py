"""Quality benchmark: noisy vs DIP baseline vs AUTO-DIP vs a tuned TV filter on real pairs.

Each method denoises the noisy plane through the project's engine (``denoise_plane``:
normalisation, tiling, padding, dtype mapping) and is scored on the noisy plane's
normalised scale against the (affine-matched, where needed) ground truth.

Usage (writes bench/results/quality-<device>-<date>.json and prints a Markdown table):

    python bench/quality.py --pairs fmd-widefield-nucleus,w2s-005-ch0,w2s-056-ch1 \
        --methods noisy,tv,autodip --device cpu --seeds 0,1,2

``--variants eager,bf16`` runs each DIP method once per speed variant of the fit
(``FitOptions``, as in ``speed.py``) with the same seeds, so a variant is compared
with fp32 eager on the same initialisation and input z; the paired per-seed PSNR
differences (mean and standard error) are printed and stored under ``"paired"``.
The variant ``batched`` fits all the seeds of a plane together, as K stacked networks
(``fit_tiles``, what the daemon's batching does), each scored as its own fit: paired
with ``eager`` it measures what batching does to quality.
"""

from __future__ import annotations

import argparse
import dataclasses
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

from classical import PEERS  # noqa: E402
from pairs import PAIRS, Scorer, load  # noqa: E402
from speed import VARIANT_TF32, VARIANTS, use_tf32  # noqa: E402  (the fit variants, one definition for both benches)

from autodip_watch import __version__  # noqa: E402
from autodip_watch.dip.device import choose_device, describe_device  # noqa: E402
from autodip_watch.dip.network import BASELINE  # noqa: E402
from autodip_watch.dip.options import FitOptions  # noqa: E402
from autodip_watch.dip.fit import fit_tile, fit_tiles  # noqa: E402
from autodip_watch.dip.plane import denoise_plane  # noqa: E402
from autodip_watch.dip.intensity import denormalise, normalise  # noqa: E402
from autodip_watch.dip.tiling import plane_tiles  # noqa: E402
from autodip_watch.transfer.table import CalibrationTable  # noqa: E402

TV_WEIGHTS = np.geomspace(0.005, 0.5, 25)
#: The variant that fits every seed of a plane in one batched optimisation.
BATCHED = "batched"

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


def paired_differences(rows: list[dict], variants: list[str]) -> list[dict]:
    """PSNR/SSIM of each variant minus the first variant's, per pair, method and seed.

    Only seeds run with both variants count. The standard error is the sample standard
    deviation of the per-seed differences (ddof 1) over sqrt(n); None for one seed.
    """
    reference, summaries = variants[0], []
    keyed = {(r["pair"], r["method"], r["variant"], r["seed"]): r
             for r in rows if "variant" in r}
    groups = sorted({(r["pair"], r["method"]) for r in rows if "variant" in r},
                    key=lambda g: [r["pair"] for r in rows].index(g[0]))
    for pair, method in groups:
        for variant in variants[1:]:
            seeds = sorted(seed for (p, m, v, seed) in keyed
                           if (p, m, v) == (pair, method, variant)
                           and (pair, method, reference, seed) in keyed)
            if not seeds:
                continue
            base = [keyed[pair, method, reference, s] for s in seeds]
            other = [keyed[pair, method, variant, s] for s in seeds]
            dpsnr = np.array([o["psnr"] - b["psnr"] for b, o in zip(base, other)])
            dssim = np.array([o["ssim"] - b["ssim"] for b, o in zip(base, other)])
            n = len(seeds)
            summaries.append({
                "pair": pair, "method": method, "reference": reference, "variant": variant,
                "seeds": seeds,
                "psnr_reference": [b["psnr"] for b in base],
                "psnr_variant": [o["psnr"] for o in other],
                "psnr_difference": dpsnr.tolist(),
                "mean_psnr_reference": float(np.mean([b["psnr"] for b in base])),
                "mean_psnr_variant": float(np.mean([o["psnr"] for o in other])),
                "mean_psnr_difference": float(dpsnr.mean()),
                "std_psnr_difference": float(dpsnr.std(ddof=1)) if n > 1 else None,
                "stderr_psnr_difference": (float(dpsnr.std(ddof=1) / np.sqrt(n))
                                           if n > 1 else None),
                "mean_abs_psnr_difference": float(np.abs(dpsnr).mean()),
                "ssim_difference": dssim.tolist(),
                "mean_ssim_difference": float(dssim.mean()),
            })
            if all("psnr_late_mean" in r for r in base + other):
                dlate = np.array([o["psnr_late_mean"] - b["psnr_late_mean"]
                                  for b, o in zip(base, other)])
                summaries[-1].update({
                    "late_difference": dlate.tolist(),
                    "mean_late_difference": float(dlate.mean()),
                    "stderr_late_difference": (float(dlate.std(ddof=1) / np.sqrt(n))
                                               if n > 1 else None)})
    return summaries


def run_dip(noisy: np.ndarray, params, device, options, scorer: Scorer, late: int,
            every: int) -> tuple[np.ndarray, int, float | None, dict[int, float]]:
    """The pipeline's plane path; with ``late``, a single-tile plane is fitted through
    ``fit_tile`` directly so that the same run is also scored every ``every`` iterations
    over its last ``late`` (the same arithmetic: normalise, fit, denormalise)."""
    if not late or len(plane_tiles(noisy.shape)) != 1:
        result = denoise_plane(noisy, params, device, options)
        return result.output, result.tiles, result.final_loss, {}
    unit, low, high = normalise(noisy)
    scores: dict[int, float] = {}

    def snapshot(iteration, output) -> None:
        if iteration > params.iterations - late:
            plane = denormalise(output.float().cpu().numpy(), low, high, noisy.dtype)
            scores[iteration] = scorer.psnr(plane)

    result = fit_tile(unit.astype(np.float32), params, device, options, snapshot=snapshot,
                      snapshot_every=every)
    output = denormalise(result.output, low, high, noisy.dtype)
    return output, 1, float(result.losses[-1]), scores


def run_dip_batched(noisy: np.ndarray, params, device, seeds: list[int], scorer: Scorer,
                    late: int, every: int) -> list[tuple[np.ndarray, float, dict[int, float]]]:
    """Every seed's fit of a single-tile plane at once, as K stacked networks; per seed
    the output, final loss and late scores, on the same arithmetic as ``run_dip``."""
    if len(plane_tiles(noisy.shape)) != 1:
        raise SystemExit("the batched variant needs single-tile planes (at most 512x512)")
    unit, low, high = normalise(noisy)
    scores: list[dict[int, float]] = [{} for _ in seeds]

    def snapshot(iteration, outputs) -> None:
        if iteration > params.iterations - late:
            for k, output in enumerate(outputs):
                plane = denormalise(output.float().cpu().numpy(), low, high, noisy.dtype)
                scores[k][iteration] = scorer.psnr(plane)

    results = fit_tiles([unit.astype(np.float32)] * len(seeds), params, device,
                        [FitOptions(seed=seed) for seed in seeds],
                        snapshot=snapshot if late else None, snapshot_every=every)
    return [(denormalise(result.output, low, high, noisy.dtype), float(result.losses[-1]),
             scores[k]) for k, result in enumerate(results)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="fmd-widefield-nucleus,w2s-005-ch0,w2s-056-ch1")
    parser.add_argument("--methods", default="noisy,tv,autodip",
                        help="comma list of noisy, tv, autodip, baseline, and the ground-truth-"
                             f"free classical peers {', '.join(PEERS)}")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default="eager",
                        help=f"comma list of fit variants for the DIP methods ({', '.join(VARIANTS)}); "
                             "the first is the reference of the paired differences")
    parser.add_argument("--late", type=int, default=0,
                        help="also score the output every --every iterations over the last "
                             "LATE iterations and report their mean PSNR (single-tile planes): "
                             "a lower-variance view of a fit than its last iterate alone")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--out", default=None, help="JSON results path")
    parser.add_argument("--iterations", type=int, default=None,
                        help="override every DIP method's iteration count (smoke runs of "
                             "bench/gpu_session.sh: the scores then say nothing)")
    parser.add_argument("--crop", type=int, default=None,
                        help="score only the top-left CROP x CROP of each pair (smoke runs)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS and v != BATCHED]
    if unknown or len(set(variants)) != len(variants):
        parser.error(f"--variants: unknown or repeated {unknown or variants}; "
                     f"choose from {', '.join([*VARIANTS, BATCHED])}")

    device = choose_device(args.device)
    table = CalibrationTable.load()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    rows = []
    date = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else (Path(__file__).resolve().parent / "results" /
                                           f"quality-{device.type}-{date}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(complete: bool) -> None:
        """Write every row so far (a long run leaves its partial results behind)."""
        document = {"command": " ".join(["python", *sys.argv]), "date": date,
                    "machine": machine(), "device": describe_device(device),
                    "autodip_watch": __version__, "python": platform.python_version(),
                    "variants": variants, "complete": complete, "rows": rows,
                    "paired": paired_differences(rows, variants)}
        partial = out.with_name(out.name + ".part")  # atomic: a cut run leaves valid JSON
        partial.write_text(json.dumps(document, indent=2) + "\n")
        partial.replace(out)

    for name in args.pairs.split(","):
        pair = PAIRS[name]
        noisy, truth = load(pair)
        if args.crop:
            noisy, truth = noisy[:args.crop, :args.crop], truth[:args.crop, :args.crop]
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
        for peer in (m for m in methods if m in PEERS):
            started = time.perf_counter()
            unit = scorer.scale(noisy)
            denoised, chosen = PEERS[peer](unit)
            plane = denoised * (scorer.high - scorer.low) + scorer.low
            rows.append({"pair": name, "method": peer, "psnr": scorer.psnr(plane),
                         "ssim": scorer.ssim(plane), "params": chosen,
                         "seconds": time.perf_counter() - started})
            print(rows[-1], flush=True)
            save(complete=False)
        configs = []
        if "baseline" in methods:
            configs.append(("dip baseline", BASELINE, "baseline"))
        if "autodip" in methods:
            transfer = table.lookup(pair.microscope, pair.specimen)
            configs.append(("auto-dip", transfer.params, f"{transfer.level} {transfer.group}"))
        if args.iterations:
            configs = [(label, dataclasses.replace(params, iterations=args.iterations), why)
                       for label, params, why in configs]
        for label, params, why in configs:
            # Variants innermost: each seed's runs are adjacent, so a partial run is paired.
            for seed in seeds:
                for variant in (v for v in variants if v != BATCHED):
                    use_tf32(VARIANT_TF32.get(variant))
                    options = dataclasses.replace(VARIANTS[variant], seed=seed)
                    started = time.perf_counter()
                    output, tiles, final_loss, late = run_dip(noisy, params, device, options,
                                                              scorer, args.late, args.every)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds = time.perf_counter() - started
                    rows.append({"pair": name, "method": label, "variant": variant, "seed": seed,
                                 "psnr": scorer.psnr(output), "ssim": scorer.ssim(output),
                                 "params": params.as_dict(), "transfer": why,
                                 "seconds": seconds, "tiles": tiles, "final_loss": final_loss})
                    if late:
                        rows[-1]["psnr_late"] = late
                        rows[-1]["psnr_late_mean"] = float(np.mean(list(late.values())))
                    print(rows[-1], flush=True)
                    save(complete=False)
            if BATCHED in variants:
                started = time.perf_counter()
                fitted = run_dip_batched(noisy, params, device, seeds, scorer, args.late,
                                         args.every)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = (time.perf_counter() - started) / len(seeds)  # per plane
                for seed, (output, final_loss, late) in zip(seeds, fitted):
                    rows.append({"pair": name, "method": label, "variant": BATCHED,
                                 "seed": seed, "psnr": scorer.psnr(output),
                                 "ssim": scorer.ssim(output), "params": params.as_dict(),
                                 "transfer": why, "seconds": seconds, "tiles": 1,
                                 "final_loss": final_loss, "batch": len(seeds)})
                    if late:
                        rows[-1]["psnr_late"] = late
                        rows[-1]["psnr_late_mean"] = float(np.mean(list(late.values())))
                    print(rows[-1], flush=True)
                save(complete=False)
    save(complete=True)
    print(f"\nwritten {out}\n")
    print("| pair | method | variant | seed | PSNR dB | SSIM | seconds | configuration |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        params = row.get("params", {})
        config = "/".join(str(v) for v in params.values())
        seconds = f"{row['seconds']:.0f}" if "seconds" in row else ""
        print(f"| {row['pair']} | {row['method']} | {row.get('variant', '')} | "
              f"{row.get('seed', '')} | {row['psnr']:.2f} | "
              f"{row['ssim']:.3f} | {seconds} | {config} {row.get('transfer', '')} |")
    paired = paired_differences(rows, variants)
    if paired:
        print(f"\nPaired PSNR differences ({variants[0]} is the reference; same seed = same "
              "initialisation and input z):\n")
        print("| pair | method | variant | seeds | per-seed difference dB | mean reference dB | "
              "mean variant dB | mean difference dB | std | std error |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for item in paired:
            per_seed = ", ".join(f"{d:+.2f}" for d in item["psnr_difference"])
            std = "" if item["std_psnr_difference"] is None else f"{item['std_psnr_difference']:.2f}"
            err = ("" if item["stderr_psnr_difference"] is None
                   else f"{item['stderr_psnr_difference']:.2f}")
            print(f"| {item['pair']} | {item['method']} | {item['variant']} | "
                  f"{','.join(map(str, item['seeds']))} | {per_seed} | "
                  f"{item['mean_psnr_reference']:.2f} | {item['mean_psnr_variant']:.2f} | "
                  f"{item['mean_psnr_difference']:+.3f} | {std} | {err} |")
            if "mean_late_difference" in item:
                late_err = item["stderr_late_difference"]
                print(f"|  | mean PSNR over the last {args.late} iterations | "
                      f"{item['variant']} | | "
                      + ", ".join(f"{d:+.2f}" for d in item["late_difference"])
                      + f" | | | {item['mean_late_difference']:+.3f} | | "
                      + ("" if late_err is None else f"{late_err:.2f}") + " |")


if __name__ == "__main__":
    main()
