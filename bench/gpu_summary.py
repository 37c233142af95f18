"""Headline numbers of a GPU session against issue 17's targets, as Markdown.

Reads the results folder of ``bench/gpu_session.sh`` (the files of its results.tar)
and prints what the issue asks, each beside its floor or reference; every number is
from those files (nothing is computed that is not in them, apart from ratios and means).

    python bench/gpu_summary.py RESULTS_FOLDER
"""

from __future__ import annotations

import json
import statistics
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def steps(folder: Path) -> None:
    print("## Steps\n\n| step | exit | seconds | limit s | note |\n|---|---|---|---|---|")
    path = folder / "steps.jsonl"
    for line in (path.read_text().splitlines() if path.exists() else []):
        row = json.loads(line)
        print(f"| {row['step']} | {row['rc']} | {row['seconds']} | {row['limit']} | "
              f"{row.get('note', '')} |")


def tests(folder: Path) -> None:
    print("\n## CUDA tests (pytest -m cuda)\n")
    try:
        suite = ET.parse(folder / "tests-cuda.xml").getroot()
    except (OSError, ET.ParseError):
        print("no JUnit report (the step did not finish)")
        return
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failures, errors, skipped = (int(suite.get(k, 0)) for k in
                                        ("tests", "failures", "errors", "skipped"))
    print(f"{total - failures - errors - skipped} passed, {failures} failed, {errors} errors, "
          f"{skipped} skipped, of {total}")
    for case in suite.iter("testcase"):
        for kind in ("failure", "error"):
            if case.find(kind) is not None:
                print(f"- {kind}: {case.get('classname')}.{case.get('name')}")


def speed_baseline(folder: Path) -> None:
    doc = read(folder / "speed-baseline.json")
    print("\n## Baseline d5/w128/s4 per iteration (target: best >= 3x eager fp32)\n")
    if not doc:
        print("no results")
        return
    rows = [r for r in doc["rows"] if r["batch"] == 1]
    eager = next((r for r in rows if r["variant"] == "eager"), None)
    print("| variant | ms/iter | x eager | floor ms (bound) | measured/floor |\n|---|---|---|---|---|")
    for row in rows:
        ratio = eager["median_s_per_iteration"] / row["median_s_per_iteration"] if eager else None
        print(f"| {row['variant']} | {row['median_s_per_iteration'] * 1e3:.2f} | "
              f"{'' if ratio is None else f'{ratio:.2f}'} | {row['floor_s'] * 1e3:.2f} "
              f"({row['bound']}) | {row['measured_over_floor']:.1f} |")
    if eager and len(rows) > 1:
        best = min(rows, key=lambda r: r["median_s_per_iteration"])
        print(f"\nbest: {best['variant']}, "
              f"{eager['median_s_per_iteration'] / best['median_s_per_iteration']:.2f}x eager "
              f"(complete run: {doc.get('complete')})")


def speed_widefield(folder: Path) -> None:
    doc = read(folder / "speed-widefield.json")
    print("\n## Widefield planes/s, batched vs single eager (target >= 10x)\n")
    if not doc:
        print("no results")
        return
    print("| configuration | variant | K | ms/iter | planes/s | x single eager | floor ms (bound) |"
          "\n|---|---|---|---|---|---|---|")
    for row in doc["rows"]:
        up = row.get("speedup_over_eager_k1")
        print(f"| d{row['depth']}/w{row['width']}/s{row['skip']} | {row['variant']} | "
              f"{row['batch']} | {row['median_s_per_iteration'] * 1e3:.2f} | "
              f"{row['planes_per_s']:.3f} | {'' if up is None else f'{up:.1f}'} | "
              f"{row['floor_s'] * 1e3:.2f} ({row['bound']}) |")


def confocal(folder: Path) -> None:
    doc = read(folder / "confocal.json")
    print("\n## 3-channel 512x512 confocal BPAE case, autodip-watch denoise (target < 20 s)\n")
    if not doc:
        print("no results")
        return
    print("| run | wall s | pipeline s | per channel: group, s, PSNR noisy -> denoised |"
          "\n|---|---|---|---|")
    for run in doc["runs"]:
        channels = "; ".join(f"{c['group']} {c['seconds']:.1f} s {c['psnr_noisy']} -> {c['psnr']}"
                             for c in run["channels"])
        print(f"| {run['label']} | {run['wall_seconds']} | {run['pipeline_seconds']} | {channels} |")


def quality(folder: Path, name: str, title: str) -> None:
    doc = read(folder / name)
    print(f"\n## {title}\n")
    if not doc:
        print("no results")
        return
    by = defaultdict(list)
    for row in doc["rows"]:
        if "variant" in row:
            by[(row["pair"], row["method"], row["variant"])].append(row["psnr"])
    print("| pair | method | variant | seeds | mean PSNR dB |\n|---|---|---|---|---|")
    for (pair, method, variant), values in by.items():
        print(f"| {pair} | {method} | {variant} | {len(values)} | {statistics.mean(values):.2f} |")
    for item in doc.get("paired", []):
        err = item.get("stderr_psnr_difference")
        late = item.get("mean_late_difference")
        print(f"- {item['pair']} {item['variant']} - {item['reference']}: "
              f"{item['mean_psnr_difference']:+.3f} dB"
              + ("" if err is None else f" ± {err:.3f}") + f" over seeds {item['seeds']}"
              + ("" if late is None else f"; late-window mean {late:+.3f} dB"))


def stable(folder: Path) -> None:
    doc = read(folder / "stable.json")
    print("\n## Stable mode: ensemble cost and quality (to set members_cuda)\n")
    if not doc:
        print("no results")
        return
    print("| configuration | variant | members | ms/iter | fit s per plane | x one member |"
          "\n|---|---|---|---|---|---|")
    for row in doc.get("cost", []):
        ratio = row.get("ratio_to_one_member")
        print(f"| {row['configuration']} | {row['variant']} | {row['members']} | "
              f"{row['median_s_per_iteration'] * 1e3:.2f} | {row['fit_seconds_per_plane']:.1f} | "
              f"{'' if ratio is None else f'{ratio:.2f}'} |")
    by = defaultdict(list)
    for row in doc.get("quality", []):
        by[(row["pair"], row["members"])].append(row["psnr"])
    if by:
        print("\n| pair | members | seeds | mean PSNR dB |\n|---|---|---|---|")
        for (pair, members), values in by.items():
            print(f"| {pair} | {members} | {len(values)} | {statistics.mean(values):.2f} |")


def main() -> None:
    folder = Path(sys.argv[1])
    env = read(folder / "env.json") or {}
    print(f"# GPU session: {env.get('device', 'no GPU')}, torch {env.get('torch')} "
          f"(CUDA {env.get('torch_cuda')}), Python {env.get('python')}\n")
    steps(folder)
    tests(folder)
    speed_baseline(folder)
    speed_widefield(folder)
    confocal(folder)
    quality(folder, "quality-baseline.json",
            "DIP baseline d5/w128/s4, 1800 it, FMD widefield nucleus: bf16 / batched vs eager")
    quality(folder, "quality-confocal.json",
            "Confocal FMD pair, calibrated configuration: bf16 / batched vs eager")
    stable(folder)


if __name__ == "__main__":
    main()
