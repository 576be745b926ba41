"""Costs of a deployed network from its parts: FLOPs and parameters (cached per part), and
latency from a lookup table when one is given."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import space
from space.arch import ArchBase

from .flops import PartCounter

log = logging.getLogger(__name__)


class CostModel:
    def __init__(self, latency: Optional[Any] = None, recalibrate: float = 0.0):
        self.counter = PartCounter()
        self.latency = latency  # a nas.latency.Predictor, or None
        # re-time the latency anchors before a candidate when their last timing is older (s; 0 never):
        # the machine's speed moves over minutes; a candidate is judged once, with the scale then
        self.recalibrate = recalibrate

    def __call__(self, arch: ArchBase, lenient: bool = False) -> Dict[str, float]:
        parts = space.parts(arch)
        out: Dict[str, float] = {"flops": self.counter.total(parts), "params": self.counter.params(parts)}
        if self.latency is not None:
            if self.recalibrate:
                try:
                    self.latency.calibrate(max_age=self.recalibrate, wait=self.latency.waits)
                except Exception as e:  # anchors that cannot be re-timed now: the last scale stands
                    log.warning("latency anchors not re-timed (%s: %s); the previous scale stands",
                                type(e).__name__, e)
            try:
                out["latency_ms"] = float(self.latency.predict(parts))
                out["latency_scale"] = self.latency.last_scale
                b = self.latency.bounds(out["latency_ms"])
                if b is not None:
                    out["latency_low_ms"], out["latency_high_ms"] = b
            except Exception:
                if not lenient:
                    raise
        return out

    def lenient(self, arch: ArchBase) -> Dict[str, float]:
        """The costs, latency left out where the table cannot give it (an arch outside the
        space's choices, such as a module verdict's plain counterpart or a scaled baseline)."""
        return self(arch, lenient=True)
