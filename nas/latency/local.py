"""Latency on any machine: where no shipped table fits, a table of this device that grows as
searches meet new parts, cached per device under the user's cache folder.

A fresh table holds the space's reference network, timed now (what later runs calibrate
against), and no parts.  Each part a candidate uses that the table lacks is timed on the spot
with the builder's method (``Predictor.add_missing``: interleaved rounds, the median, in the
table's units through the parts it already has or the reference), and the table is written back
after every such timing, so a run cut short keeps what it timed.  Later runs on the same device
reuse it; ``python -m nas.latency build --space S --out <that path>`` completes it in one go.

The combination model is the plain sum of the parts: the shipped tables' fitted factors belong to
the machine that measured them.  ``PLUGNAS_DEVICE_NAME`` overrides the device name that tables are
matched by; the cache follows ``XDG_CACHE_HOME``.
"""
from __future__ import annotations

import datetime
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

from .measure import LatencyError, describe, device_identity
from .model import LatencyModel
from .predict import _CALIBRATED, Calibration, Predictor, time_references
from .table import Table


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "plugnas" / "latency"


def table_name(space: str, device: str, threads: int, batch: int) -> str:
    model = re.sub(r"[^a-z0-9]+", "-", device_identity(device)["model"].lower()).strip("-")
    return f"{space}_{device}-{model}_t{threads}_b{batch}.csv"


def local_path(space: str, device: str = "cpu", threads: Optional[int] = None, batch: int = 1) -> Path:
    return cache_dir() / table_name(space, device, threads or torch.get_num_threads(), batch)


def open_local(sp: Any, device: str = "cpu", threads: Optional[int] = None, batch: int = 1,
               progress: bool = True) -> Predictor:
    """This device's table of ``sp``'s space (created, with its reference timed, if new); every
    part it times from now on is written back to it."""
    from .build import MEASURE_DEFAULTS, _archs

    threads = threads or torch.get_num_threads()
    path = local_path(sp.name, device, threads, batch)
    if path.exists():
        try:
            pred = Predictor.load(path)
        except LatencyError as e:  # a corrupt cache is set aside, never the end of a run
            aside = path.with_name(path.name + ".unreadable")
            os.replace(path, aside)
            pred = None
            print(f"note: the cached latency table was unreadable ({e}); moved to {aside}, starting a new one")
        if pred is not None:
            if pred.meta.get("space") != sp.name:
                raise LatencyError(f"{path} holds the {pred.meta.get('space')!r} space, not {sp.name!r}")
            pred.autosave, pred.progress = path, progress
            return pred
    ms = dict(MEASURE_DEFAULTS)
    refs = [a.to_dict() for a in _archs(sp, "reference", ms["references"], ms["seed"])]
    now = time_references(refs, device, threads, batch, ms)
    meta = {"space": sp.name, "settings": sp.settings(), "device": device_identity(device), "threads": threads,
            "batch": int(batch), "dtype": "float32", "torch": torch.__version__, "measure": ms,
            "reference": {"archs": refs, "ms": now, "fillers": []}, "model": LatencyModel().to_dict(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "grown": "by searches, part by part (nas/latency/local.py)"}
    path.parent.mkdir(parents=True, exist_ok=True)
    Table.from_records([], meta).save(path)
    pred = Predictor.load(path)
    pred.autosave, pred.progress = path, progress
    _CALIBRATED[pred.content_hash] = Calibration(then=list(now), now=list(now))  # timed just now: no second timing
    return pred


def where(pred: Predictor) -> str:
    return f"{describe(pred.meta.get('device', {}))}, {pred.threads} threads"
