"""Score ground-truth-free output rules on recorded DIP trajectories (issue 14).

``bench/trajectories.py`` keeps every iteration's output of paper-mode fits. This script
applies rules that a user without ground truth could run to those very outputs, and
scores each against the ground truth, so that rules are compared on the same fits:

* ``last``: the output of the transferred iteration count N (paper mode);
* ``window F``: the mean of the outputs of the last F x N iterations before N;
* ``window F clean``: the same, leaving out iterations whose loss spiked;
* ``ensemble K``: the mean over K seeds of a per-seed rule;
* stopping rules (ES-WMV, discrepancy) that pick the iteration from the fit itself.

It also summarises the trajectories themselves: where PSNR peaks relative to N, how
often and how deep the loss spikes are, and the seed spread.

    python bench/analyse_trajectories.py bench/results/trajectories-cpu-asc.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pairs import PAIRS, Scorer, load  # noqa: E402
from trajectories import DEFAULT_STORE  # noqa: E402

from autodip_watch.dip.noise import Anscombe, NoiseModel  # noqa: E402
from autodip_watch.dip.intensity import denormalise, normalise  # noqa: E402
from autodip_watch.dip.plane import MEMBER_SEED_STRIDE, member_seed, tile_noise_variances  # noqa: E402
from autodip_watch.dip.discrepancy import DiscrepancyStop  # noqa: E402
from autodip_watch.dip.options import FitOptions  # noqa: E402
from autodip_watch.dip.tiling import Tile  # noqa: E402


def spikes(losses: np.ndarray, window: int = 20, factor: float = 1.1) -> np.ndarray:
    """Iterations whose loss exceeds ``factor`` x the lowest loss of the ``window`` before."""
    flagged = np.zeros(len(losses), dtype=bool)
    for i in range(1, len(losses)):
        reference = losses[max(0, i - window):i].min()
        flagged[i] = losses[i] > factor * reference
    return flagged


class Run:
    def __init__(self, record: dict, store: Path) -> None:
        self.record = record
        self.frames = np.load(store / record["frames"], mmap_mode="r")
        self.losses = np.asarray(record["losses"])
        self.psnr = np.asarray(record["psnr"])
        self.stop = record["transferred_iterations"]
        self.variant = record.get("variant", "paper")
        vst = record.get("vst")
        self.transform = None
        if vst:
            self.transform = Anscombe.for_model(NoiseModel(vst["slope"], vst["intercept"]))
            self.low, self.high = vst["low"], vst["high"]

    def back(self, fitted: np.ndarray) -> np.ndarray:
        """Frames are kept in the fitted domain; this maps a combination of them back."""
        if self.transform is None:
            return fitted
        return np.clip(self.transform.inverse(fitted * (self.high - self.low) + self.low), 0, 1)

    def mean(self, first: int, last: int, keep: np.ndarray | None = None) -> np.ndarray:
        """Mean output of iterations first..last (1-based, inclusive), optionally masked."""
        indices = np.arange(first - 1, last)
        if keep is not None:
            chosen = indices[keep[indices]]
            indices = chosen if len(chosen) else indices[-1:]
        total = np.zeros(self.frames.shape[1:], dtype=np.float64)
        for index in indices:
            total += self.frames[index]
        return total / len(indices)

    def frame(self, iteration: int) -> np.ndarray:
        return np.asarray(self.frames[iteration - 1], dtype=np.float64)


def es_wmv(run: Run, window: int, patience: int) -> int:
    """Early stopping by windowed moving variance (Wang et al., TMLR 2023): the iteration
    where the variance of the last ``window`` outputs is lowest, once it has not improved
    for ``patience`` iterations (or the last iteration)."""
    frames = run.frames
    best, best_at, since = np.inf, len(frames), 0
    for end in range(window, len(frames) + 1):
        block = np.asarray(frames[end - window:end], dtype=np.float32)
        variance = float(block.var(axis=0).mean())
        if variance < best:
            best, best_at, since = variance, end, 0
        else:
            since += 1
            if since >= patience:
                break
    return best_at


def summarise(runs: list[Run], scorer: Scorer, low: float, high: float, dtype,
              with_es: bool = False, variance: float | None = None) -> dict:
    stop = runs[0].stop

    def score(unit: np.ndarray) -> float:
        return scorer.psnr(denormalise(runs[0].back(unit), low, high, dtype))

    rows: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    for run in runs:
        add("last", score(run.frame(stop)))
        add("peak (oracle)", float(run.psnr.max()))
        add("peak at / N", float((run.psnr.argmax() + 1) / stop))
        flagged = spikes(run.losses)
        add("spikes per 100 it", 100 * float(flagged.mean()))
        add("min late PSNR", float(run.psnr[stop // 2:stop].min()))
        if variance is not None:  # the discrepancy principle against the estimated noise
            lowest = np.minimum.accumulate(run.losses)
            add("lowest loss at N / noise variance", float(lowest[stop - 1] / variance))
            reached = np.nonzero(lowest <= variance)[0]
            add("loss reaches the noise at / N",
                float((reached[0] + 1) / stop) if len(reached) else np.nan)
        for fraction in (0.1, 0.2, 1 / 3, 0.5):
            width = max(1, int(round(fraction * stop)))
            add(f"window {fraction:.2f}", score(run.mean(stop - width + 1, stop)))
            add(f"window {fraction:.2f} clean", score(run.mean(stop - width + 1, stop, ~flagged)))
        for window, patience in ((20, 50), (50, 100)) if with_es else ():
            at = min(es_wmv(run, window, patience), len(run.frames))
            add(f"es-wmv {window}/{patience} at / N", at / stop)
            add(f"es-wmv {window}/{patience}", score(run.frame(at)))
    # Later or earlier ends: is the transferred count still right for a mean of fits?
    longest = min(len(run.frames) for run in runs)
    for factor in (0.75, 1.0, 1.25, 1.5):
        end = int(round(factor * stop))
        if end > longest:
            continue
        width = max(1, int(round(0.2 * end)))
        add(f"last at {factor:.2f} N", float(np.mean([run.psnr[end - 1] for run in runs])))
        add(f"ensemble all at {factor:.2f} N", score(np.mean([r.frame(end) for r in runs], axis=0)))
        add(f"ensemble all window 0.20 at {factor:.2f} N", score(np.mean(
            [r.mean(end - width + 1, end, ~spikes(r.losses)) for r in runs], axis=0)))
    # Ensembles of K seeds: disjoint groups of the runs in seed order.
    for k in (2, 3, 4):
        for first in range(0, len(runs) - k + 1, k):
            group = runs[first:first + k]
            add(f"ensemble {k} last", score(np.mean([r.frame(stop) for r in group], axis=0)))
            for fraction in (0.2, 1 / 3):
                width = max(1, int(round(fraction * stop)))
                add(f"ensemble {k} window {fraction:.2f} clean", score(np.mean(
                    [r.mean(stop - width + 1, stop, ~spikes(r.losses)) for r in group], axis=0)))
    rows.update(stable_mode(runs, score, variance=variance))
    return rows


def stable_mode(runs: list[Run], score, members: int = 3, spike_factor: float = 1.05,
                variance: float | None = None, extend_fraction: float = 0.25) -> dict:
    """The product's stable mode rebuilt from paper-mode trajectories of the member seeds.

    Stable seed s is the ensemble of seeds ``member_seed(s, k)``, k < ``members``, each
    giving the mean of its clean outputs over the last F x end iterations (spikes judged as
    ``_Stabiliser`` does: a loss above ``spike_factor`` x the lowest of the 20 before).
    With the plane's noise ``variance`` (unit scale), also the extended rule: each member
    ends where the product's ``DiscrepancyStop`` would stop it, replayed on its recorded
    losses (a stable seed whose members would run past the recording is not scored).
    Only stable seeds whose every member was recorded are scored.
    """
    by_seed = {run.record["seed"]: run for run in runs}
    rows: dict[str, list[float]] = {}
    longest = min(len(run.frames) for run in runs)
    for seed in sorted(s for s in by_seed if s < MEMBER_SEED_STRIDE):
        group = [by_seed.get(member_seed(seed, k)) for k in range(members)]
        if any(run is None for run in group):
            continue
        stop = group[0].stop
        for factor in (1.0, 1.25):
            end = int(round(factor * stop))
            if end > longest:
                continue
            for fraction in (0.1, 0.2, 1 / 3):
                width = max(1, int(round(fraction * end)))
                mean = np.mean([r.mean(end - width + 1, end,
                                       ~spikes(r.losses, factor=spike_factor)) for r in group],
                               axis=0)
                rows.setdefault(f"stable K={members} window {fraction:.2f} at {factor:.2f} N",
                                []).append(score(mean))
        if variance is None:
            continue

        def ensemble(ends: list[int]) -> float:
            return score(np.mean([r.mean(end - max(1, int(round(0.2 * end))) + 1, end,
                                         ~spikes(r.losses, factor=spike_factor))
                                  for r, end in zip(group, ends)], axis=0))

        ends = discrepancy_ends(group, variance, extend_fraction)
        if ends is not None:
            rows.setdefault(EXTENDED_ROW, []).append(ensemble(ends))
            rows.setdefault("  its ends / N", []).append(float(np.mean(ends)) / stop)
        # Not used: also cutting a fit where its lowest loss reaches the noise before N
        # (not before N / 2).
        cuts = []
        for run in group:
            reached = np.nonzero(np.minimum.accumulate(run.losses[:stop]) <= variance)[0]
            cuts.append(max(int(reached[0]) + 1, stop // 2) if len(reached) else stop)
        rows.setdefault("the same, cut at the noise level before N", []).append(ensemble(cuts))
        rows.setdefault("  its ends / N ", []).append(float(np.mean(cuts)) / stop)
    return rows


def discrepancy_ends(group: list[Run], variance: float | None,
                     extend_fraction: float) -> list[int] | None:
    """Per run, where the product's extension stops it (``fit.DiscrepancyStop``), or
    None when that is not known from the recording."""
    stop = group[0].stop
    plan = DiscrepancyStop.plan(FitOptions(extend_fraction=extend_fraction), stop,
                                [variance] * len(group), len(group))
    if plan is None:
        return [stop] * len(group)
    # Runs may be recorded to different lengths: a run's losses past its recording are
    # never read while it is undecided (checked below), and no longer once it is.
    losses = np.full((max(len(run.losses) for run in group), len(group)), np.inf)
    for k, run in enumerate(group):
        losses[:len(run.losses), k] = run.losses
    losses = torch.from_numpy(losses)
    for candidate in plan.candidates:
        if any(stop is None and candidate > len(run.losses)
               for stop, run in zip(plan.stops, group)):
            return None
        if plan.decide(candidate, losses):
            return list(plan.stops)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--store", default=str(DEFAULT_STORE))
    parser.add_argument("--peers", default=None,
                        help="quality.py JSON with the classical peers: print the bench table")
    parser.add_argument("--es", action="store_true",
                        help="also the ES-WMV stopping rule (slow: a variance per window)")
    args = parser.parse_args()
    store = Path(args.store)
    records = [r for path in args.results for r in json.loads(Path(path).read_text())["runs"]]
    table: dict[str, dict] = {}
    for name in dict.fromkeys(r["pair"] for r in records):
        pair = PAIRS[name]
        noisy, truth = load(pair)
        scorer = Scorer(pair, noisy, truth)
        unit, low, high = normalise(noisy)
        # The trajectories fit the whole plane as one tile: its mean noise variance.
        whole = Tile(0, unit.shape[0], 0, unit.shape[1])
        variance = tile_noise_variances(unit, None, [whole])[0][0]
        mine = [Run(r, store) for r in sorted(records, key=lambda r: r["seed"])
                if r["pair"] == name]
        for variant in dict.fromkeys(run.variant for run in mine):
            runs = [run for run in mine if run.variant == variant]
            rows = summarise(runs, scorer, low, high, noisy.dtype, args.es,
                             variance if variant == "paper" else None)
            if variant == "paper":
                table[name] = {"paper": rows["last"], "N": runs[0].stop,
                               "stable": rows.get(STABLE_ROW, [])}
            print(f"\n{name} [{variant}]: {len(runs)} seeds, N = {runs[0].stop}, "
                  f"noisy {scorer.psnr(noisy):.2f}")
            for key, values in rows.items():
                values = np.asarray(values)
                spread = f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else ""
                print(f"  {key:32s} {values.mean():7.2f}{spread}   "
                      + " ".join(f"{v:.2f}" for v in values))
    if args.peers:
        print_table(table, json.loads(Path(args.peers).read_text())["rows"])


#: The rule of the product's stable mode (dip/modes.py) in ``stable_mode``'s row names:
#: before the extension past N, and with it (the default since then).
FIXED_ROW = "stable K=3 window 0.20 at 1.00 N"
EXTENDED_ROW = "stable K=3 window 0.20, discrepancy extension"
STABLE_ROW = EXTENDED_ROW
PEERS = ("noisy", "tv (oracle weight)", "bm3d", "bm3d-vst", "tv-discrepancy")


def print_table(table: dict[str, dict], peers: list[dict]) -> None:
    """The bench README's table: peers, paper and stable mode (mean ± sd over seeds)."""
    def spread(values: list[float]) -> str:
        if not values:
            return "waiting"
        text = f"{np.mean(values):.2f}"
        return text + (f" ± {np.std(values, ddof=1):.2f} (n={len(values)})"
                       if len(values) > 1 else " (n=1)")

    print("\n| pair | " + " | ".join(PEERS) + " | paper | stable |")
    print("|---" * (len(PEERS) + 3) + "|")
    for name, row in table.items():
        found = {r["method"]: r["psnr"] for r in peers if r["pair"] == name}
        cells = [f"{found[m]:.2f}" if m in found else "-" for m in PEERS]
        print(f"| {name} | " + " | ".join(cells)
              + f" | {spread(row['paper'])} | {spread(row['stable'])} |")


if __name__ == "__main__":
    main()
