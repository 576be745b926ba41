"""The op library: one module file per published idea; each registers itself on import.

Importing this package imports every module file in it, so a new file's ops are registered
(and covered by the registry-parametrised tests) without touching any list.
"""
import importlib
import pkgutil

from ..registry import ATTENTIONS, CHANNEL_MIXERS, DW_CONVS, FUSIONS, OPS, TOKEN_MIXERS
from .base import NetworkState, aux_loss, deploy, link_state, set_progress, task_loss

_HELPERS = {"base", "common"}
for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name not in _HELPERS and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["OPS", "FUSIONS", "ATTENTIONS", "TOKEN_MIXERS", "CHANNEL_MIXERS", "DW_CONVS",
           "deploy", "aux_loss", "set_progress", "task_loss", "link_state", "NetworkState"]
