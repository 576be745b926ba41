"""A deployed network as one stand-alone Python file that needs plain ``torch`` only.

The file is generated from the modules' own source, so a module's code lives in one place: each
class the network uses is copied from its file (``inspect.getsource``) with the helpers and
constants its methods name, and only its ``__init__`` is left out.  ``build()`` replaces the
constructors: it recreates every module with the fields, parameter shapes and children the toolkit
built, as one nested expression that reads as the network's tree.  ``torch.nn`` modules appear as
ordinary constructor calls (``nn.Conv2d(16, 16, 3, ...)``), verified against the instance.

Weights are not in the file: ``build()`` gives zeros, and ``load_state_dict`` of a state dict saved
by ``nas.train`` (or beside the export) fills them; the module names are the toolkit's, so the keys
match exactly.  Why not ``torch.fx``: its symbolic trace fails on BiFormer's routing, AdaptFormer
and two fusions (data-dependent shapes), while copying source works for every registered op.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import keyword
import math
import re
import sys
import textwrap
import types
from typing import Any, Dict, List, Optional, Sequence, Set

import torch
from torch import nn

# what the exported file may import (the standard library, torch, numpy); the rest is copied as source
LIBRARIES = set(sys.stdlib_module_names) | {"torch", "numpy"}
_BARE = set(nn.Module().__dict__)  # nn.Module's own bookkeeping, recreated by nn.Module.__init__


class ExportError(Exception):
    """The network holds something a stand-alone file cannot recreate (named in the message)."""


HELPERS = '''
def _new(cls, fields=None, modules=None, params=None, buffers=None):
    """A module of ``cls`` with the given fields, children and zero tensors (no constructor runs)."""
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    for name, value in (fields or {}).items():
        object.__setattr__(m, name, value)
    for name, child in (modules or {}).items():
        m.add_module(name, child)
    for name, spec in (params or {}).items():
        m.register_parameter(name, None if spec is None else nn.Parameter(torch.zeros(spec[0], dtype=spec[1]),
                                                                         requires_grad=spec[2]))
    for name, spec in (buffers or {}).items():
        m.register_buffer(name, None if spec is None else torch.zeros(spec[0], dtype=spec[1]), persistent=spec[2])
    return m
'''


def _library(obj_module: Optional[str]) -> bool:
    return bool(obj_module) and obj_module.split(".")[0] in LIBRARIES


def _strip_init(src: str) -> str:
    """A class's source without ``__init__`` (build() sets what it would have)."""
    tree = ast.parse(src)
    cls = tree.body[0]
    lines = src.splitlines()
    drop: Set[int] = set()
    body = [n for n in cls.body if not (isinstance(n, ast.FunctionDef) and n.name == "__init__")]
    for n in cls.body:
        if n not in body:
            first = min([n.lineno] + [d.lineno for d in n.decorator_list])
            drop.update(range(first - 1, n.end_lineno))
    kept = [ln for i, ln in enumerate(lines) if i not in drop]
    if not body:
        kept.append("    pass")
    return "\n".join(kept).rstrip() + "\n"


def _global_names(src: str) -> List[str]:
    seen: Dict[str, None] = {}
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Name):
            seen.setdefault(node.id, None)
    return list(seen)


class Writer:
    """Collects the imports, copied definitions and the build expression of one network."""

    def __init__(self, root: nn.Module):
        self.imports: Dict[str, None] = {"import torch": None, "from torch import nn": None}
        self.defs: List[str] = []
        self.bound: Dict[str, int] = {"torch": id(torch), "nn": id(nn)}  # name in the file -> object id
        self.names: Dict[int, str] = {id(torch): "torch", id(nn): "nn"}
        self.keep: List[Any] = [torch, nn]  # ids stay valid while the writer lives
        self.pending: Set[int] = set()
        self.statements: List[str] = []
        self.counts: Dict[int, int] = {}
        self._count(root)

    # -- the network: one nested expression, shared objects as variables --------------------
    def _count(self, value: Any) -> None:
        if isinstance(value, (nn.Module, dict)) or hasattr(value, "__dict__") and not isinstance(
                value, (type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType)):
            self.counts[id(value)] = self.counts.get(id(value), 0) + 1
            if self.counts[id(value)] > 1:
                return
        if isinstance(value, nn.Module):
            for k, v in value.__dict__.items():
                if k not in _BARE:
                    self._count(v)
            for child in value._modules.values():
                if child is not None:
                    self._count(child)
        elif isinstance(value, (list, tuple)):
            for v in value:
                self._count(v)
        elif isinstance(value, dict):
            for v in value.values():
                self._count(v)

    def value(self, v: Any, indent: int) -> str:
        if v is None or isinstance(v, (bool, int, str)):
            return repr(v)
        if isinstance(v, float):
            return repr(v) if math.isfinite(v) else f"float({str(v)!r})"
        if isinstance(v, torch.Size):
            return f"torch.Size({list(v)!r})"
        if isinstance(v, torch.dtype):
            return str(v)
        if isinstance(v, torch.device):
            return f"torch.device({str(v)!r})"
        if isinstance(v, torch.Tensor):
            if v.numel() > 64:
                raise ExportError(f"a plain tensor attribute of {v.numel()} values (register it as a buffer)")
            return f"torch.tensor({v.tolist()!r}, dtype={v.dtype})"
        if isinstance(v, (types.FunctionType, types.BuiltinFunctionType, type, types.ModuleType)):
            return self.ref(v)
        if self.counts.get(id(v), 0) > 1:
            return self.shared(v)
        return self.fresh(v, indent)

    def shared(self, v: Any) -> str:
        if id(v) in self.names:
            return self.names[id(v)]
        if id(v) in self.pending:
            raise ExportError(f"a {type(v).__name__} refers back to itself through its children")
        self.pending.add(id(v))
        expr = self.fresh(v, 1)
        name = self._free(re.sub(r"(?<!^)(?=[A-Z])", "_", type(v).__name__).lower() + "_shared")
        self.statements.append(f"    {name} = {expr}")
        self.names[id(v)], self.bound[name] = name, id(v)
        self.keep.append(v)
        return name

    def fresh(self, v: Any, indent: int) -> str:
        inner = "    " * (indent + 1)
        if isinstance(v, list):
            return "[" + ", ".join(self.value(x, indent) for x in v) + "]"
        if isinstance(v, tuple):
            return "(" + ", ".join(self.value(x, indent) for x in v) + ("," if len(v) == 1 else "") + ")"
        if type(v) is dict:
            return "{" + ", ".join(f"{k!r}: {self.value(x, indent)}" for k, x in v.items()) + "}"
        if isinstance(v, dict):  # a dict subclass (DCANet's NetworkState): filled during each forward
            return f"{self.ref(type(v))}()"
        if not isinstance(v, nn.Module):
            if not hasattr(v, "__dict__"):
                raise ExportError(f"cannot write a {type(v).__name__} object")
            fields = ", ".join(f"{k}={self.value(x, indent + 1)}" for k, x in vars(v).items())
            return f"_obj({self.ref(type(v))}, dict({fields}))"
        ctor = self._torch_ctor(v, indent)
        if ctor is not None:
            return ctor
        parts = []
        fields = {k: x for k, x in v.__dict__.items() if k not in _BARE}
        if fields:
            parts.append(f"{inner}fields=" + _mapping({k: self.value(x, indent + 2) for k, x in fields.items()}))
        if v._modules:
            kids = {k: self.value(c, indent + 2) for k, c in v._modules.items()}
            parts.append(f"{inner}modules=" + _mapping(kids, f"\n{inner}    "))
        for kind, store, extra in (("params", v._parameters, "requires_grad"), ("buffers", v._buffers, "persistent")):
            if store:
                specs = []
                for k, t in store.items():
                    flag = (t.requires_grad if kind == "params" else k not in v._non_persistent_buffers_set) \
                        if t is not None else None
                    specs.append((k, "None" if t is None else f"({tuple(t.shape)!r}, {t.dtype}, {flag})"))
                parts.append(f"{inner}{kind}=" + _mapping(dict(specs)))
        return f"_new({self.ref(type(v))},\n" + ",\n".join(parts) + ")" if parts else f"_new({self.ref(type(v))})"

    def _torch_ctor(self, m: nn.Module, indent: int) -> Optional[str]:
        """``nn.X(...)`` for a torch.nn module whose constructor arguments its fields give back."""
        cls = type(m)
        if not cls.__module__.startswith("torch.nn") or getattr(nn, cls.__name__, None) is not cls:
            return None
        if cls in (nn.Sequential, nn.ModuleList) and not m.__dict__.keys() - _BARE:
            if list(m._modules) != [str(i) for i in range(len(m._modules))]:
                return None
            pad = "    " * (indent + 1)
            kids = "".join(f"\n{pad}{self.value(c, indent + 1)}," for c in m._modules.values())
            return f"nn.Sequential({kids})" if cls is nn.Sequential else f"nn.ModuleList([{kids}])"
        if m._modules:
            return None
        kwargs: Dict[str, Any] = {}
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if p.name in ("device", "dtype") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.name == "bias" and "bias" in m._parameters:
                val: Any = m._parameters["bias"] is not None
            elif p.name in m.__dict__:
                val = m.__dict__[p.name]
            elif p.default is not p.empty:
                continue
            else:
                return None
            if isinstance(val, tuple) and val and all(v == val[0] for v in val) and type(p.default) is int:
                val = val[0]  # kernel_size=(3, 3) reads as kernel_size=3, as one writes it
            if p.default is p.empty or not _same(val, p.default):
                kwargs[p.name] = val
        try:
            twin = cls(**kwargs)
        except Exception:
            return None
        if not _same_module(twin, m):
            return None
        args = ", ".join(f"{k}={self.value(v, indent)}" for k, v in kwargs.items())
        return f"nn.{cls.__name__}({args})"

    # -- names: imports for libraries, copied source for everything else ---------------------
    def _free(self, name: str, obj_id: Optional[int] = None) -> str:
        base, i = name, 2
        while name in self.bound and self.bound[name] != obj_id or name in ("build", "_new", "_obj"):
            name, i = f"{base}_{i}", i + 1
        return name

    def ref(self, obj: Any, hint: Optional[str] = None) -> str:
        if id(obj) in self.names:
            return self.names[id(obj)]
        if isinstance(obj, types.ModuleType):
            if not _library(obj.__name__):
                raise ExportError(f"its code uses the module {obj.__name__}, which is not a library")
            name = self._free(hint or obj.__name__.split(".")[-1], id(obj))
            parent, _, tail = obj.__name__.rpartition(".")
            line = (f"import {obj.__name__}" if name == obj.__name__ else
                    f"from {parent} import {tail}" if parent and tail == name else f"import {obj.__name__} as {name}")
            self.imports[line] = None
            return self._bind(name, obj)
        mod = getattr(obj, "__module__", None)
        qual = getattr(obj, "__qualname__", getattr(obj, "__name__", None))
        if _library(mod) or mod is None:
            for ns in (nn, torch, nn.functional):
                if getattr(ns, getattr(obj, "__name__", ""), None) is obj:
                    return f"{self.ref(ns, 'F' if ns is nn.functional else None)}.{obj.__name__}"
            if mod is None or "." in (qual or "") or getattr(_import(mod), qual, None) is not obj:
                raise ExportError(f"cannot find where {obj!r} is importable from")
            name = self._free(hint or qual, id(obj))
            self.imports[f"from {mod} import {qual}" + ("" if name == qual else f" as {name}")] = None
            return self._bind(name, obj)
        if not isinstance(obj, (type, types.FunctionType)) and not hasattr(obj, "__wrapped__"):  # lru_cache'd
            if isinstance(obj, (int, float, str, bool, tuple, type(None))):  # a module-level constant
                name = self._free(hint, id(obj))
                self._bind(name, obj)
                self.defs.append(f"{name} = {self.value(obj, 0)}\n")
                return name
            raise ExportError(f"cannot copy {obj!r} ({type(obj).__name__}) into a stand-alone file")
        name = getattr(obj, "__name__", qual)
        if id(obj) in self.pending:  # mutual recursion between functions: the name is enough
            return name
        self.pending.add(id(obj))
        try:
            src = textwrap.dedent(inspect.getsource(obj))
        except (OSError, TypeError) as e:
            raise ExportError(f"no source for {qual} ({e})") from None
        if isinstance(obj, type):
            src = _strip_init(src)
        module_globals = vars(importlib.import_module(mod))
        rename = {}
        for n in _global_names(src):
            if n in module_globals and n != name:
                target = self.ref(module_globals[n], hint=n)
                if target != n:
                    rename[n] = target
        own = self._free(name, id(obj))
        if own != name:
            rename[name] = own
        for old, new in rename.items():
            src = re.sub(rf"(?<![\w.]){re.escape(old)}\b", new, src)
        self.defs.append(f"# from {mod}\n{src}")
        return self._bind(own, obj)

    def _bind(self, name: str, obj: Any) -> str:
        self.bound[name], self.names[id(obj)] = id(obj), name
        self.keep.append(obj)
        return name


def _mapping(items: Dict[str, str], sep: str = "") -> str:
    """``dict(a=...)`` where every key is a name, else ``{'0': ...}`` (Sequential-style children)."""
    if all(k.isidentifier() and not keyword.iskeyword(k) for k in items):
        return "dict(" + ("," if sep else ", ").join(f"{sep}{k}={v}" for k, v in items.items()) + ")"
    return "{" + ("," if sep else ", ").join(f"{sep}{k!r}: {v}" for k, v in items.items()) + "}"


def _import(mod: str):
    try:
        return importlib.import_module(mod)
    except ImportError:
        return None


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


def _same_module(a: nn.Module, b: nn.Module) -> bool:
    fa = {k: v for k, v in a.__dict__.items() if k not in _BARE}
    fb = {k: v for k, v in b.__dict__.items() if k not in _BARE}
    if fa.keys() != fb.keys() or not all(_same(fa[k], fb[k]) for k in fa):
        return False
    for sa, sb in ((a._parameters, b._parameters), (a._buffers, b._buffers)):
        if sa.keys() != sb.keys() or any((sa[k] is None) != (sb[k] is None) or sa[k] is not None and (
                sa[k].shape != sb[k].shape or sa[k].dtype != sb[k].dtype) for k in sa):
            return False
    return a._non_persistent_buffers_set == b._non_persistent_buffers_set


OBJ_HELPER = '''
def _obj(cls, fields):
    o = cls.__new__(cls)
    o.__dict__.update(fields)
    return o
'''


MAIN = '''

INPUT_SIZE = {input_size!r}  # channels, height, width the network was built and counted for

if __name__ == "__main__":  # python model.py [weights.pt]: one forward pass on a random input
    net = build()
    if len(sys.argv) > 1:
        net.load_state_dict(torch.load(sys.argv[1], weights_only=True))
    with torch.no_grad():
        print(tuple(net(torch.randn(1, *INPUT_SIZE)).shape))
'''


def python_source(net: nn.Module, header: str, input_size: Optional[Sequence[int]] = None) -> str:
    """The stand-alone file of ``net`` (deployed, eval mode); ``header`` opens its docstring."""
    for m in net.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
            raise ExportError(f"{type(m).__name__} has hooks, which a file cannot carry")
    w = Writer(net)
    root = w.value(net, 1)
    body = "\n".join(w.statements + [f"    net = {root}", "    return net.eval()"])
    helpers = HELPERS + (OBJ_HELPER if "_obj(" in body else "")
    doc = header.rstrip().replace('"""', "'''")
    if input_size is not None:
        w.imports["import sys"] = None
    imports = sorted(w.imports, key=lambda line: (line.startswith("from"), line))
    return (f'"""{doc}\n"""\nfrom __future__ import annotations\n\n' + "\n".join(imports) + "\n\n" + helpers +
            "\n\n# -- the modules, copied from the toolkit's source (build() below replaces their __init__) --\n\n"
            + "\n\n".join(w.defs) + "\n\ndef build() -> nn.Module:\n"
            '    """The network in eval mode with zero weights; then net.load_state_dict(torch.load(W.pt))."""\n'
            + body + "\n" + (MAIN.format(input_size=tuple(input_size)) if input_size is not None else ""))
