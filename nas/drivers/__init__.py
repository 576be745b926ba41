"""Search backends behind one interface; optional ones are imported only when asked for."""
from __future__ import annotations

import importlib
from typing import Dict, List, Tuple

from .base import Driver

# name -> (module, class, pip extra that provides its backend)
_DRIVERS: Dict[str, Tuple[str, str, str]] = {
    "optuna": ("nas.drivers.optuna", "OptunaDriver", ""),
    "random": ("nas.drivers.random", "RandomDriver", ""),
}


class DriverUnavailable(RuntimeError):
    pass


def names() -> List[str]:
    return list(_DRIVERS)


def register(name: str, module: str, cls: str, extra: str = "") -> None:
    _DRIVERS[name] = (module, cls, extra)


def get(name: str, **options) -> Driver:
    if name not in _DRIVERS:
        raise DriverUnavailable(f"unknown driver {name!r}; known: {', '.join(_DRIVERS)}")
    module, cls, extra = _DRIVERS[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        hint = f" (pip install 'plugnas[{extra}]')" if extra else ""
        raise DriverUnavailable(f"driver {name!r} needs {e.name}, which is not installed{hint}") from None
    return getattr(mod, cls)(**options)
