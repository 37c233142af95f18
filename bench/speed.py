"""Speed benchmark: median seconds per DIP iteration for every group configuration.

Times the real fit loop (forward, MSE, backward, Adam: ``fit_tiles``) of each distinct
configuration of the shipped table and of the original DIP baseline, at 256x256 and
512x512, on one device, for each speed variant asked for (all in the same run). Also counts multiply-accumulates per forward pass, so that
each time can be compared with a floor (MACs x 3 for forward+backward over the
device's matrix rate).

    python bench/speed.py --device cpu --sizes 256,512 --iterations 3 --warmup 1
    python bench/speed.py --device cuda --variants strict-fp32,eager,channels_last,bf16,compile
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autodip_watch import __version__  # noqa: E402
from autodip_watch.dip.device import choose_device, describe_device  # noqa: E402
import numpy as np  # noqa: E402

from autodip_watch.dip.fit import FitOptions, fit_tiles  # noqa: E402
from autodip_watch.dip.network import BASELINE, DipParams, SkipNet  # noqa: E402
from autodip_watch.dip.tiling import runnable_shape  # noqa: E402
from autodip_watch.transfer import CalibrationTable  # noqa: E402


def forward_macs(net: nn.Module, shape: tuple[int, int]) -> int:
    """Multiply-accumulates of the convolutions in one forward pass."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * module.in_channels * kh * kw // module.groups

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(1, 32, *shape))
    for hook in hooks:
        hook.remove()
    return total


VARIANTS = {
    "eager": FitOptions(),
    "strict-fp32": FitOptions(tf32=False),
    "tf32": FitOptions(tf32=True),
    "channels_last": FitOptions(channels_last=True),
    "bf16": FitOptions(bf16=True),
    "compile": FitOptions(compile=True),
}


def time_iterations(params: DipParams, shape: tuple[int, int], device: torch.device,
                    iterations: int, warmup: int, options: FitOptions) -> list[float]:
    """Wall time of each iteration of the real fit loop (``fit_tiles``), synchronised.

    The first ``warmup`` iterations (allocation, autotuning, compilation) are dropped.
    """
    stamps: list[float] = []

    def stamp(iteration: int, total: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    tile = np.random.default_rng(0).random(shape, dtype=np.float32)
    timed = params.__class__(params.depth, params.width, params.skip, warmup + iterations)
    if device.type == "cuda":
        torch.cuda.synchronize()
    fit_tiles([tile], timed, device, [options], progress=stamp)
    return [b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:])] if warmup else \
        [b - a for a, b in zip(stamps, stamps[1:])]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variants", default="eager",
                        help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--configs", default="all",
                        help="'all', or comma list of d/w/s labels such as 5/128/4,8/32/4")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = choose_device(args.device)
    table = CalibrationTable.load()
    rows = []
    wanted = None if args.configs == "all" else set(args.configs.split(","))
    for groups, params in configurations(table):
        if wanted is not None and f"{params.depth}/{params.width}/{params.skip}" not in wanted:
            continue
        timed: dict[tuple, list[float]] = {}
        for size in (int(s) for s in args.sizes.split(",")):
            # A plane is padded to a size the depth runs on (d8 needs >= 512 px).
            shape = runnable_shape((size, size), params.depth)
            macs = forward_macs(SkipNet(params.depth, params.width, params.skip), shape)
            for variant in args.variants.split(","):
                if (shape, variant) not in timed:  # 256 px at depth 8 runs as 512 px
                    timed[shape, variant] = time_iterations(
                        params, shape, device, args.iterations, max(args.warmup, 1),
                        VARIANTS[variant])
                times = timed[shape, variant]
                median = statistics.median(times)
                rows.append({"groups": groups, "depth": params.depth, "width": params.width,
                             "skip": params.skip, "size": size, "padded": list(shape),
                             "variant": variant, "gmac_forward": macs / 1e9,
                             "median_s_per_iteration": median, "times": times,
                             "group_iterations": params.iterations,
                             "gflops_achieved": 3 * 2 * macs / median / 1e9})
                print(f"{groups:50s} d{params.depth}/w{params.width}/s{params.skip} {size} "
                      f"{variant}: {median:.3f} s/it, {macs / 1e9:.1f} GMAC fwd", flush=True)
    date = datetime.date.today().isoformat()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    document = {"command": " ".join(["python", *sys.argv]), "date": date,
                "device": describe_device(device), "threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(), "loadavg_at_end": load,
                "torch": torch.__version__, "autodip_watch": __version__, "rows": rows}
    out = Path(args.out) if args.out else (Path(__file__).resolve().parent / "results" /
                                           f"speed-{device.type}-{date}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwritten {out}\n")
    print("| configuration | used by | plane (padded) | variant | GMAC fwd | median s/iter | achieved GFLOP/s | s per plane (group iterations) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| d{row['depth']}/w{row['width']}/s{row['skip']} | {row['groups']} | {row['size']} ({row['padded'][0]}) | {row['variant']} | "
              f"{row['gmac_forward']:.1f} | {row['median_s_per_iteration']:.3f} | "
              f"{row['gflops_achieved']:.0f} | {row['median_s_per_iteration'] * row['group_iterations']:.0f} |")


if __name__ == "__main__":
    main()
