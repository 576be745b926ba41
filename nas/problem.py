"""What a driver sees: flat categorical choices in, one ``TrialRecord`` out.

Costs come first: a candidate over any budget is rejected before the estimator spends anything
on it.  Scores are cached by architecture hash, so a driver proposing the same architecture
twice costs nothing the second time.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from space import SearchSpace
from space.arch import ArchBase

from .budget import Constraint
from .interrupt import check as check_interrupt

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Objective:
    name: str  # a TrialRecord metric: score, flops, params, latency_ms
    maximize: bool

    @property
    def direction(self) -> str:
        """Optuna's word for it."""
        return "maximize" if self.maximize else "minimize"


@dataclass
class TrialRecord:
    number: int
    choices: Dict[str, Any]  # the driver's values for the space's choices
    state: str
    seconds: float
    arch: Optional[ArchBase] = None
    arch_hash: str = ""
    flops: Optional[int] = None
    params: Optional[int] = None  # parameter count of the deployed network
    latency_ms: Optional[float] = None
    latency_scale: Optional[float] = None  # the drift scale latency_ms was predicted with (now / table units)
    latency_low_ms: Optional[float] = None  # the true latency lies in [low, high] 90% of the time (validated)
    latency_high_ms: Optional[float] = None
    score: Optional[float] = None  # the estimator's; higher ranks better
    val_acc: Optional[float] = None  # the score, where the estimator's score is a validation accuracy
    estimator: str = ""
    violations: Dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def feasible(self) -> bool:
        return self.state == "complete"

    def metric(self, name: str) -> Optional[float]:
        return {"score": self.score, "flops": self.flops, "params": self.params,
                "latency_ms": self.latency_ms}[name]

    def values(self, objectives: Sequence[Objective]) -> List[float]:
        """Objective values for a driver; a rejected candidate gets accuracy 0 (it never ran),
        its real costs, and a positive constraint violation that tells the sampler why."""
        out = []
        for o in objectives:
            v = self.metric(o.name)
            out.append(float(v) if v is not None else (0.0 if o.maximize else math.inf))
        return out

    def to_row(self) -> Dict[str, Any]:
        return {"trial": self.number, "arch_hash": self.arch_hash, "params": self.params,
                "flops": self.flops, "latency_ms": self.latency_ms, "latency_scale": self.latency_scale,
                "latency_low_ms": self.latency_low_ms, "latency_high_ms": self.latency_high_ms,
                "score": self.score, "estimator": self.estimator,
                "val_acc": self.val_acc, "state": self.state, "seconds": round(self.seconds, 3), "message": self.message}

    def to_json(self) -> Dict[str, Any]:
        d = self.to_row()
        d.update(choices=self.choices, violations=self.violations,
                 arch=self.arch.to_dict() if self.arch is not None else None)
        return d

    @classmethod
    def from_json(cls, d: Dict[str, Any], numbered: bool = True) -> "TrialRecord":
        """A record read back from trials.jsonl, every field checked first (the file names
        output paths: ``archs/<trial>.json``); ValueError says which field is wrong.
        ``numbered=False``: a record in flight, numbered -1 until the driver numbers it (Ray)."""
        _check_record(d, numbered)
        arch = ArchBase.from_dict(d["arch"]) if d.get("arch") else None
        return cls(number=d["trial"], choices=d.get("choices", {}), state=d["state"], seconds=d["seconds"],
                   arch=arch, arch_hash=d.get("arch_hash", ""), flops=d.get("flops"), params=d.get("params"),
                   latency_ms=d.get("latency_ms"), latency_scale=d.get("latency_scale"),
                   latency_low_ms=d.get("latency_low_ms"), latency_high_ms=d.get("latency_high_ms"), val_acc=d.get("val_acc"),
                   score=d.get("score", d.get("val_acc")), estimator=d.get("estimator", ""),
                   violations=d.get("violations", {}), message=d.get("message", ""))


TRIAL_STATES = ("complete", "over_budget", "failed")


def _check_record(d: Any, numbered: bool = True) -> None:
    def num(v, ok_none=True):
        return (v is None and ok_none) or (isinstance(v, (int, float)) and not isinstance(v, bool))

    if not isinstance(d, dict):
        raise ValueError(f"a trial record is a JSON object, got {type(d).__name__}")
    n = d.get("trial")
    if not isinstance(n, int) or isinstance(n, bool) or n < (0 if numbered else -1):
        raise ValueError(f"trial number must be an integer >= 0, got {n!r}")
    if d.get("state") not in TRIAL_STATES:
        raise ValueError(f"trial {n}: state must be one of {', '.join(TRIAL_STATES)}, got {d.get('state')!r}")
    if not num(d.get("seconds"), ok_none=False):
        raise ValueError(f"trial {n}: seconds must be a number, got {d.get('seconds')!r}")
    for key in ("flops", "params", "latency_ms", "latency_scale", "latency_low_ms", "latency_high_ms", "score",
                "val_acc"):
        if not num(d.get(key)):
            raise ValueError(f"trial {n}: {key} must be a number or null, got {d.get(key)!r}")
    for key in ("choices", "violations"):
        if not isinstance(d.get(key, {}), dict):
            raise ValueError(f"trial {n}: {key} must be an object")
    if not all(num(v, ok_none=False) for v in d.get("violations", {}).values()):
        raise ValueError(f"trial {n}: violations must be numbers")
    for key in ("arch_hash", "estimator", "message"):
        if not isinstance(d.get(key, ""), str):
            raise ValueError(f"trial {n}: {key} must be a string")


class TrialTimeout(Exception):
    """A candidate's evaluation ran past ``--trial-timeout``."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TrialTimeout in the block after ``seconds`` (0: no limit).  A SIGALRM timer, so it
    works in the main thread of a POSIX process only (the optuna and random drivers' trials; Ray
    and NNI run trials elsewhere); the signal lands between two Python steps, so one long C++
    call (a torch op) ends before the trial is stopped."""
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _stop(signum, frame):
        raise TrialTimeout(f"the trial ran past --trial-timeout {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Problem:
    def __init__(self, space: SearchSpace, constraints: Sequence[Constraint],
                 costs: Callable[[ArchBase], Dict[str, float]], score: Callable[[ArchBase], float],
                 objectives: Sequence[Objective], estimator: str = "", score_is_accuracy: bool = True,
                 trial_timeout: float = 0.0, initial: Optional[Dict[str, Dict[str, Any]]] = None):
        self.space, self.constraints, self.costs, self.score = space, tuple(constraints), costs, score
        # name -> choices a driver that warm-starts (Driver.warm_starts) proposes first, in order
        self.initial = dict(initial or {})
        self.estimator, self.score_is_accuracy = estimator, score_is_accuracy
        self.trial_timeout = float(trial_timeout)  # seconds one candidate's scoring may take; 0: no limit
        self.objectives = list(objectives)
        self.choices = space.choices()
        self._scores: Dict[str, float] = {}

    def timed_score(self, arch: ArchBase) -> float:
        """The estimator's score within ``trial_timeout`` (the baselines and verdicts score too)."""
        check_interrupt()
        with time_limit(self.trial_timeout):
            return float(self.score(arch))

    def evaluate(self, params: Dict[str, Any], number: int) -> TrialRecord:
        check_interrupt()  # a Ctrl-C between two trials stops the search here
        t0 = time.perf_counter()
        rec = TrialRecord(number=number, choices=dict(params), state="failed", seconds=0.0, estimator=self.estimator)
        try:
            arch = self.space.decode(params)
            rec.arch, rec.arch_hash = arch, arch.arch_hash
            c = self.costs(arch)
            rec.flops, rec.params, rec.latency_ms = int(c["flops"]), int(c["params"]), c.get("latency_ms")
            rec.latency_scale = c.get("latency_scale")
            rec.latency_low_ms, rec.latency_high_ms = c.get("latency_low_ms"), c.get("latency_high_ms")
            values = {"flops": rec.flops, "params": rec.params, "latency": rec.latency_ms}
            rec.violations = {k.kind: k.violation(values[k.kind]) for k in self.constraints}
            if any(v > 0 for v in rec.violations.values()):
                rec.state = "over_budget"
            else:
                if rec.arch_hash not in self._scores:
                    score = self.timed_score(arch)
                    if not math.isfinite(score):
                        raise FloatingPointError(f"the estimator's score is {score}")
                    self._scores[rec.arch_hash] = score
                rec.score = self._scores[rec.arch_hash]
                rec.val_acc = rec.score if self.score_is_accuracy else None
                rec.state = "complete"
        except Exception as e:  # any failure of one candidate is its trial's, never the search's
            log.debug("trial %d failed", number, exc_info=True)  # the traceback, with --debug
            rec.message = (f"{type(e).__name__}: {e}".strip().splitlines() or [type(e).__name__])[0][:300]
            rec.violations = rec.violations or {k.kind: 0.0 for k in self.constraints}
        rec.seconds = time.perf_counter() - t0
        return rec
