"""Does the same command report the same latency?  Three runs of one search, minutes apart.

    python bench/latency_repeat.py [--runs 3] [--gap 120] [--trials 24] [--budget 300MFLOPs]
                                   [--space darts] [--folder results/latency_repeat] [--out REPORT]

Each run is ``search.py`` in a fresh process (its own start-up calibration of the latency
anchors), with the same seed, so it proposes the same candidates; ``zc:params`` scores them (the
ranking does not matter here, and it takes microseconds), without module verdicts or export.
For every architecture all runs reported, it prints the spread of the predictions (largest /
smallest) beside the spread the runs' stated 90% intervals allow, and whether the intervals
overlap (some true time lies in all of them).  Resumable: a finished run's folder is reused.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command, emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def one_run(folder: Path, a: argparse.Namespace) -> Path:
    if (folder / "summary.json").exists():
        return folder
    cmd = [sys.executable, str(ROOT / "search.py"), "--budget", a.budget, "--space", a.space, "--trials",
           str(a.trials), "--estimator", "zc:params", "--verdict-pairs", "0", "--export", "none", "--seed", "0",
           "--quiet", "--out", str(folder)]
    if a.data:
        cmd += ["--data", a.data]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"run {folder.name} failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    return folder


def compare(folders: List[Path]) -> pd.DataFrame:
    """One row per architecture every run reported a latency for."""
    frames = []
    for i, f in enumerate(folders):
        t = pd.read_csv(f / "trials.csv").dropna(subset=["latency_ms"]).drop_duplicates("arch_hash")
        frames.append(t.set_index("arch_hash")[["latency_ms", "latency_low_ms", "latency_high_ms"]].add_suffix(f"_{i}"))
    df = pd.concat(frames, axis=1, join="inner")
    n = len(folders)
    ms = df[[f"latency_ms_{i}" for i in range(n)]]
    low = df[[f"latency_low_ms_{i}" for i in range(n)]].max(axis=1)
    high = df[[f"latency_high_ms_{i}" for i in range(n)]].min(axis=1)
    out = pd.DataFrame({"median_ms": ms.median(axis=1), "spread": ms.max(axis=1) / ms.min(axis=1)})
    # Two predictions of one true time, each within its interval, differ at most by the ratio of
    # one interval's ends: (1 + hi) / (1 + lo) = high_ms / low_ms.
    allowed = pd.concat([df[f"latency_high_ms_{i}"] / df[f"latency_low_ms_{i}"] for i in range(n)], axis=1).min(axis=1)
    out["allowed"] = allowed
    out["overlap"] = low <= high
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--gap", type=float, default=120.0, help="seconds between runs")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--budget", default="300MFLOPs")
    ap.add_argument("--space", default="darts")
    ap.add_argument("--data", default=None, help="default: search.py's (NAS_DATA or the bundled fallback)")
    ap.add_argument("--folder", default=str(ROOT / "results" / "latency_repeat"), help="the runs' folders")
    ap.add_argument("--out", default=None, help="also write the report here")
    a = ap.parse_args()
    base = Path(a.folder)
    base.mkdir(parents=True, exist_ok=True)
    folders = []
    for i in range(a.runs):
        f = base / f"run{i}"
        fresh = not (f / "summary.json").exists()
        if fresh and folders and a.gap > 0:
            time.sleep(a.gap)
        print(f"run {i + 1}/{a.runs}: {'searching' if fresh else 'done before'} ({f})", file=sys.stderr)
        folders.append(one_run(f, a))
    df = compare(folders)
    if df.empty:
        sys.exit("no architecture had a latency in every run: is a latency table shipped for this machine?")
    cfgs = [json.loads((f / "config.json").read_text()).get("latency_table") or {} for f in folders]
    iv = cfgs[0].get("interval") or {}
    loads = [cfg.get("calibration_load") or 0 for cfg in cfgs]
    within = df["spread"] <= df["allowed"]
    lines = [command(), "",
             f"{a.runs} runs of search.py --budget {a.budget} --space {a.space} --trials {a.trials} --seed 0 "
             f"(estimator zc:params), {a.gap:.0f} s apart; {len(df)} architectures with a latency in every run",
             f"stated interval: {iv.get('low_pct', float('nan')):+.1f}% .. {iv.get('high_pct', float('nan')):+.1f}% "
             f"prediction error ({iv.get('source', '?')}{', borrowed from ' + iv['table'] if iv.get('borrowed') else ''})",
             f"other processes' CPU share at the runs' calibrations: {', '.join(f'{100 * v:.0f}%' for v in loads)}",
             "",
             f"spread of one architecture's prediction across the runs (largest / smallest): median "
             f"{df['spread'].median():.3f}, 90th percentile {df['spread'].quantile(0.9):.3f}, max {df['spread'].max():.3f}",
             f"spread the interval allows: {df['allowed'].median():.3f}",
             f"within the interval's spread: {100 * within.mean():.0f}% of architectures; "
             f"the runs' 90% intervals overlap: {100 * df['overlap'].mean():.0f}%",
             "", df.sort_values("median_ms").to_string(float_format=lambda v: f"{v:.3f}")]
    emit(lines, a.out)


if __name__ == "__main__":
    main()
