"""Search backends behind one interface; optional ones are imported only when asked for."""
from __future__ import annotations

import importlib
import inspect
from typing import Dict, List, Tuple

from .base import Driver

# name -> (module, class, pip extra that provides its backend)
_DRIVERS: Dict[str, Tuple[str, str, str]] = {
    "optuna": ("nas.drivers.optuna", "OptunaDriver", ""),
    "random": ("nas.drivers.random", "RandomDriver", ""),
    "ray": ("nas.drivers.ray", "RayDriver", "ray"),
    "nni": ("nas.drivers.nni", "NNIDriver", "nni"),
}


class DriverUnavailable(RuntimeError):
    pass


def names() -> List[str]:
    return list(_DRIVERS)


def register(name: str, module: str, cls: str, extra: str = "") -> None:
    _DRIVERS[name] = (module, cls, extra)


# what nas.run passes every driver; anything else a driver's constructor names is its own option
COMMON = ("storage", "study_name", "sampler", "population", "folder", "shared")


def _class(name: str):
    if name not in _DRIVERS:
        raise DriverUnavailable(f"unknown driver {name!r}; known: {', '.join(_DRIVERS)}")
    module, cls, extra = _DRIVERS[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        hint = f" (pip install 'plugnas[{extra}]')" if extra else ""
        raise DriverUnavailable(f"driver {name!r} needs {e.name}, which is not installed{hint}") from None
    return getattr(mod, cls)


def options(name: str) -> List[str]:
    """The driver-specific settings (``--driver-opt``) a driver's constructor accepts."""
    params = inspect.signature(_class(name).__init__).parameters.values()
    return [p.name for p in params if p.name not in ("self", *COMMON) and p.kind is p.POSITIONAL_OR_KEYWORD]


def default_sampler(name: str) -> str:
    return _class(name).default_sampler


def get(name: str, **kwargs) -> Driver:
    return _class(name)(**kwargs)
