"""Speed benchmark: median seconds per DIP iteration for every group configuration.

Times the full optimisation step (forward, MSE, backward, Adam) of each distinct
configuration of the shipped table and of the original DIP baseline, at 256x256 and
512x512, on one device. Also counts multiply-accumulates per forward pass, so that
each time can be compared with a floor (MACs x 3 for forward+backward over the
device's matrix rate).

    python bench/speed.py --device cpu --sizes 256,512 --iterations 3 --warmup 1
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
from autodip_watch.dip.fit import make_input  # noqa: E402
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


def time_iterations(params: DipParams, shape: tuple[int, int], device: torch.device,
                    iterations: int, warmup: int) -> list[float]:
    """Wall time of each optimisation step, synchronised on GPUs."""
    torch.manual_seed(0)
    net = SkipNet(params.depth, params.width, params.skip).to(device).train()
    z = make_input(shape, torch.Generator().manual_seed(0)).to(device)
    target = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(1)).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    times = []
    for step in range(warmup + iterations):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(net(z), target)
        loss.backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - started)
    return times


def configurations(table: CalibrationTable) -> list[tuple[str, DipParams]]:
    """The original DIP baseline, then each distinct architecture of the default table."""
    groups_of: dict[tuple, list[str]] = {}
    params_of: dict[tuple, DipParams] = {}
    for level, group, params in table.entries():
        key = (params.depth, params.width, params.skip)
        groups_of.setdefault(key, []).append(group)
        params_of.setdefault(key, params)
    rows = [("baseline (original DIP)", BASELINE)]
    rows += [(", ".join(groups), params_of[key]) for key, groups in groups_of.items()]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = choose_device(args.device)
    table = CalibrationTable.load()
    rows = []
    for groups, params in configurations(table):
        for size in (int(s) for s in args.sizes.split(",")):
            # A plane is padded to a size the depth runs on (d8 needs >= 512 px).
            shape = runnable_shape((size, size), params.depth)
            macs = forward_macs(SkipNet(params.depth, params.width, params.skip), shape)
            times = time_iterations(params, shape, device, args.iterations, args.warmup)
            median = statistics.median(times)
            rows.append({"groups": groups, "depth": params.depth, "width": params.width,
                         "skip": params.skip, "size": size, "padded": list(shape), "gmac_forward": macs / 1e9,
                         "median_s_per_iteration": median, "times": times,
                         "group_iterations": params.iterations,
                         "gflops_achieved": 3 * 2 * macs / median / 1e9})
            print(f"{groups:60s} d{params.depth}/w{params.width}/s{params.skip} {size}: "
                  f"{median:.3f} s/it, {macs / 1e9:.1f} GMAC fwd", flush=True)
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
    print("| configuration | used by | plane (padded) | GMAC fwd | median s/iter | achieved GFLOP/s | s per plane (group iterations) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| d{row['depth']}/w{row['width']}/s{row['skip']} | {row['groups']} | {row['size']} ({row['padded'][0]}) | "
              f"{row['gmac_forward']:.1f} | {row['median_s_per_iteration']:.3f} | "
              f"{row['gflops_achieved']:.0f} | {row['median_s_per_iteration'] * row['group_iterations']:.0f} |")


if __name__ == "__main__":
    main()
