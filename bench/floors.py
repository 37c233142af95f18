"""Floors of every configuration from counts and given device rates (no timing).

The counts (FLOPs, kernel launches, bytes moved per iteration) come from
``bench/cost.py`` on the meta device; the rates are arguments. With the
defaults they are a datasheet projection for an H100 SXM (fp32 67, TF32 495 and bf16
989 dense TFLOP/s, 3.35 TB/s HBM3) and assumed launch costs (8 us per eager op, 2 us
per kernel replayed from a CUDA graph). They are not measurements: ``bench/speed.py``
measures the rates on the device and sets each timing against them; this table says
what to expect and which resource will bind, before a GPU is available.

    python bench/floors.py --size 512 --batch 1,32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cost import (floor_seconds, iteration_flops,  # noqa: E402
                  kernels_per_iteration, traffic_per_iteration)
from autodip_watch.dip.tiling import runnable_shape  # noqa: E402
from autodip_watch.transfer.table import CalibrationTable  # noqa: E402
from speed import configurations  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--fp32", type=float, default=67e12, help="FLOP/s without tensor cores")
    parser.add_argument("--tf32", type=float, default=495e12, help="dense TF32 FLOP/s")
    parser.add_argument("--bf16", type=float, default=989e12, help="dense bf16 FLOP/s")
    parser.add_argument("--bandwidth", type=float, default=3.35e12, help="memory bytes/s")
    parser.add_argument("--launch-eager", type=float, default=8e-6, help="s per eager op")
    parser.add_argument("--launch-graphed", type=float, default=2e-6,
                        help="s per kernel replayed from a CUDA graph")
    args = parser.parse_args()
    print(f"rates: fp32 {args.fp32 / 1e12:.0f}, tf32 {args.tf32 / 1e12:.0f}, bf16 "
          f"{args.bf16 / 1e12:.0f} TFLOP/s; memory {args.bandwidth / 1e12:.2f} TB/s; launch "
          f"{args.launch_eager * 1e6:.0f} us eager, {args.launch_graphed * 1e6:.0f} us graphed")
    print("| configuration | used by | K | GFLOP/iter | kernels/iter | GB moved/iter "
          "| floor ms/iter: fp32 eager | TF32 eager | TF32 graphed | bf16 graphed "
          "| bound (TF32 graphed) | floor s per plane (TF32 graphed, group iterations) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for groups, params in configurations(CalibrationTable.load()):
        shape = runnable_shape((args.size, args.size), params.depth)
        for k in (int(b) for b in args.batch.split(",")):
            flops = iteration_flops(params, shape, k)
            kernels = kernels_per_iteration(params, shape, k)
            traffic = traffic_per_iteration(params, shape, k)
            floors = {
                "fp32 eager": floor_seconds(flops, args.fp32, kernels, args.launch_eager,
                                            traffic, args.bandwidth),
                "tf32 eager": floor_seconds(flops, args.tf32, kernels, args.launch_eager,
                                            traffic, args.bandwidth),
                "tf32 graphed": floor_seconds(flops, args.tf32, kernels, args.launch_graphed,
                                              traffic, args.bandwidth),
                "bf16 graphed": floor_seconds(flops, args.bf16, kernels, args.launch_graphed,
                                              traffic / 2, args.bandwidth),
            }
            graphed = floors["tf32 graphed"]
            print(f"| d{params.depth}/w{params.width}/s{params.skip} | {groups} | {k} "
                  f"| {flops / 1e9:.1f} | {kernels} | {traffic / 1e9:.2f} | "
                  + " | ".join(f"{f.seconds * 1e3:.2f}" for f in floors.values())
                  + f" | {graphed.bound} | {graphed.seconds * params.iterations / k:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
