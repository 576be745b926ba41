"""Predict a candidate's latency from a table: ``Predictor.load(path).predict(space.parts(arch))``.

Prediction is a dictionary walk over the candidate's parts (tens of microseconds for a few
hundred parts): every entry is pre-multiplied by its kind's fitted factor when the table is
loaded, so ``predict`` only adds.  ``calibrate()`` rescales for the process-to-process drift of
this machine: the table's entries are in the build's reference units (every chunk of a build
timed a reference network alongside), and ``calibrate()`` times anchor networks of known table
time now (the reference, and with ``anchors=`` more of the build's networks) and keeps each one's
ratio (time now / in the table).  A candidate's prediction is multiplied by the ratio read mostly
off anchors of its own size (``speed_ratio(size=)``), as validation does: on this VM small and
large networks speed up and slow down by different amounts.  Parts the table lacks are timed on the spot when this machine is
the table's device, next to parts the table has, whose ratio (now / table) converts the new
times into table units; on any other device a missing part is an error.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd


from ..interrupt import requested as stop_requested
from .measure import (LatencyError, describe, device_identity, gated, make_inputs, speed_ratio,
                      num_threads, statistic, time_interleaved)
from .model import LatencyModel
from .table import Table, load as load_table, sha256_file, shapes_text


@dataclass
class Calibration:
    """One timing of a table's anchors: what every prediction made under it is rescaled by."""
    then: List[float]  # the anchors' times in table units
    now: List[float]  # their times now (ms)
    when: float = field(default_factory=time.time)
    load: Optional[float] = None  # other processes' CPU share while they were timed
    number: int = 0  # 0: the start-up calibration, then one more per re-anchoring

    def scale_for(self, units: Optional[float] = None) -> float:
        """now / table for a network of ``units`` (its time in table units); None: all anchors alike."""
        return speed_ratio(self.now, self.then, size=units)

    def to_dict(self) -> Dict[str, Any]:
        return {"number": self.number, "when": round(self.when, 3), "load": self.load,
                "anchors_table_ms": [round(v, 4) for v in self.then], "anchors_now_ms": [round(v, 4) for v in self.now],
                "scale": self.scale_for()}


_CALIBRATED: Dict[str, Calibration] = {}  # content hash -> the latest calibration, per process


def same_device(identity: Dict[str, Any], other: Dict[str, Any]) -> bool:
    return all(identity.get(k) == other.get(k) for k in ("type", "model", "cpus"))


def current_identity(meta: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """This machine's identity for the table's device type (None if it has no such device)."""
    try:
        return device_identity(meta.get("device", {}).get("type", "cpu"))
    except LatencyError:
        return None


def build_reference(arch_dict: Dict[str, Any]):
    """(network, input shape at batch 1) of a reference architecture stored in a table."""
    from space import SPACES
    from space.arch import ArchBase

    try:
        arch = ArchBase.from_dict(arch_dict)
        net = SPACES[arch.space].build(arch)
    except Exception as e:  # a space changed since the table was built
        raise LatencyError(f"cannot build the table's reference network ({type(e).__name__}: {e})") from None
    return net, (1, *arch.input_size)


def reference_calls(arch_dicts: Sequence[Dict[str, Any]], device: str, batch: int) -> List[Any]:
    calls = []
    for d in arch_dicts:
        net, shape = build_reference(d)
        net = net.to(device).eval()
        xs = make_inputs([shape], batch, device)
        calls.append(lambda net=net, xs=xs: net(*xs))
    return calls


def time_references(arch_dicts: Sequence[Dict[str, Any]], device: str, threads: Optional[int], batch: int,
                    settings: Dict[str, Any], fillers: Sequence[Dict[str, Any]] = ()) -> List[float]:
    """Latency (ms) of each reference network now, timed in shuffled rounds with ``fillers``
    (other networks of the space) between its runs, as a build times it among parts and networks:
    timed back to back with itself a network runs ~7% slower here."""
    calls = reference_calls(arch_dicts, device, batch)
    others = reference_calls(fillers, device, batch)
    with num_threads(threads):
        samples = time_interleaved(calls + others, settings.get("ref_repeats", 20), settings.get("warmup", 3),
                                   device, min_seconds=settings.get("ref_seconds", 1.0), max_seconds=10.0)
    return [statistic(v, settings.get("stat", "median")) for v in samples[:len(calls)]]


class Predictor:
    """A loaded latency table with its fitted combination model and drift scale."""

    def __init__(self, table: Table, path: Optional[Path] = None, content_hash: Optional[str] = None,
                 forced: bool = False):
        self.table = table
        self.meta: Dict[str, Any] = table.meta
        self.path = Path(path) if path is not None else None
        self.content_hash = content_hash or hashlib.sha256(
            table.rows.to_csv(index=False).encode()).hexdigest()
        self.forced = forced
        self.model = LatencyModel.from_dict(self.meta.get("model"))
        self.scale = 1.0  # the plain drift scale (all anchors alike); predictions read theirs by size
        self.calibration: Optional[Calibration] = None
        self.history: List[Calibration] = []  # every calibration this predictor timed or adopted
        self.anchor_set: Optional[Tuple[List[Dict[str, Any]], List[float], List[Dict[str, Any]]]] = None
        self.last_scale = 1.0  # the scale the latest prediction was made with (its trial records it)
        self.waits = True  # whether calibrations wait for a calm machine (the latest explicit call's choice)
        self.calibrated = False
        self.calibration_load: Optional[float] = None
        self.interval = None  # interval.Interval: the validated prediction error, where a search set it
        self._kind = table.kinds()
        self._raw = table.entries()
        inputs = dict(zip(table.rows["key"].astype(str), table.rows["inputs"].astype(str)))
        self._eff = {k: self.model.factor_for(self._kind[k], inputs[k]) * v for k, v in self._raw.items()}
        here = current_identity(self.meta)
        self.native = here is not None and same_device(self.meta.get("device", {}), here)
        self.autosave: Optional[Path] = None  # a device's own table (local.py): parts timed are written back
        self.progress = False  # a bar while parts are timed
        self.added: List[Dict[str, Any]] = []  # rows timed in this process, not yet in self.table
        self.timed_parts, self.timing_s = 0, 0.0  # what timing new parts cost this process

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Union[str, Path], force: bool = False) -> "Predictor":
        """Load a table; a table measured on another device is refused unless ``force``."""
        path = Path(path)
        table = load_table(path)
        p = cls(table, path, sha256_file(path), forced=force)
        if not p.native and not force:
            here = current_identity(p.meta)
            where = describe(here) if here else f"no {p.device_type} device"
            raise LatencyError(f"{path} was measured on {describe(p.meta.get('device', {}))}, this machine "
                               f"has {where}; its latencies do not apply here (rebuild the table here, "
                               f"or pass force=True / --force to use it anyway)")
        return p

    @property
    def device_type(self) -> str:
        return self.meta.get("device", {}).get("type", "cpu")

    @property
    def threads(self) -> Optional[int]:
        return self.meta.get("threads")

    @property
    def batch(self) -> int:
        return int(self.meta.get("batch", 1))

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, key: str) -> bool:
        return key in self._raw

    def entry(self, key: str) -> float:
        return self._raw[key]

    # -- prediction --------------------------------------------------------------------------
    def missing(self, parts: Iterable[Any]) -> List[Any]:
        seen, out = set(), []
        for p in parts:
            if p.key not in self._raw and p.key not in seen:
                seen.add(p.key)
                out.append(p)
        return out

    def units(self, parts: Sequence[Any]) -> float:
        """The model's latency of the network made of ``parts`` in table units (no drift scale)."""
        eff = self._eff
        total = 0.0
        try:
            for p in parts:
                total += eff[p.key]
        except KeyError:
            self.add_missing(parts)
            return self.units(parts)
        m = self.model
        return total + m.overhead_ms + m.per_part_ms * len(parts)

    def scale_for(self, units: float) -> float:
        c = self.calibration
        return c.scale_for(units) if c is not None else self.scale

    def predict(self, parts: Sequence[Any]) -> float:
        """Latency (ms) of the network made of ``parts`` (a space's ``parts(arch)``), at the speed
        the latest calibration read off anchors of its size (``last_scale``)."""
        units = self.units(parts)
        self.last_scale = self.scale_for(units)
        return units * self.last_scale

    def bounds(self, ms: float) -> Optional[Tuple[float, float]]:
        """(low, high) ms the prediction ``ms`` stands for, 90% of the time, widened for the
        latest calibration's load; None without an interval."""
        if self.interval is None:
            return None
        return self.interval.widened(self.calibration_load).bounds(ms)

    def sum_entries(self, parts: Sequence[Any]) -> float:
        """The naive estimate: raw entries summed (no model, no drift scale)."""
        return sum(self._raw[p.key] for p in parts)

    def breakdown(self, parts: Sequence[Any]) -> Dict[str, float]:
        """Predicted ms per part kind (without overheads and drift scale)."""
        self.add_missing(parts)
        out: Dict[str, float] = {}
        for p in parts:
            out[p.kind] = out.get(p.kind, 0.0) + self._eff[p.key]
        return out

    # -- coverage and missing entries ----------------------------------------------------------
    def missing_keys(self, space: Any) -> List[str]:
        """Keys of ``space.all_parts()`` the table lacks (empty: the table covers the space)."""
        return [p.key for p in space.all_parts() if p.key not in self._raw]

    def _missing_error(self, missing: List[Any], why: str) -> LatencyError:
        s = self.meta.get("space", "?")
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        return LatencyError(f"{self.path or 'the latency table'} has no entry for {missing[0].key}{more} "
                            f"(built for space {s!r} with settings {self.meta.get('settings')}); {why}")

    def add_missing(self, parts: Sequence[Any]) -> List[str]:
        """Time the parts the table lacks, on the spot; returns their keys.

        They are timed in shuffled rounds with up to 8 parts the table has (from ``parts``
        itself, else from the reference network's time via ``calibrate``), and the known parts'
        speed ratio (now / table) converts the new times into table units.
        """
        missing = self.missing(parts)
        if not missing:
            return []
        if stop_requested():  # Ctrl-C: the run is writing what it has; timing parts can wait for --resume
            raise LatencyError(f"{len(missing)} part(s) not timed: a stop was asked for")
        if not self.native:
            raise self._missing_error(missing, f"they cannot be timed here because the table was "
                                               f"measured on {describe(self.meta.get('device', {}))}; "
                                               f"build a table for this space on that device")
        anchors, seen = [], set()
        for p in parts:
            if p.key in self._raw and p.key not in seen and self._raw[p.key] > 0.005:
                seen.add(p.key)
                anchors.append(p)
        anchors = sorted(anchors, key=lambda p: -self._raw[p.key])[:8]
        from tqdm.auto import tqdm

        bar = tqdm(total=len(missing), desc="latency: timing new parts on this device", unit="part", leave=False,
                   disable=not self.progress or len(missing) < 2, dynamic_ncols=True)
        for i in range(0, len(missing), 32):
            chunk, t0 = missing[i:i + 32], time.time()
            samples = time_parts(list(chunk) + anchors, self.meta, self.device_type, self.threads, self.batch)
            stat = self.meta.get("measure", {}).get("stat", "median")
            now = [statistic(v, stat) for v in samples]
            if anchors:
                ratio = speed_ratio(now[len(chunk):], [self._raw[a.key] for a in anchors])
            else:
                ratio = self.calibrate()  # parts are far smaller than any anchor: the plain scale
            for p, t, v in zip(chunk, now, samples):
                self._raw[p.key] = t / ratio
                self._kind[p.key] = p.kind
                self._eff[p.key] = self.model.factor_for(p.kind, shapes_text(p.inputs)) * self._raw[p.key]
                q20, q80 = (float(np.quantile(v, q)) / ratio for q in (0.2, 0.8))
                self.added.append({"key": p.key, "kind": p.kind, "ms": t / ratio, "q20": q20, "q80": q80,
                                   "n": len(v), "inputs": shapes_text(p.inputs)})
            bar.update(len(chunk))
            self.timed_parts, self.timing_s = self.timed_parts + len(chunk), self.timing_s + time.time() - t0
            if self.autosave is not None:  # after every chunk: a run cut short keeps what it timed
                self.save(self.autosave)
        bar.close()
        return [p.key for p in missing]

    def save(self, path: Union[str, Path]) -> Path:
        """Write the table with the parts timed in this process (atomically).  The content hash a
        run records stays the one it loaded: the entries it predicted with are unchanged."""
        if self.added:
            rows = pd.concat([self.table.rows, pd.DataFrame(self.added)], ignore_index=True)
            self.table = Table(rows, self.meta)
            self.added = []
        return self.table.save(path)

    def complete(self, space: Any) -> List[str]:
        """Make sure every part of ``space.all_parts()`` has an entry: on the table's device the
        missing ones are timed now (once, instead of during a search); elsewhere a table that
        lacks parts of ``space`` raises LatencyError.  Returns the keys added."""
        parts = list(space.all_parts())
        missing = self.missing(parts)
        if not missing:
            return []
        if stop_requested():  # Ctrl-C: the run is writing what it has; timing parts can wait for --resume
            raise LatencyError(f"{len(missing)} part(s) not timed: a stop was asked for")
        if not self.native:
            raise self._missing_error(missing, f"the table lacks {len(missing)} part(s) of this space and was "
                                               f"measured on {describe(self.meta.get('device', {}))}; build a "
                                               f"table for these settings there")
        known = [p for p in parts if p.key in self._raw]
        added: List[str] = []
        for i in range(0, len(missing), 32):  # anchors: known parts, the same for every chunk
            added += self.add_missing(missing[i:i + 32] + known[:64])
        return added

    # -- drift ---------------------------------------------------------------------------------
    def anchors(self) -> Tuple[List[Dict[str, Any]], List[float], List[Dict[str, Any]]]:
        """(architectures, their times in table units, other fillers) that give the machine's speed.

        The reference network(s), and the fillers (the build's first calibration networks, timed
        with them anyway) whose time in table units the table holds: one network's speed
        ratio is off the average network's by a few percent from one moment to the next
        (mobile validation: group biases of +-4% with the reference alone), so the median over
        three is steadier.  Fillers without a stored time stay fillers only.
        """
        ref = self.meta.get("reference") or {}
        archs, then = list(ref.get("archs") or []), list(ref.get("ms") or [])
        if len(archs) != len(then):
            return [], [], []
        timed = {n["index"]: n["ms"] for n in (self.meta.get("calibration") or {}).get("networks", [])}
        others = []
        for j, f in enumerate(ref.get("fillers") or []):
            if j in timed:
                archs.append(f)
                then.append(float(timed[j]))
            else:
                others.append(f)
        return archs, then, others

    def calibrate(self, force: bool = False, max_age: Optional[float] = None, wait: bool = True,
                  anchors: Optional[Tuple[List[Dict[str, Any]], List[float]]] = None) -> float:
        """Time the anchor networks now; predictions from then on are rescaled by their ratios.

        ``anchors``: (architectures, their times in table units), e.g. ``validate.anchor_networks``
        (the reference plus more of the build's networks, of several sizes); default
        ``anchors()``.  Kept for re-calibrations.  Once per process and table: later calls adopt
        the cached calibration, unless ``force`` or it is older than ``max_age`` seconds.
        Re-calibrating follows the machine's speed (which can switch by 30% or more on a shared
        VM); a candidate already judged keeps the scale it was judged with (its record has it).
        ``wait=False`` times once, however busy the machine (latency that is only reported must
        not hold up a FLOP-budget search for the table's ``max_wait``).  Returns the plain scale.
        """
        if anchors is not None:
            self.anchor_set = (list(anchors[0]), list(anchors[1]), [])
        self.waits = wait
        cached = _CALIBRATED.get(self.content_hash)
        if cached is not None and not force and (max_age is None or time.time() - cached.when <= max_age):
            return self._adopt(cached)
        archs, then, others = self.anchor_set or self.anchors()
        if not archs:
            raise LatencyError(f"{self.path or 'the latency table'} holds no reference measurement to calibrate with")
        if not self.native:
            raise LatencyError(f"cannot calibrate {self.path or 'the table'} here: it was measured on "
                               f"{describe(self.meta.get('device', {}))}")
        ms = self.meta.get("measure", {})
        now, load, _ = gated(
            lambda: time_references(archs, self.device_type, self.threads, self.batch, ms, others),
            ms.get("max_load"), ms.get("max_wait", 0.0) if wait else 0.0)
        c = Calibration(then=[float(v) for v in then], now=[float(v) for v in now], load=load,
                        number=cached.number + 1 if cached is not None else 0)
        _CALIBRATED[self.content_hash] = c
        return self._adopt(c)

    def _adopt(self, c: Calibration) -> float:
        if self.calibration is not c:
            self.history.append(c)
        self.calibration, self.calibration_load, self.calibrated = c, c.load, True
        self.scale = c.scale_for()
        return self.scale


def time_parts(parts: Sequence[Any], meta: Dict[str, Any], device: str, threads: Optional[int],
               batch: int, seed: int = 0) -> List[List[float]]:
    """Timing samples (ms) of ``parts``, round by round, timed interleaved as a build does."""
    s = meta.get("measure", {})
    calls = []
    for p in parts:
        try:
            m = p.make().to(device).eval()
            xs = make_inputs(p.inputs, batch, device)
        except Exception as e:
            raise LatencyError(f"cannot build part {p.key} ({type(e).__name__}: {e})") from None
        calls.append(lambda m=m, xs=xs: m(*xs))
    with num_threads(threads):
        return time_interleaved(calls, s.get("rounds", 30), s.get("warmup", 3), device, seed,
                                min_seconds=s.get("min_seconds", 0.0))
