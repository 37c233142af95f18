"""Speed benchmark: median seconds per DIP iteration for every group configuration.

Times the real fit loop (forward, MSE, backward, Adam: ``fit_tiles``) of each distinct
configuration of the shipped table and of the original DIP baseline, at 256x256 and
512x512, on one device, for each speed variant asked for (all in the same run), and for
K planes fitted together (``--batch``). Each time is set against its floor (issue 7):
the iteration's counted FLOPs over the matrix rate measured in the same run, its
kernel count times the measured cost of one launch, or its memory traffic over the
measured memory bandwidth, whichever is largest.

    python bench/speed.py --device cpu --sizes 256,512 --iterations 3 --warmup 1
    python bench/speed.py --device cuda --variants strict-fp32,eager,tf32,bf16,cuda_graphs,fast
    python bench/speed.py --device cuda --configs 8/32/4 --sizes 512 --batch 1,8,32,64
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autodip_watch import __version__  # noqa: E402
from cost import (floor_seconds, forward_macs,  # noqa: E402
                  iteration_flops, kernels_per_iteration,
                  measure_launch_seconds, measure_matrix_rate,
                  measure_memory_bandwidth, meta_network,
                  traffic_per_iteration)
from autodip_watch.dip.device import choose_device, configure_tf32, describe_device  # noqa: E402
from autodip_watch.dip.fit import GRAPH_WARMUP_ITERATIONS, fit_tiles  # noqa: E402
from autodip_watch.dip.options import FitOptions  # noqa: E402
from autodip_watch.dip.network import BASELINE, DipParams  # noqa: E402
from autodip_watch.dip.tiling import runnable_shape  # noqa: E402
from autodip_watch.transfer.table import CalibrationTable  # noqa: E402

VARIANTS = {
    "eager": FitOptions(),
    "strict-fp32": FitOptions(),
    "tf32": FitOptions(),
    "channels_last": FitOptions(channels_last=True),
    "bf16": FitOptions(bf16=True),
    "compile": FitOptions(compile=True),
    "cuda_graphs": FitOptions(cuda_graphs=True),
    "fast": FitOptions(channels_last=True, bf16=True, cuda_graphs=True),
    # The memory-bound baseline's lever: fused element-wise ops (torch.compile) in bf16.
    "compiled-bf16": FitOptions(channels_last=True, bf16=True, compile=True),
}
#: The process's TF32 switch while a variant runs (TF32 is process-wide,
#: dip.device.configure_tf32); variants not listed keep torch's defaults.
VARIANT_TF32 = {"strict-fp32": False, "tf32": True}
#: torch's TF32 defaults (cuDNN, matmul), restored for the variants that leave TF32 unset.
TORCH_TF32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


def use_tf32(tf32: bool | None) -> None:
    """The variant's TF32 switch for the process (None: torch's defaults)."""
    if tf32 is None:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = TORCH_TF32
    else:
        configure_tf32(tf32)


def matrix_precision(options: FitOptions, device: torch.device,
                     tf32: bool | None = None) -> str:
    """The matmul precision whose measured rate bounds this variant's convolutions.

    On CUDA, torch's defaults differ by op: cuDNN convolutions may use TF32
    (``torch.backends.cudnn.allow_tf32``, default True) while matmuls may not
    (``torch.backends.cuda.matmul.allow_tf32``, default False). The fit is convolutions,
    so a variant that leaves ``tf32`` unset runs at the TF32 rate if cuDNN allows it.
    """
    if options.bf16:
        return "bf16"
    if device.type != "cuda":
        return "fp32"  # tf32 does not exist on CPU; the tf32 variant is the eager fit there
    tf32 = TORCH_TF32[0] if tf32 is None else tf32
    return "tf32" if tf32 else "fp32"


def measure_rates(device: torch.device, variants: list[str]) -> dict:
    """Matrix rates (FLOP/s) and launch costs (s) the variants need, measured now."""
    precisions = sorted({matrix_precision(VARIANTS[v], device, VARIANT_TF32.get(v))
                         for v in variants})
    launch_kinds = sorted({"graphed" if VARIANTS[v].cuda_graphs else "eager" for v in variants})
    return {
        "matrix_flops_per_s": {p: measure_matrix_rate(device, p) for p in precisions},
        "launch_seconds": {kind: measure_launch_seconds(device, graphed=kind == "graphed")
                           for kind in launch_kinds},
        "memory_bytes_per_s": measure_memory_bandwidth(device),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def time_iterations(params: DipParams, shape: tuple[int, int], device: torch.device,
                    iterations: int, warmup: int, options: FitOptions,
                    planes: int = 1) -> list[float]:
    """Wall time of each iteration of the real fit loop (``fit_tiles``), synchronised.

    ``planes`` planes are fitted together (one network each, stacked). The first
    ``warmup`` iterations (allocation, autotuning, compilation, graph capture) are dropped.
    """
    stamps: list[float] = []

    def stamp(iteration: int, total: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    rng = np.random.default_rng(0)
    tiles = [rng.random(shape, dtype=np.float32) for _ in range(planes)]
    seeded = [dataclasses.replace(options, seed=k) for k in range(planes)]
    timed = params.__class__(params.depth, params.width, params.skip, warmup + iterations)
    if device.type == "cuda":
        torch.cuda.synchronize()
    fit_tiles(tiles, timed, device, seeded, progress=stamp)
    return [b - a for a, b in itertools.pairwise(stamps[max(warmup - 1, 0):])]


def warmup_for(options: FitOptions, asked: int) -> int:
    """Iterations to drop: at least one, and for a graphed fit the eager warm-up and the
    capturing iteration too."""
    return max(asked, 1, GRAPH_WARMUP_ITERATIONS + 1 if options.cuda_graphs else 0)


def configurations(table: CalibrationTable) -> list[tuple[str, DipParams]]:
    """Each distinct architecture: the original DIP baseline first, then the table's.

    An architecture is timed once; its label lists every group using it (the baseline's
    d5/w128/s4 is also confocal/mito's). Iterations are the first user's (baseline: 1800).
    """
    groups_of: dict[tuple, list[str]] = {
        (BASELINE.depth, BASELINE.width, BASELINE.skip): ["baseline (original DIP)"]}
    params_of: dict[tuple, DipParams] = {(BASELINE.depth, BASELINE.width, BASELINE.skip): BASELINE}
    for level, group, params in table.entries():
        key = (params.depth, params.width, params.skip)
        groups_of.setdefault(key, []).append(f"{group} ({params.iterations} it)")
        params_of.setdefault(key, params)
    return [(", ".join(groups), params_of[key]) for key, groups in groups_of.items()]


def floor_fields(options: FitOptions, flops: int, kernels: int, traffic: int, rates: dict,
                 device: torch.device, median: float, tf32: bool | None = None) -> dict:
    """The row's floor columns, with the rates of this run on this device.

    A compiled fit fuses kernels, so the eager op count does not bound its launches:
    its launch floor is left out (None) and only the compute floor applies.
    """
    precision = matrix_precision(options, device, tf32)
    rate = rates["matrix_flops_per_s"][precision]
    launch = rates["launch_seconds"]["graphed" if options.cuda_graphs else "eager"]
    # bf16 autocast halves the bytes of the convolutions' tensors; count fp32 traffic
    # at half for bf16 as the optimistic bound (BatchNorm and Adam stay fp32).
    moved = traffic / 2 if options.bf16 else traffic
    floor = floor_seconds(flops, rate, 0 if options.compile else kernels, launch,
                          moved, rates["memory_bytes_per_s"])
    return {"matrix_precision": precision, "matrix_flops_per_s": rate,
            "launch_seconds_per_kernel": launch,
            "compute_floor_s": floor.compute_seconds,
            "launch_floor_s": None if options.compile else floor.launch_seconds,
            "memory_floor_s": floor.memory_seconds, "traffic_gb": moved / 1e9,
            "floor_s": floor.seconds, "bound": floor.bound,
            "measured_over_floor": median / floor.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1,
                        help="iterations dropped (graphed variants drop at least "
                             f"{GRAPH_WARMUP_ITERATIONS + 1}: eager warm-up and capture)")
    parser.add_argument("--variants", default="eager",
                        help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--configs", default="all",
                        help="'all', or comma list of d/w/s labels such as 5/128/4,8/32/4")
    parser.add_argument("--batch", default="1",
                        help="comma list of K: planes fitted together, e.g. 1,8,32")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = choose_device(args.device)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if device.type != "cuda" and any(VARIANTS[v].cuda_graphs for v in variants):
        parser.error("the cuda_graphs and fast variants need a CUDA device")
    batches = sorted({int(k) for k in args.batch.split(",")})  # K=1 first: the speed-up's base
    if any(k < 1 for k in batches):
        parser.error("--batch values must be at least 1")
    table = CalibrationTable.load()
    rates = measure_rates(device, variants)
    print("matrix rates (TFLOP/s): "
          + ", ".join(f"{p} {r / 1e12:.2f}" for p, r in rates["matrix_flops_per_s"].items())
          + "; launch (us): "
          + ", ".join(f"{k} {s * 1e6:.2f}" for k, s in rates["launch_seconds"].items())
          + f"; memory {rates['memory_bytes_per_s'] / 1e9:.1f} GB/s", flush=True)
    rows = []
    date = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else (Path(__file__).resolve().parent / "results" /
                                           f"speed-{device.type}-{date}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(complete: bool) -> None:
        """Write every row so far, atomically: a run cut by a timeout (a GPU session's
        step) leaves the rows it measured."""
        try:
            load = os.getloadavg()
        except OSError:
            load = None
        document = {"command": " ".join(["python", *sys.argv]), "date": date,
                    "device": describe_device(device), "threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(), "loadavg_at_end": load,
                    "torch": torch.__version__, "autodip_watch": __version__,
                    "complete": complete, "rates": rates, "rows": rows}
        partial = out.with_name(out.name + ".part")
        partial.write_text(json.dumps(document, indent=2) + "\n")
        partial.replace(out)

    wanted = None if args.configs == "all" else set(args.configs.split(","))
    for groups, params in configurations(table):
        if wanted is not None and f"{params.depth}/{params.width}/{params.skip}" not in wanted:
            continue
        timed: dict[tuple, list[float]] = {}
        for size in (int(s) for s in args.sizes.split(",")):
            # A plane is padded to a size the depth runs on (d8 needs >= 512 px).
            shape = runnable_shape((size, size), params.depth)
            macs = forward_macs(meta_network(params), shape)
            eager_rate = None  # planes/s of the eager fit at K=1: the reference
            for variant in variants:
                options, tf32 = VARIANTS[variant], VARIANT_TF32.get(variant)
                use_tf32(tf32)
                warmup = warmup_for(options, args.warmup)
                single_rate = None  # planes/s at K=1, for the speed-up of larger K
                for planes in batches:
                    key = (shape, variant, planes)
                    if key not in timed:  # 256 px at depth 8 runs as 512 px
                        timed[key] = time_iterations(params, shape, device, args.iterations,
                                                     warmup, options, planes)
                    times = timed[key]
                    median = statistics.median(times)
                    flops = iteration_flops(params, shape, planes)
                    kernels = kernels_per_iteration(params, shape, planes)
                    traffic = traffic_per_iteration(params, shape, planes)
                    planes_per_s = planes / (median * params.iterations)
                    if planes == 1:
                        single_rate = planes_per_s
                        if variant == "eager":
                            eager_rate = planes_per_s
                    row = {"groups": groups, "depth": params.depth, "width": params.width,
                           "skip": params.skip, "size": size, "padded": list(shape),
                           "variant": variant, "gmac_forward": macs / 1e9,
                           "median_s_per_iteration": median, "times": times,
                           "group_iterations": params.iterations,
                           "gflops_achieved": flops / median / 1e9,
                           "batch": planes, "warmup": warmup,
                           "gflop_per_iteration": flops / 1e9,
                           "kernels_per_iteration": kernels,
                           "planes_per_s": planes_per_s,
                           "speedup_over_k1": (planes_per_s / single_rate
                                               if single_rate else None),
                           # planes/s over the single eager fit of the same run (list
                           # "eager" first in --variants to get it for every row)
                           "speedup_over_eager_k1": (planes_per_s / eager_rate
                                                     if eager_rate else None)}
                    row.update(floor_fields(options, flops, kernels, traffic, rates, device,
                                            median, tf32))
                    rows.append(row)
                    save(complete=False)
                    print(f"{groups:50s} d{params.depth}/w{params.width}/s{params.skip} {size} "
                          f"{variant} K={planes}: {median:.4f} s/it, floor {row['floor_s']:.4f} s "
                          f"({row['bound']}), {planes_per_s:.4f} planes/s", flush=True)
    save(complete=True)
    print(f"\nwritten {out}\n")
    print("| configuration | used by | plane (padded) | variant | K | GMAC fwd | median s/iter "
          "| achieved GFLOP/s | s per plane (group iterations) | compute floor s "
          "| launch floor s | memory floor s | bound | measured/floor | planes/s "
          "| speed-up over K=1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        launch = "n/a" if row["launch_floor_s"] is None else f"{row['launch_floor_s']:.4f}"
        speedup = "" if row["speedup_over_k1"] is None else f"{row['speedup_over_k1']:.2f}"
        print(f"| d{row['depth']}/w{row['width']}/s{row['skip']} | {row['groups']} "
              f"| {row['size']} ({row['padded'][0]}) | {row['variant']} | {row['batch']} "
              f"| {row['gmac_forward']:.1f} | {row['median_s_per_iteration']:.4f} "
              f"| {row['gflops_achieved']:.0f} "
              f"| {row['median_s_per_iteration'] * row['group_iterations'] / row['batch']:.1f} "
              f"| {row['compute_floor_s']:.4f} | {launch} | {row['memory_floor_s']:.4f} "
              f"| {row['bound']} "
              f"| {row['measured_over_floor']:.1f} | {row['planes_per_s']:.4f} | {speedup} |")


if __name__ == "__main__":
    main()
