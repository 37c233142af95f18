"""Per-iteration trajectories of paper-mode DIP fits on the real pairs (issue 14, "measure first").

For each pair and seed, one single fit (the pipeline's arithmetic: the plane min-max
normalised, fitted, denormalised to the input dtype) of the group's transferred
configuration, run for ``--factor`` times its transferred iteration count so that the
peak can be placed relative to the stopping point. Every iteration's training loss and
PSNR against the ground truth are recorded in the JSON; every iteration's output is kept
(float16, unit scale) in ``--store`` so that ground-truth-free rules (late-window
averaging, spike exclusion, seed ensembles, ES-WMV, the discrepancy principle) can be
scored afterwards on exactly these runs (``bench/analyse_trajectories.py``) without
fitting again.

    python bench/trajectories.py --pairs fmd-widefield-nucleus,hagen-nucleus --seeds 0,1,2,3 \
        --factor 1.5 --device cpu --out bench/results/trajectories-cpu.json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pairs import PAIRS, Scorer, load  # noqa: E402
from quality import machine  # noqa: E402

from autodip_watch import __version__  # noqa: E402
from autodip_watch.dip.device import choose_device, describe_device  # noqa: E402
from autodip_watch.dip.options import FitOptions  # noqa: E402
from autodip_watch.dip.fit import fit_tile  # noqa: E402
from autodip_watch.dip.params import DipParams  # noqa: E402
from autodip_watch.dip.plane import VarianceStabilised  # noqa: E402
from autodip_watch.dip.intensity import denormalise, normalise  # noqa: E402
from autodip_watch.transfer.table import CalibrationTable  # noqa: E402

DEFAULT_STORE = Path(__file__).resolve().parent / "out" / "trajectories"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="fmd-widefield-nucleus,hagen-nucleus")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--factor", type=float, default=1.5,
                        help="run this many times the transferred iteration count")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--vst", action="store_true",
                        help="fit the variance-stabilised plane (frames are kept in that "
                             "domain; the analysis maps them back)")
    parser.add_argument("--rollback", type=float, default=None, metavar="SPIKE_FACTOR",
                        help="roll back after loss spikes above this factor")
    parser.add_argument("--variant", default=None,
                        help="name of this variant in the results (default: from the flags)")
    parser.add_argument("--store", default=str(DEFAULT_STORE))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    table = CalibrationTable.load()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    store = Path(args.store)
    document = {"command": " ".join(["python", *sys.argv]),
                "date": datetime.date.today().isoformat(), "machine": machine(),
                "device": describe_device(device), "autodip_watch": __version__,
                "python": platform.python_version(), "runs": []}
    if out.exists():  # resume: keep finished runs
        document["runs"] = json.loads(out.read_text())["runs"]
    variant = args.variant or ("+".join(
        (["vst"] if args.vst else []) + ([f"rollback{args.rollback}"] if args.rollback else []))
        or "paper")
    done = {(r["pair"], r["seed"], r.get("variant", "paper")) for r in document["runs"]}
    options = {"rollback": True, "spike_factor": args.rollback} if args.rollback else {}
    for name in args.pairs.split(","):
        pair = PAIRS[name]
        noisy, truth = load(pair)
        scorer = Scorer(pair, noisy, truth)
        transfer = table.lookup(pair.microscope, pair.specimen)
        stop = transfer.params.iterations
        params = DipParams(transfer.params.depth, transfer.params.width, transfer.params.skip,
                           int(round(stop * args.factor)))
        unit, low, high = normalise(noisy)
        stabilised = VarianceStabilised(unit) if args.vst else None
        fitted = stabilised.plane if stabilised is not None else unit
        for seed in seeds:
            if (name, seed, variant) in done:
                continue
            suffix = "" if variant == "paper" else f"-{variant}"
            frames_path = store / name / f"seed{seed}{suffix}.npy"
            frames_path.parent.mkdir(parents=True, exist_ok=True)
            frames = np.lib.format.open_memmap(frames_path, mode="w+", dtype=np.float16,
                                               shape=(params.iterations, *noisy.shape))
            psnr = np.zeros(params.iterations)

            def snapshot(iteration, output) -> None:
                array = output.float().cpu().numpy()
                frames[iteration - 1] = array
                if stabilised is not None:
                    array = stabilised.back(array)
                psnr[iteration - 1] = scorer.psnr(denormalise(array, low, high, noisy.dtype))

            started = time.perf_counter()
            result = fit_tile(fitted.astype(np.float32), params, device,
                              FitOptions(seed=seed, **options), snapshot=snapshot,
                              snapshot_every=1)
            seconds = time.perf_counter() - started
            frames.flush()
            del frames
            run = {"pair": name, "seed": seed, "variant": variant, "params": params.as_dict(),
                   "rollbacks": result.rollbacks,
                   "vst": None if stabilised is None else {
                       **stabilised.model.as_dict(), "low": stabilised.low,
                       "high": stabilised.high},
                   "transferred_iterations": stop, "level": transfer.level,
                   "group": transfer.group, "seconds": seconds,
                   "seconds_per_iteration": seconds / params.iterations,
                   "losses": [float(v) for v in result.losses], "psnr": psnr.round(4).tolist(),
                   "frames": str(frames_path.relative_to(store))}
            document["runs"].append(run)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(document) + "\n")
            print(f"{name} seed {seed} {variant}: {seconds:.0f} s, PSNR at stop {psnr[stop - 1]:.2f}, "
                  f"peak {psnr.max():.2f} at {int(psnr.argmax()) + 1}, last "
                  f"{psnr[-1]:.2f}", flush=True)


if __name__ == "__main__":
    main()
