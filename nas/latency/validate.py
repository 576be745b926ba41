"""How good a table is: predicted vs measured latency of random networks of its space.

The networks are timed end to end in this process, in groups timed interleaved (shuffled
rounds) with the table's anchors (``anchor_networks``: its reference network and timed
networks), as the build times its networks.  The anchors' times in each group, those of a size
near the network's weighing most, convert the table's units to this moment's speed: that is the drift rescaling of ``Predictor.calibrate``, done with the
anchors timed alongside the networks, so
the comparison measures the table and its model, not how far this VM's speed moved between a
calibration and a measurement.  The prediction with the start-up calibration a latency-budget
search gets (``search_calibration``: the same anchors, timed once before the first network, each
network rescaled by the anchors of its size) and the plain sum of entries are reported beside it.  Metrics follow nn-Meter
(RMSE, RMSPE, share within +-5% / +-10%).
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from .build import MEASURE_DEFAULTS, _callable, stored_networks
from .measure import LatencyError, OtherLoad, gated, num_threads, speed_ratio, statistic, time_interleaved
from .predict import Predictor, reference_calls


LOAD_WARNING = 0.05  # share of the CPU used by other processes above which timings are suspect
SEARCH_ANCHORS = 8  # anchors a latency-budget search calibrates with (validation's, so its figure is the search's)
# Re-calibration schedules a validation scores side by side (seconds between re-timings of the
# anchors, as a search's --latency-every; 0: before every group).  The anchors are re-timed before
# every group, and each schedule uses the timing a search on that schedule would have in force.
SCHEDULES = (600.0, 120.0, 0.0)
SEARCH_EVERY = 600.0  # a search's default --latency-every (nas/run.py takes it from here)


def schedule_column(every: float) -> str:
    return f"every{every:g}_ms"


def in_force(starts: Sequence[float], timed: Sequence[float], every: float) -> List[int]:
    """For each group (its start time), the index of the anchor timing a search re-timing every
    ``every`` seconds has in force: timing ``g`` was made just before group ``g`` (0: start-up)."""
    use, out = 0, []
    for g, t in enumerate(starts):
        if g and t - timed[use] > every:
            use = g
        out.append(use)
    return out


def metrics(pred: Sequence[float], true: Sequence[float]) -> Dict[str, float]:
    p, t = np.asarray(pred, float), np.asarray(true, float)
    e = p / t - 1
    return {"n": int(len(t)), "rmse_ms": float(np.sqrt(np.mean((p - t) ** 2))),
            "rmspe_pct": float(100 * np.sqrt(np.mean(e ** 2))),
            "within5_pct": float(100 * np.mean(np.abs(e) <= 0.05)),
            "within10_pct": float(100 * np.mean(np.abs(e) <= 0.10)),
            "mean_err_pct": float(100 * np.mean(e)), "max_abs_err_pct": float(100 * np.max(np.abs(e)))}


def time_anchored(predictor: Predictor, space: Any, archs: Sequence[Any], anchor_calls: Sequence[Any],
                  then: Sequence[float], rounds: int, seed: int, max_load: Optional[float] = None,
                  max_wait: float = 0.0) -> Tuple[List[float], Optional[List[float]], Optional[float]]:
    """(times now in ms of ``archs``' networks, each one's speed now / table units read off the
    anchors, other processes' CPU share meanwhile).

    The networks and ``anchor_calls`` (``reference_calls`` of ``anchor_networks``, whose table
    times are ``then``) run in the same shuffled rounds, so the speed is that of those rounds,
    read mostly off anchors of the network's predicted size (``speed_ratio`` with ``size``); a
    time divided by its speed is in table units.  No speeds without anchors.  Timed again after
    waiting for calm while others used more than ``max_load`` (``measure.gated``).
    """

    ms = predictor.meta.get("measure", {})
    calls = [_callable(space.build(a), [(1, *a.input_size)], predictor.device_type, predictor.batch,
                       f"network {a.arch_hash}") for a in archs]
    sizes = [predictor.units(space.parts(a)) for a in archs]

    def timed():
        with num_threads(predictor.threads):
            return time_interleaved(list(calls) + list(anchor_calls), rounds, ms.get("warmup", 3),
                                    predictor.device_type, seed)
    smp, share, _ = gated(timed, max_load, max_wait)
    now = [statistic(v, ms.get("stat", "median")) for v in smp]
    anchors_now = now[len(calls):]
    speeds = [speed_ratio(anchors_now, then, size=u) for u in sizes] if anchor_calls else None
    return now[:len(calls)], speeds, share


def anchor_networks(predictor: Predictor, space: Any, count: int) -> Tuple[List[Dict[str, Any]], List[float]]:
    """``Predictor.anchors()`` (reference and fillers), topped up to ``count`` networks with more
    of the build's calibration networks, whose times in table units the table holds.

    One group's speed read off three anchors was off the average network's by 3-4% (the
    group means of the validation errors spread that much, as much as the errors inside a
    group): each network slows down its own way when the machine's state changes, and a median
    over more anchors follows the typical network more closely.
    """

    archs, then, _ = predictor.anchors()
    archs, then = archs[:max(1, count)], then[:max(1, count)]
    used = len((predictor.meta.get("reference") or {}).get("fillers") or [])  # already among the anchors
    for i, a, t in stored_networks(space, predictor.meta, predictor.table.entries()):
        if len(archs) >= count:
            break
        if i >= used:
            archs.append(a.to_dict())
            then.append(t)
    return archs, then


def search_calibration(predictor: Predictor, space: Any, judged: bool, force: bool = False) -> float:
    """The calibration a search applies.  ``judged`` (latency is a budget or objective):
    ``SEARCH_ANCHORS`` anchors of several sizes, timed on a calm machine (the table's
    ``max_load``/``max_wait``).  Only reported: the table's own anchors (the reference and
    its fillers), timed at once however busy the machine, so the first trial waits seconds,
    not minutes; the record says how loaded it was.  Re-calibrations reuse the anchors."""
    anchors = anchor_networks(predictor, space, SEARCH_ANCHORS) if judged else None
    return predictor.calibrate(force=force, wait=judged, anchors=anchors)


def validate(predictor: Predictor, space: Any, samples: int = 50, seed: int = 1, group: Optional[int] = None,
             rounds: Optional[int] = None, calibrate: bool = True, progress: bool = False,
             max_load: Optional[float] = None, max_wait: Optional[float] = None,
             anchors: int = 8) -> Tuple[pd.DataFrame, Dict[str, Any]]:
    """(per-network DataFrame, summary) over ``samples`` random archs of ``space``.

    ``predicted_ms``: the table's prediction at the speed of the ``anchors`` networks
    (``anchor_networks``) timed in the network's group; ``startup_ms``: at the speed of one ``calibrate()`` at the start.
    ``group`` and ``rounds`` default to the build's network settings (at least the current
    defaults).  A group timed while other processes used more than ``max_load`` of the CPU is
    timed again after waiting for calm (at most ``max_wait`` s; defaults: the table's).
    """

    if not predictor.native:
        raise LatencyError("validation times networks here, but the table was measured on another device")
    ms = predictor.meta.get("measure", {})
    group = group or MEASURE_DEFAULTS["net_group"]
    rounds = rounds or max(ms.get("net_rounds", 0), MEASURE_DEFAULTS["net_rounds"])
    max_load = ms.get("max_load") if max_load is None else max_load
    max_wait = ms.get("max_wait", 0.0) if max_wait is None else max_wait
    loads = []
    load = OtherLoad().__enter__()
    scale = search_calibration(predictor, space, judged=True, force=True) if calibrate else 1.0
    startup = predictor.calibration if calibrate else None
    ref_archs, ref_ms = anchor_networks(predictor, space, anchors)
    rng = random.Random(f"validation:{seed}")
    archs = [space.sample(rng) for _ in range(samples)]
    rows = []
    ref_calls = reference_calls(ref_archs, predictor.device_type, predictor.batch)
    timings, timed_at, starts = [startup], [time.time()], []  # anchor timings, before each group
    from tqdm.auto import tqdm
    with tqdm(total=samples, desc="validate", unit="net", disable=not progress) as bar:
        for g in range(0, samples, group):
            if g and calibrate:
                search_calibration(predictor, space, judged=True, force=True)
                timings.append(predictor.calibration)
                timed_at.append(time.time())
            starts.append(time.time())
            chunk = archs[g:g + group]
            now, speeds, share = time_anchored(predictor, space, chunk, ref_calls, ref_ms, rounds, seed * 1000 + g,
                                              max_load, max_wait)
            loads.append(share)
            for a, t, speed in zip(chunk, now, speeds or [scale] * len(chunk)):
                parts = space.parts(a)
                units = predictor.units(parts)  # the prediction in table units
                first = startup.scale_for(units) if startup is not None else 1.0  # what a search predicts
                naive = predictor.sum_entries(parts) * speed
                rows.append({"arch": a.arch_hash, "group": len(starts) - 1, "parts": len(parts), "units": units,
                             "measured_ms": t,
                             "predicted_ms": units * speed, "err_pct": 100 * (units * speed / t - 1),
                             "startup_ms": units * first, "startup_err_pct": 100 * (units * first / t - 1),
                             "sum_ms": naive, "sum_err_pct": 100 * (naive / t - 1),
                             "speed": speed / scale if scale else 1.0})
            bar.update(len(chunk))
    load.__exit__(None, None, None)
    df = pd.DataFrame(rows)
    schedules = {}
    if calibrate:
        for every in SCHEDULES:
            use = in_force(starts, timed_at, every)
            col = schedule_column(every)
            df[col] = [u * timings[use[g]].scale_for(u) for u, g in zip(df["units"], df["group"])]
            schedules[f"{every:g}"] = metrics(df[col], df["measured_ms"])
    summary = {"other_load": load.share, "max_group_load": max((v for v in loads if v is not None), default=None),
               "calibration_load": predictor.calibration_load, "table": str(predictor.path), "table_sha256": predictor.content_hash,
               "space": space.name, "samples": samples, "seed": seed, "group": group, "rounds": rounds,
               "anchors": len(ref_archs), "scale": scale,
               "startup_calibration": startup.to_dict() if startup is not None else None,
               "model": predictor.model.name, **metrics(df["predicted_ms"], df["measured_ms"]),
               "startup": metrics(df["startup_ms"], df["measured_ms"]),
               "sum": metrics(df["sum_ms"], df["measured_ms"]), "schedules": schedules,
               "group_seconds": float(np.median(np.diff(starts))) if len(starts) > 1 else None,
               "anchor_timings": [c.to_dict() for c in timings] if calibrate else [],
               "drift_range": [float(df["speed"].min()), float(df["speed"].max())]}
    return df, summary


def format_report(df: pd.DataFrame, summary: Dict[str, Any]) -> str:
    s = summary
    lines = [df.to_string(index=False, float_format=lambda v: f"{v:.3f}"), "",
             f"{'':22s}{'RMSE ms':>10s}{'RMSPE %':>10s}{'<=5% %':>9s}{'<=10% %':>9s}{'mean err %':>12s}"]
    rows = [(f"model {s['model'][:14]}", s), ("start-up calibration", s["startup"])]
    rows += [(f"re-timed every {k} s" if float(k) else "re-timed every group", m)
             for k, m in (s.get("schedules") or {}).items()]
    for label, m in rows + [("plain sum", s["sum"])]:
        lines.append(f"{label:22s}{m['rmse_ms']:10.3f}{m['rmspe_pct']:10.2f}{m['within5_pct']:9.1f}"
                     f"{m['within10_pct']:9.1f}{m['mean_err_pct']:12.2f}")
    lines += [f"{s['samples']} networks of {s['space']} in groups of {s.get('group')} with {s.get('anchors')} anchors, "
              f"{s.get('rounds')} rounds, table {s['table']}",
              f"model: the table's model at the speed of the anchors (the reference and the build's networks) timed "
              f"with each group; start-up "
              f"calibration: at the speed of the search's start-up calibration (search_calibration: "
              f"{SEARCH_ANCHORS} anchors timed once, read by size): plain drift scale "
              f"{s['scale']:.3f}, the groups ran at {s['drift_range'][0]:.3f}-{s['drift_range'][1]:.3f} times "
              f"that; plain sum: entries summed, at the group's speed"]
    worst = max(v or 0 for v in (s.get("max_group_load"), s.get("calibration_load")))
    if worst > LOAD_WARNING:
        lines.append(f"warning: other processes used up to {100 * worst:.0f}% of the CPU while networks were "
                     f"timed; these timings are not reliable")
    return "\n".join(lines)


def write_report(df: pd.DataFrame, summary: Dict[str, Any], path: Union[str, Path],
                 command: Optional[str] = None) -> Path:
    """``.csv``: per-network rows (summary in ``<path>.summary.json``); anything else: the text report.

    ``command`` (the command line that produced it) heads the text report and joins the summary,
    so a committed report says how to reproduce it.
    """
    path = Path(path)
    if command:
        summary = dict(summary, command=command)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
        path.with_name(path.name + ".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    else:
        head = f"$ {command}\n\n" if command else ""
        path.write_text(head + format_report(df, summary) + "\n\n" + json.dumps(summary, indent=2) + "\n")
    return path
