"""Latency lookup tables: measure every distinct part of a space once, predict any candidate.

    from nas.latency import Predictor, find_shipped_table
    path = find_shipped_table("darts", space.settings())     # None if none fits this machine
    pred = Predictor.load(path)                              # LatencyError: one-line reason
    pred.calibrate()                                         # drift rescale, once per process
    ms = pred.predict(space.parts(arch))                     # < 1 ms per candidate

Build and check tables with ``python -m nas.latency build|validate|show`` (see README.md here).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from .measure import LatencyError, device_identity, measure_model, measure_models
from .predict import Predictor, same_device
from .table import Table, read_meta

TABLES = Path(__file__).resolve().parent / "tables"


def find_shipped_table(space_name: str, settings: Optional[Dict[str, Any]] = None, device: str = "cpu",
                       threads: Optional[int] = None, batch: int = 1,
                       directory: Optional[Path] = None) -> Optional[Path]:
    """The shipped table for ``SPACES[space_name](**settings)`` on this machine, or None.

    A table fits when it was measured on this device model (and CPU count) with ``threads``
    intra-op threads (default: torch's current count) at ``batch``, and either was built for
    exactly these settings or holds every part these settings can produce.
    """
    import torch
    from space import SPACES

    try:
        here = device_identity(device)
    except LatencyError:
        return None
    threads = threads or torch.get_num_threads()
    # space.settings() names the space; its constructor does not take that key
    wanted_space = SPACES[space_name](**{k: v for k, v in (settings or {}).items() if k != "space"})
    wanted = wanted_space.settings()
    fits = []
    folder = Path(directory) if directory is not None else TABLES
    for path in sorted(folder.glob("*.csv")) + sorted(folder.glob("*.parquet")):
        try:
            meta = read_meta(path)
        except LatencyError:
            continue
        if (meta.get("space") != space_name or not same_device(meta.get("device", {}), here)
                or meta.get("threads") != threads or meta.get("batch") != batch):
            continue
        if meta.get("settings") == wanted:
            return path
        fits.append(path)
    for path in fits:  # other settings: usable if it has every part of the wanted space
        try:
            if not Predictor.load(path).missing_keys(wanted_space):
                return path
        except LatencyError:
            continue
    return None


__all__ = ["Predictor", "LatencyError", "find_shipped_table", "measure_model", "measure_models",
           "device_identity", "Table", "TABLES"]
