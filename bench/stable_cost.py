"""What each setting of the stable mode costs per plane, against the paper's fit (issue 14).

One real 512x512 plane of a pair is denoised through the pipeline's plane path
(``denoise_planes``: normalise, VST, tiles, fitter, ensemble mean, back) in each
setting, interleaved and repeated, with a shortened iteration count; seconds are scaled
to the group's transferred count. The ratio to paper mode is what a user pays.

    python bench/stable_cost.py --pair fmd-widefield-nucleus --iterations 40 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pairs import PAIRS, load  # noqa: E402
from quality import machine  # noqa: E402

from autodip_watch.dip.batching import SingleFitter  # noqa: E402
from autodip_watch.dip.fit import FitOptions  # noqa: E402
from autodip_watch.dip.modes import MODES, PAPER, STABLE  # noqa: E402
from autodip_watch.dip.plane import PlaneJob, denoise_planes  # noqa: E402
from autodip_watch.transfer.table import CalibrationTable  # noqa: E402


def settings_to_time() -> dict[str, tuple[FitOptions, int, bool]]:
    """name -> (fit options, members, vst): paper, each setting added alone, the ensembles.

    Rollback and VST are timed although ``stable`` leaves them off: a user can still
    choose them, and the table says what they cost.
    """
    stable = MODES[STABLE]
    parts = {"average_fraction": stable.average_fraction, "spike_factor": stable.spike_factor}
    return {
        PAPER: (FitOptions(), 1, False),
        "late-window mean": (FitOptions(**parts), 1, False),
        "+ rollback": (FitOptions(**parts, rollback=True), 1, False),
        "+ VST": (FitOptions(**parts), 1, True),
        "ensemble of 2": (stable.fit_options(FitOptions()), 2, stable.vst),
        f"{STABLE} (ensemble of {stable.members_cpu})":
            (stable.fit_options(FitOptions()), stable.members_cpu, stable.vst),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="fmd-widefield-nucleus")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    pair = PAIRS[args.pair]
    noisy, _ = load(pair)
    transfer = CalibrationTable.load().lookup(pair.microscope, pair.specimen)
    params = dataclasses.replace(transfer.params, iterations=args.iterations)
    fitter = SingleFitter("cpu")
    variants = settings_to_time()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    denoise_planes([PlaneJob(noisy, params, FitOptions())], fitter)  # warm-up
    for _ in range(args.repeats):
        for name, (options, members, vst) in variants.items():
            started = time.perf_counter()
            denoise_planes([PlaneJob(noisy, params, options, members=members, vst=vst)], fitter)
            seconds[name].append(time.perf_counter() - started)
    scale = transfer.params.iterations / args.iterations
    reference = statistics.median(seconds[PAPER])
    rows = [{"setting": name, "median_seconds": statistics.median(values),
             "seconds_per_plane": statistics.median(values) * scale,
             "ratio_to_paper": statistics.median(values) / reference, "runs": values}
            for name, values in seconds.items()]
    document = {"command": " ".join(["python", *sys.argv]),
                "date": datetime.date.today().isoformat(), "machine": machine(),
                "pair": args.pair, "configuration": transfer.params.label(),
                "timed_iterations": args.iterations, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    print(f"{args.pair}: {transfer.params.label()}, {args.iterations} iterations timed, "
          f"scaled to {transfer.params.iterations}")
    print("| setting | s per plane | x paper |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['seconds_per_plane']:.0f} | "
              f"{row['ratio_to_paper']:.2f} |")


if __name__ == "__main__":
    main()
