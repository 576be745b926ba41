"""Refit a latency table: time its calibration networks again (or reuse their stored times) and
fit its combination model anew, keeping the parts' entries (``python -m nas.latency refit``).

Apart from build.py because it times networks the way validation does (anchored groups), and
validation builds on build.py: build -> validate -> refit, no cycle."""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

from tqdm.auto import tqdm

from .build import MEASURE_DEFAULTS, _archs, _now, fit_networks, stored_networks, table_space
from .measure import LatencyError
from .predict import Predictor, reference_calls
from .table import Table
from .validate import anchor_networks, time_anchored


def refit_table(path: Union[str, Path], networks: Optional[int] = None, rounds: Optional[int] = None,
                group: Optional[int] = None, out: Optional[Union[str, Path]] = None,
                progress: bool = True, fit_only: bool = False, anchors: int = 1) -> Table:
    """Time the table's calibration networks again (``networks`` of them) and refit its model.

    The parts' entries are kept; only the network phase runs, on the table's own device, with
    the stored reference network timed in every group to express the times in table units.
    More networks let the per-kind model beat the shared factor; more rounds make each
    network's time steadier.  ``anchors`` > 1 reads each group's speed off the reference and
    networks the table has already timed (``validate.anchor_networks``), not the reference
    alone.  ``fit_only`` times nothing: the model is fitted again on the
    stored networks' times (after the fitting code changed; any device).  Writes ``out``
    (default: the table itself).
    """
    p = Predictor.load(path, force=fit_only)
    if not p.native and not fit_only:  # Predictor.load already refused a foreign table unless forced
        raise LatencyError(f"{path}: networks can only be timed on the table's own device")
    meta = p.meta
    if fit_only:
        return _fit_stored(p, path, out)
    ms = dict(MEASURE_DEFAULTS, **meta.get("measure", {}))
    ms["networks"] = int(networks or ms["networks"])
    ms["net_rounds"] = int(rounds or ms["net_rounds"])
    ms["net_group"] = int(group or ms["net_group"])
    space = table_space(meta)
    nets = _archs(space, "calibration", ms["networks"], ms["seed"])
    anchor_archs, unit = anchor_networks(p, space, anchors)  # the reference first, then timed networks
    ref_calls = reference_calls(anchor_archs, p.device_type, p.batch)
    if not ref_calls:
        raise LatencyError(f"{path} holds no reference network to express new timings in table units")
    t_start, timed, loads = time.time(), [], []
    rng = random.Random(f"refit:{ms['seed']}")
    with tqdm(total=len(nets), desc=f"refit {meta['space']}", unit="net", disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for g in range(0, len(nets), ms["net_group"]):
            idx = list(range(g, min(g + ms["net_group"], len(nets))))
            now, speeds, share = time_anchored(p, space, [nets[i] for i in idx], ref_calls, unit, ms["net_rounds"],
                                              rng.randrange(1 << 30), ms["max_load"], ms["max_wait"])
            loads.append(share)
            timed += [(i, t / v) for i, t, v in zip(idx, now, speeds)]
            bar.update(len(idx))
    model, calib = fit_networks(space, nets, timed, p.table.entries(), p.table.kinds())
    meta = dict(meta, measure=ms, model=model.to_dict(),
                calibration={"seed": ms["seed"], "networks": calib},
                refit={"date": _now(), "seconds": round(time.time() - t_start, 1), "anchors": len(ref_calls),
                       "max_group_load": max((v for v in loads if v is not None), default=None)})
    table = Table(p.table.rows, meta)
    table.save(Path(out) if out is not None else Path(path))
    return table


def _fit_stored(p: Any, path: Union[str, Path], out: Optional[Union[str, Path]]) -> Table:
    meta = p.meta
    stored = (meta.get("calibration") or {}).get("networks") or []
    if not stored:
        raise LatencyError(f"{path} holds no timed networks to fit on")
    space = table_space(meta)
    entries = p.table.entries()
    found = stored_networks(space, meta, entries)
    if len(found) < len(stored):
        raise LatencyError(f"{path}: network {stored[len(found)]['index']} is not the one the table timed (the "
                           f"space changed since); time them again (refit without --fit-only)")
    nets = {i: a for i, a, _ in found}
    model, calib = fit_networks(space, nets, [(i, t) for i, _, t in found], entries, p.table.kinds())
    refit = dict(meta.get("refit") or {}, fitted=_now())
    table = Table(p.table.rows, dict(meta, model=model.to_dict(), refit=refit))
    table.save(Path(out) if out is not None else Path(path))
    return table
