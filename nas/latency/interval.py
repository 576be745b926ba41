"""How far a search's predicted latency may be from the time a user would measure: the 90%
interval of the prediction error under a search's calibration (start-up, then re-timed every
``--latency-every`` s), validated as a search gets it
(``python -m nas.latency validate TABLE --processes 3``: separate processes, minutes apart).

The intervals live in ``tables/intervals.json``, one entry per shipped table file, with the
sha256 of the table they were validated on; a re-validation of a shipped table updates its entry.
A table with no validated interval (not yet validated, rebuilt since, or this device's own
table) borrows the widest one validated and says so: an interval measured on another table is a
guess, and the widest is the honest guess.

With the prediction error ``err = predicted / measured - 1`` in ``[low, high]`` for 90% of the
validated networks, a prediction ``p`` stands for a true time in ``[p / (1 + high), p / (1 + low)]``.
A calibration timed while other processes used a share ``L`` of the CPU reads the machine up to
``1 / (1 - L)`` slower than it is, so the prediction can be that much too high: the interval's
lower end then drops by that factor (its upper end, a machine that becomes busier later, is
already what the validation's processes saw).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .validate import LOAD_WARNING  # a calibration busier than this is suspect: its interval is widened

INTERVALS = Path(__file__).resolve().parent / "tables" / "intervals.json"


@dataclass(frozen=True)
class Interval:
    low_pct: float  # 5th percentile of the search-calibrated prediction error (%)
    high_pct: float  # 95th percentile
    source: str  # the validation report it comes from
    table: str  # the table file it was validated on
    borrowed: bool = False  # validated on another table (this one has none)
    why: str = ""  # why it is borrowed
    load: float = 0.0  # the calibration's CPU share used by others, when it was widened for it

    def widened(self, load: Optional[float]) -> "Interval":
        """The interval for predictions calibrated while others used ``load`` of the CPU."""
        if not load or load <= LOAD_WARNING:
            return self
        load = min(float(load), 0.9)
        low = 100 * ((1 + self.low_pct / 100) * (1 - load) - 1)
        return Interval(low, self.high_pct, self.source, self.table, self.borrowed, self.why, load)

    def bounds(self, ms: float) -> Tuple[float, float]:
        """(low, high) true latency (ms) the prediction ``ms`` stands for, 90% of the time."""
        return ms / (1 + self.high_pct / 100), ms / (1 + self.low_pct / 100)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        s = f"{self.low_pct:+.0f}% .. {self.high_pct:+.0f}% prediction error (90%, {self.source})"
        if self.borrowed:
            s += f", borrowed from {self.table}: {self.why}"
        if self.load:
            s += f", widened for a calibration at {100 * self.load:.0f}% load"
        return s


def load_intervals(path: Path = INTERVALS) -> Dict[str, Dict[str, Any]]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}


def record(summary: Dict[str, Any], source: str, path: Path = INTERVALS) -> bool:
    """Keep a multi-process validation's interval (``processes.combine``'s summary) when its table
    is a shipped one; True when recorded."""
    table = Path(summary["table"]).resolve()
    if table.parent != Path(path).resolve().parent:
        return False
    entries = load_intervals(path)
    lo, hi = summary["startup_interval_pct"]
    entries[table.name] = {"sha256": summary["table_sha256"], "low_pct": round(float(lo), 2),
                           "high_pct": round(float(hi), 2), "processes": summary["processes"],
                           "samples": summary["samples"], "source": source}
    Path(path).write_text(json.dumps(dict(sorted(entries.items())), indent=2) + "\n")
    return True


def interval_for(table: Optional[Path], sha256: str, path: Path = INTERVALS) -> Optional[Interval]:
    """The validated interval of ``table`` (by file name and content), else the widest validated
    one, borrowed; None when nothing was ever validated."""
    entries = load_intervals(path)
    name = Path(table).name if table is not None else ""
    own = entries.get(name)
    if own is not None and own["sha256"] == sha256:
        return Interval(own["low_pct"], own["high_pct"], own["source"], name)
    if not entries:
        return None
    why = ("validated on an earlier version of this table" if own is not None else
           "this table has no multi-process validation")
    wide_name, wide = max(entries.items(), key=lambda kv: kv[1]["high_pct"] - kv[1]["low_pct"])
    return Interval(wide["low_pct"], wide["high_pct"], wide["source"], wide_name, borrowed=True, why=why)
