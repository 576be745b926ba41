"""Validation as a search gets it: the same validation in several separate processes, minutes apart.

One process's figure says little on a shared VM: the machine's speed moves by tens of percent over
minutes, so a start-up calibration can be right in one process and off in the next.  Here each
process (``python -m nas.latency validate`` itself, in a fresh interpreter) calibrates as a
latency-budget search does at start-up and times the same random networks (same seed), so:

* per process, the start-up figure (what a search gets) beside the anchored one (the table and
  its model, measured with anchors in every group), and their spread across processes;
* the machine's own noise floor: each network's measured time in each process against its median
  over the processes.  A prediction cannot be expected to land closer to a network's time than the
  same network's time lands to itself from one process to the next.

Resumable: each finished process leaves ``process<i>.csv`` (+ ``.summary.json``) in the folder and
a rerun times only the missing ones.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

from .validate import SEARCH_EVERY, metrics, schedule_column


def run_processes(table: str, child_args: Sequence[str], n: int, gap: float, folder: Path,
                  say: Callable[[str], None] = print) -> List[Path]:
    """Run ``n`` validations of ``table``, one process each, ``gap`` seconds apart."""
    folder.mkdir(parents=True, exist_ok=True)
    files, ran = [], False
    for i in range(n):
        f = folder / f"process{i}.csv"
        files.append(f)
        if f.exists() and f.with_name(f.name + ".summary.json").exists():
            say(f"process {i + 1}/{n}: done before ({f})")
            continue
        if ran and gap > 0:
            say(f"waiting {gap:.0f} s before the next process")
            time.sleep(gap)
        say(f"process {i + 1}/{n}: validating {table}")
        cmd = [sys.executable, "-m", "nas.latency", "validate", str(table), *child_args, "--out", str(f), "--quiet"]
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"validation process {i + 1} failed (exit {r.returncode}): {' '.join(cmd)}")
        ran = True
    return files


def combine(files: Sequence[Path]) -> Tuple[pd.DataFrame, Dict[str, Any]]:
    """(per network and process rows, summary) over the processes' reports."""
    frames, summaries = [], []
    for i, f in enumerate(files):
        df = pd.read_csv(f)
        df.insert(0, "process", i)
        frames.append(df)
        summaries.append(json.loads(f.with_name(f.name + ".summary.json").read_text()))
    rows = pd.concat(frames, ignore_index=True)
    med = rows.groupby("arch")["measured_ms"].transform("median")
    rows["floor_err_pct"] = 100 * (rows["measured_ms"] / med - 1)
    # Schedules every process scored (older reports have the start-up calibration only).
    keys = [k for k in summaries[0].get("schedules") or {} if all(k in (x.get("schedules") or {}) for x in summaries)]
    per = []
    for i, s in enumerate(summaries):
        r = rows[rows.process == i]
        per.append({"process": i, "startup_within10_pct": s["startup"]["within10_pct"],
                    "startup_rmspe_pct": s["startup"]["rmspe_pct"], "anchored_within10_pct": s["within10_pct"],
                    "anchored_rmspe_pct": s["rmspe_pct"], "scale": s["scale"],
                    "schedules_within10_pct": {k: s["schedules"][k]["within10_pct"] for k in keys},
                    "floor_within10_pct": float(100 * np.mean(np.abs(r.floor_err_pct) <= 10)),
                    "load": max(v or 0 for v in (s.get("max_group_load"), s.get("calibration_load")))})
    floor = rows["floor_err_pct"] / 100
    startup = metrics(rows["startup_ms"], rows["measured_ms"])
    schedules = {k: metrics(rows[schedule_column(float(k))], rows["measured_ms"]) for k in keys}
    # The interval a search's predictions carry: that of the schedule a search re-times on.
    search_key = f"{SEARCH_EVERY:g}"
    search_col = schedule_column(SEARCH_EVERY) if search_key in keys else "startup_ms"
    # kept under its old key, "startup_interval_pct", which intervals.record and older reports use
    q = np.quantile(100 * (rows[search_col] / rows["measured_ms"] - 1), [0.05, 0.95])
    summary = {"table": summaries[0]["table"], "table_sha256": summaries[0]["table_sha256"],
               "space": summaries[0]["space"], "processes": len(files), "samples": summaries[0]["samples"],
               "per_process": per, "startup_pooled": startup, "schedules_pooled": schedules,
               "interval_schedule": search_key if search_key in keys else "start-up",
               "anchored_pooled": metrics(rows["predicted_ms"], rows["measured_ms"]),
               "noise_floor": {"within10_pct": float(100 * np.mean(np.abs(floor) <= 0.10)),
                               "within5_pct": float(100 * np.mean(np.abs(floor) <= 0.05)),
                               "rmspe_pct": float(100 * np.sqrt(np.mean(floor ** 2)))},
               "startup_interval_pct": [float(q[0]), float(q[1])]}
    return rows, summary


def format_combined(s: Dict[str, Any]) -> str:
    lines = [f"{s['processes']} separate processes, {s['samples']} networks of {s['space']} each (the same "
             f"networks), table {s['table']}", "",
             f"{'process':>8s}{'start-up <=10% %':>18s}{'RMSPE %':>9s}{'anchored <=10% %':>18s}{'RMSPE %':>9s}"
             f"{'floor <=10% %':>15s}{'scale':>8s}{'load':>7s}"]
    for p in s["per_process"]:
        lines.append(f"{p['process'] + 1:8d}{p['startup_within10_pct']:18.1f}{p['startup_rmspe_pct']:9.2f}"
                     f"{p['anchored_within10_pct']:18.1f}{p['anchored_rmspe_pct']:9.2f}{p['floor_within10_pct']:15.1f}"
                     f"{p['scale']:8.3f}{p['load']:7.2f}")
    st, fl = s["startup_pooled"], s["noise_floor"]
    per = [p["startup_within10_pct"] for p in s["per_process"]]
    lines += ["", f"start-up calibration only: {min(per):.0f}-{max(per):.0f}% within +-10% across "
              f"the processes, pooled {st['within10_pct']:.1f}% (RMSPE {st['rmspe_pct']:.1f}%)"]
    for k, m in (s.get("schedules_pooled") or {}).items():
        per = [p["schedules_within10_pct"][k] for p in s["per_process"]]
        what = f"anchors re-timed every {k} s" if float(k) else "anchors re-timed before every group"
        if k == s.get("interval_schedule"):
            what += " (a search's default)"
        lines.append(f"{what}: {min(per):.0f}-{max(per):.0f}% within +-10% across the processes, pooled "
                     f"{m['within10_pct']:.1f}% (RMSPE {m['rmspe_pct']:.1f}%)")
    lines += [
              f"anchored (the table and its model): pooled {s['anchored_pooled']['within10_pct']:.1f}% within +-10%",
              f"noise floor (each network's time against its median over the processes): {fl['within10_pct']:.1f}% "
              f"within +-10% (RMSPE {fl['rmspe_pct']:.1f}%); the start-up error's RMSPE is "
              f"{st['rmspe_pct'] / max(fl['rmspe_pct'], 1e-9):.1f}x the floor's",
              f"90% of predictions ({s.get('interval_schedule', 'start-up')} schedule) lay within "
              f"{s['startup_interval_pct'][0]:+.1f}% .. {s['startup_interval_pct'][1]:+.1f}% of the measured time"]
    if any(p["load"] > 0.05 for p in s["per_process"]):
        lines.append("warning: other processes used more than 5% of the CPU in some process: timings suspect")
    return "\n".join(lines)
