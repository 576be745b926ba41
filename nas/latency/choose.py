"""Which latency table a search uses: the one given, a shipped one that fits this machine, or this
device's own table (``local.py``), grown as the search meets parts.  Chosen before the run folder
exists (nothing is created or timed then); opened and calibrated after every other check."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, List, Optional

import nas.latency as lat  # looked up at call time: tests stand in a table for the shipped ones

from ..checks import RunError
from .interval import interval_for
from .local import local_path, open_local
from .measure import LatencyError, describe, device_identity
from .predict import Predictor
from .validate import search_calibration

log = logging.getLogger("nas")


def wanted(cfg: Any, constraints) -> bool:
    """Latency is a constraint and objective only when asked for; a table found on its own only
    reports it (the objectives, and so a seed's trials, must not depend on the machine)."""
    return cfg.latency_lut is not None or any(c.kind == "latency" for c in constraints)


def _unavailable(cfg: Any, constraints, e: LatencyError) -> None:
    """A latency budget cannot go on without latency (one-line refusal); a report does without it."""
    if wanted(cfg, constraints):
        raise RunError(str(e)) from None
    log.warning("latency not reported: %s", e)
    return None


@dataclass
class Local:
    """This device's own table, to be opened (and created, if new) once the run is accepted."""
    space: Any
    device: str
    threads: Optional[int]
    why: str

    @property
    def path(self):
        return local_path(self.space.name, self.device, self.threads)


def choose(cfg: Any, constraints, sp) -> Any:
    """A Predictor, a ``Local`` to open later, or None (latency not reported, said why)."""
    device = "cuda" if cfg.device == "cuda" else "cpu"
    threads = cfg.threads or None
    try:
        here = describe(device_identity(device))
    except LatencyError as e:
        return _unavailable(cfg, constraints, e)
    path = cfg.latency_lut or (lat.find_shipped_table(sp.name, sp.settings()) if device == "cpu" else None)
    if path is None:
        return Local(sp, device, threads, f"no shipped latency table fits this machine ({here})")
    try:
        pred = Predictor.load(path, force=True)
        if pred.meta.get("space") != sp.name:
            raise LatencyError(f"{path} is a latency table of the {pred.meta.get('space')!r} space, "
                               f"not {sp.name!r}")
        if not pred.native and not cfg.force_lut:  # another machine's times do not apply here
            return Local(sp, device, threads, f"{path} was measured on {describe(pred.meta.get('device', {}))}, "
                                              f"this is {here}")
        missing = pred.missing_keys(sp) if cfg.latency_lut else []
        if missing and not pred.native:
            raise LatencyError(f"{path} lacks {len(missing)} part(s) of this {sp.name} space (e.g. "
                               f"{missing[0]}) and was measured on another machine")
    except LatencyError as e:
        return _unavailable(cfg, constraints, e)
    return pred


def open_and_calibrate(cfg: Any, constraints, pred, sp, say=print) -> Optional[Predictor]:
    """Time the table's anchor networks now (``validate.search_calibration``: a latency budget
    waits for a calm machine and reads 8 anchors, a report times the table's own anchors at once),
    opening this device's own table first where that was chosen."""
    if pred is None:
        return None
    want = wanted(cfg, constraints)
    try:
        if isinstance(pred, Local):
            say(f"latency: {pred.why}; timing each new part on this device as the search meets it, "
                f"into {pred.path} (reused by later runs)")
            pred = open_local(pred.space, pred.device, pred.threads, progress=cfg.progress)
        search_calibration(pred, sp, judged=want)
        pred.interval = interval_for(pred.path, pred.content_hash)
    except LatencyError as e:
        return _unavailable(cfg, constraints, e)
    return pred


def latency_config(pred: Optional[Predictor]) -> Optional[dict]:
    """config.json's ``latency_table``: what a run's latency was predicted from, and how."""
    if pred is None:
        return None
    return {"path": str(pred.path), "sha256": pred.content_hash, "meta": pred.meta,
            "own": pred.autosave is not None,  # this device's table, grown as the search meets parts
            "parts_at_start": len(pred),
            "scale": pred.scale,  # the start-up calibration's plain rescaling (now / table); each trial has its own
            "calibration_load": pred.calibration_load, "calibration": pred.calibration.to_dict(),
            # the 90% prediction-error interval behind trials.csv's latency_low_ms / latency_high_ms
            "interval": pred.interval and pred.interval.widened(pred.calibration_load).to_dict()}


def latency_lines(pred: Optional[Predictor], objectives) -> List[str]:
    """What a run says of its latency before it searches."""
    if pred is None:
        return []
    role = "constraint/objective" if any(o.name == "latency_ms" for o in objectives) else "reported only"
    busy = pred.calibration_load
    own = ", this device's own table: new parts are timed as they come" if pred.autosave else ""
    out = [f"latency: {role}, predicted from {pred.path}{own} (rescaled x{pred.scale:.3f} for this machine's "
           f"current speed" + (f", timed while other processes used {busy:.0%} of the CPU"
                               if busy and busy > 0.1 else "") + ")"]
    if pred.interval is not None:
        out.append(f"latency interval: {pred.interval.widened(busy).describe()}")
    return out
