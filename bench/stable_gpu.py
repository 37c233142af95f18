"""The stable mode's ensemble on a device: what members cost and what they buy (issue 17).

``stable`` (dip/modes.py, the default) fits every tile ``members`` times and averages;
on a GPU the members run as one batch, so their cost is not ``members`` x one fit. This
script measures, on the device it is given, for the lead to set ``members_cuda`` per
configuration:

* ``cost``: seconds per iteration of the real fit loop (``speed.time_iterations``: the
  stable mode's options, K = members stacked networks, synchronised), for each asked
  configuration, ensemble size and speed variant; scaled to the group's iteration count
  it is the fit's seconds per 512x512 plane (reading and writing are not included).
* ``quality``: per pair and seed, one plane denoised through the pipeline's own path
  (``denoise_planes`` with the device's fitter: batched on CUDA) as an ensemble of the
  largest size asked; the smaller ensembles are the pipeline's mean of its first m
  members (the same arithmetic, replayed from the recorded member fits), scored with
  PSNR / SSIM against the ground truth. Nested: ensembles of 1, 4 and 8 share members,
  so their differences are not blurred by different seeds; in float32 a member fitted in
  a batch of 8 follows a slightly different trajectory than alone (see bench/README.md,
  "Batched vs single fits").

    python bench/stable_gpu.py cost --device cuda --configs 8/asc/4,5/128/4 --members 1,4,8
    python bench/stable_gpu.py quality --device cuda --pairs fmd-widefield-nucleus --seeds 0,1,2

Both write (``--out``) one JSON with ``cost`` and ``quality`` lists, rewritten
atomically after every row, so a run cut by a timeout leaves what it measured; with
``--append`` the rows are added to those of an earlier run in the same file.
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pairs import PAIRS, Scorer, load  # noqa: E402
from quality import machine  # noqa: E402
from speed import VARIANTS, configurations, time_iterations, warmup_for  # noqa: E402

from autodip_watch import __version__  # noqa: E402
from autodip_watch.dip.batching import FitRequest, TileFitter, TileResult, make_fitter  # noqa: E402
from autodip_watch.dip.device import choose_device, describe_device  # noqa: E402
from autodip_watch.dip.fit import FitOptions  # noqa: E402
from autodip_watch.dip.modes import MODES, STABLE  # noqa: E402
from autodip_watch.dip.plane import PlaneJob, denoise_planes  # noqa: E402
from autodip_watch.dip.tiling import runnable_shape  # noqa: E402
from autodip_watch.transfer.table import CalibrationTable  # noqa: E402


class RecordingFitter(TileFitter):
    """Passes requests to ``inner`` and keeps the results, in request order."""

    def __init__(self, inner: TileFitter) -> None:
        super().__init__(inner.device)
        self.inner = inner
        self.results: list[TileResult] = []

    def fit(self, requests: list[FitRequest]) -> list[TileResult]:
        self.results = self.inner.fit(requests)
        return self.results


class ReplayFitter(TileFitter):
    """Returns the first recorded results: an ensemble of m members of a plane asks for
    its tiles member by member, so these are the fits of the larger ensemble's first m
    members (``denoise_planes`` orders requests member-major)."""

    def __init__(self, recorded: list[TileResult], device: torch.device) -> None:
        super().__init__(device)
        self.recorded = recorded

    def fit(self, requests: list[FitRequest]) -> list[TileResult]:
        if len(requests) > len(self.recorded):
            raise ValueError("more requests than recorded fits")
        return self.recorded[:len(requests)]


def measure_cost(args, device, stable, document, save) -> None:
    table = CalibrationTable.load()
    wanted = args.configs.split(",")
    known = {f"{p.depth}/{p.width}/{p.skip}": (groups, p) for groups, p in configurations(table)}
    missing = [label for label in wanted if label not in known]
    if missing:
        raise SystemExit(f"unknown configuration(s) {', '.join(missing)}; "
                         f"choose from {', '.join(known)}")
    members = [int(m) for m in args.members.split(",")]
    for variant in args.variants.split(","):
        options = stable.fit_options(VARIANTS[variant])
        warmup = warmup_for(options, args.warmup)
        for label in wanted:
            groups, params = known[label]
            shape = runnable_shape((args.size, args.size), params.depth)
            single = None
            for count in members:
                times = time_iterations(params, shape, device, args.iterations, warmup,
                                        options, count)
                median = statistics.median(times)
                plane_seconds = median * params.iterations
                if count == 1:
                    single = plane_seconds
                document["cost"].append({
                    "configuration": label, "groups": groups, "size": args.size,
                    "padded": list(shape), "variant": variant, "members": count,
                    "group_iterations": params.iterations, "timed_iterations": len(times),
                    "warmup": warmup, "median_s_per_iteration": median, "times": times,
                    "fit_seconds_per_plane": plane_seconds,
                    "ratio_to_one_member": plane_seconds / single if single else None})
                save()
                print(f"cost {label} {variant} members={count}: {median * 1e3:.2f} ms/it, "
                      f"{plane_seconds:.1f} s per plane ({groups})", flush=True)


def measure_quality(args, device, stable, document, save) -> None:
    table = CalibrationTable.load()
    members = sorted(int(m) for m in args.members.split(","))
    largest = members[-1]
    seeds = [int(s) for s in args.seeds.split(",")]
    pairs = args.pairs.split(",")
    loaded = {}
    for name in pairs:
        pair = PAIRS[name]
        noisy, truth = load(pair)
        if args.crop:
            noisy, truth = noisy[:args.crop, :args.crop], truth[:args.crop, :args.crop]
        transfer = table.lookup(pair.microscope, pair.specimen)
        params = transfer.params
        if args.iterations:
            params = dataclasses.replace(params, iterations=args.iterations)
        loaded[name] = (noisy, Scorer(pair, noisy, truth), params, transfer)
    # Seeds outermost: a run cut short has every pair at its first seeds, not some pairs
    # at all seeds and the slowest (confocal) pair at none.
    for seed in seeds:
        for name in pairs:
            noisy, scorer, params, transfer = loaded[name]
            options = stable.fit_options(FitOptions(seed=seed))
            recorder = RecordingFitter(make_fitter(device))
            started = time.perf_counter()
            job = PlaneJob(noisy, params, options, members=largest, vst=stable.vst)
            full = denoise_planes([job], recorder)[0]
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            batch = max(result.batch for result in recorder.results)
            for count in members:
                if count == largest:
                    output = full.output
                else:
                    replay = ReplayFitter(recorder.results, device)
                    output = denoise_planes([dataclasses.replace(job, members=count)],
                                            replay)[0].output
                document["quality"].append({
                    "pair": name, "seed": seed, "members": count,
                    "group": f"{transfer.level} {transfer.group}", "params": params.as_dict(),
                    "psnr": scorer.psnr(output), "ssim": scorer.ssim(output),
                    "psnr_noisy": scorer.psnr(noisy), "nested_in": largest,
                    "seconds_of_largest": seconds, "batch_of_largest": batch,
                    "final_loss_mean": full.final_loss,
                    # where the members' fits stopped (the extension may go past N)
                    "iterations_run": list(full.iterations or ())})
                print(f"quality {name} seed {seed} members={count}: "
                      f"{document['quality'][-1]['psnr']:.2f} dB "
                      f"(ensemble of {largest} took {seconds:.1f} s, batch {batch})", flush=True)
            save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["cost", "quality"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--members", default="1,4,8", help="ensemble sizes, comma list")
    parser.add_argument("--configs", default="8/asc/4,8/32/4,6/256/4,5/128/4,4/32/4",
                        help="cost: d/w/s labels (the widefield and confocal groups' by default)")
    parser.add_argument("--variants", default="eager",
                        help=f"cost: speed variants ({', '.join(VARIANTS)})")
    parser.add_argument("--size", type=int, default=512, help="cost: plane side in pixels")
    parser.add_argument("--iterations", type=int, default=None,
                        help="cost: timed iterations (default 40); quality: override the "
                             "transferred count (smoke runs only: the scores then say nothing)")
    parser.add_argument("--warmup", type=int, default=5, help="cost: iterations dropped")
    parser.add_argument("--pairs", default="fmd-widefield-nucleus,hagen-nucleus,w2s-005-ch0,"
                                           "fmd-confocal-mito")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--crop", type=int, default=None,
                        help="quality: top-left crop x crop of each pair (smoke runs)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --out and add these")
    args = parser.parse_args()
    if args.part == "cost" and args.iterations is None:
        args.iterations = 40
    device = choose_device(args.device)
    stable = MODES[STABLE]
    out = Path(args.out)
    document = {"cost": [], "quality": []}
    if args.append and out.exists():
        document = json.loads(out.read_text())
    document.setdefault("runs", []).append({
        "command": " ".join(["python", *sys.argv]), "date": datetime.date.today().isoformat(),
        "machine": machine(), "device": describe_device(device), "torch": torch.__version__,
        "autodip_watch": __version__, "mode": dataclasses.asdict(stable)})

    def save() -> None:
        partial = out.with_name(out.name + ".part")
        partial.write_text(json.dumps(document, indent=2) + "\n")
        partial.replace(out)

    save()
    if args.part == "cost":
        measure_cost(args, device, stable, document, save)
    else:
        measure_quality(args, device, stable, document, save)
    print(f"written {out}")


if __name__ == "__main__":
    main()
