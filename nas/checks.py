"""Settings checked before any work or any file: each refused in one line naming the flag and the
value (``nas.run`` and ``nas.train`` share these)."""
from __future__ import annotations

import math
from typing import Any, Callable, List, Tuple

class RunError(RuntimeError):
    """A problem with the run's settings or folder, reported in one line."""


Check = Tuple[str, str, Callable[[Any], bool], str]  # (attribute, flag, valid?, what it must be)

POSITIVE_INT = (lambda v: v >= 1, "an integer >= 1")
NON_NEGATIVE_INT = (lambda v: v >= 0, "an integer >= 0")
SEED = (lambda v: 0 <= v < 2 ** 32, "an integer in [0, 2**32) (numpy's seed range)")
LR = (lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
DECAY = (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
FRACTION = (lambda v: 0 < v < 1, "a fraction in (0, 1)")


def check_numbers(obj: Any, checks: List[Check]) -> None:
    """A ValueError for the first attribute of ``obj`` that fails its check."""
    for name, flag, ok, what in checks:
        if not ok(getattr(obj, name)):
            raise ValueError(f"{flag} must be {what}, got {getattr(obj, name)}")


def resolve_device(name: str) -> str:
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``; a ValueError for
    anything this torch build cannot use."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch build sees no CUDA device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return name
