"""Architectures as data: the only thing the search side hands to the model side.

Each space defines a small frozen dataclass of names and integers (DARTS' ``Genotype``,
Once-for-All's ``config``).  ``ArchBase`` gives every one of them the same JSON round trip,
a stable hash and validation, so that ``Arch.from_json(a.to_json()) == a`` holds by
construction, whatever nesting of tuples and dataclasses a space uses.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, ClassVar, Dict, Type, TypeVar

T = TypeVar("T", bound="ArchBase")
FORMAT_VERSION = 1  # bumped when a stored JSON would no longer read back the same


class ArchError(ValueError):
    """An architecture file or value that does not describe a buildable network."""


def added_field(default: Any) -> Any:
    """A field added after architectures were stored: written only where it differs from its
    default, so that every stored architecture keeps its JSON and its hash."""
    return dataclasses.field(default=default, metadata={"omit_default": True})


def _to_jsonable(v: Any) -> Any:
    if dataclasses.is_dataclass(v):
        return {f.name: _to_jsonable(getattr(v, f.name)) for f in dataclasses.fields(v)
                if not (f.metadata.get("omit_default") and getattr(v, f.name) == f.default)}
    if isinstance(v, (tuple, list)):
        return [_to_jsonable(x) for x in v]
    return v


def _from_jsonable(tp: Any, v: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(v, dict):
            raise ArchError(f"{where}: expected an object, got {type(v).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = set(v) - names - {"space", "format"}
        if unknown:
            raise ArchError(f"{where}: unknown field(s) {sorted(unknown)}")
        kw = {}
        for f in dataclasses.fields(tp):
            if not f.init or f.name not in v:
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ArchError(f"{where}: missing field {f.name!r}")
                continue
            kw[f.name] = _from_jsonable(hints[f.name], v[f.name], f"{where}.{f.name}")
        return tp(**kw)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(v, (list, tuple)):
            raise ArchError(f"{where}: expected a list, got {type(v).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_jsonable(args[0], x, f"{where}[{i}]") for i, x in enumerate(v))
        if len(args) != len(v):
            raise ArchError(f"{where}: expected {len(args)} items, got {len(v)}")
        return tuple(_from_jsonable(a, x, f"{where}[{i}]") for i, (a, x) in enumerate(zip(args, v)))
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if v is None else _from_jsonable(args[0], v, where)
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ArchError(f"{where}: expected an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ArchError(f"{where}: expected a number, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise ArchError(f"{where}: expected a string, got {v!r}")
        return v
    if tp is bool:
        if not isinstance(v, bool):
            raise ArchError(f"{where}: expected true/false, got {v!r}")
        return v
    return v


@dataclasses.dataclass(frozen=True)
class ArchBase:
    """Base of every space's architecture dataclass; subclasses set ``space``."""

    space: ClassVar[str] = ""
    _by_space: ClassVar[Dict[str, Type["ArchBase"]]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.space:
            ArchBase._by_space[cls.space] = cls

    # Every subclass has an ``input_size: Tuple[int, int, int]`` field: the deployed
    # network's (C, H, W), at which its budget is counted.

    def validate(self) -> None:
        """Raise ArchError if the architecture cannot be built; spaces extend this."""

    # -- data round trip ------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return {"space": self.space, "format": FORMAT_VERSION, **_to_jsonable(self)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls: Type[T], d: Dict[str, Any]) -> T:
        if not isinstance(d, dict):
            raise ArchError(f"an architecture is a JSON object, got {type(d).__name__}")
        if cls is ArchBase or not cls.space:
            space = d.get("space")
            if space not in ArchBase._by_space:
                known = ", ".join(sorted(ArchBase._by_space))
                raise ArchError(f"unknown or missing 'space' {space!r} (known: {known})")
            cls = ArchBase._by_space[space]  # type: ignore[assignment]
        elif d.get("space", cls.space) != cls.space:
            raise ArchError(f"architecture is for space {d.get('space')!r}, not {cls.space!r}")
        if d.get("format", FORMAT_VERSION) > FORMAT_VERSION:
            raise ArchError(f"architecture format {d['format']} is newer than this toolkit reads")
        arch = _from_jsonable(cls, d, cls.space)
        arch.validate()
        return arch

    @classmethod
    def from_json(cls: Type[T], text: str) -> T:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArchError(f"not valid JSON: {e}") from None
        return cls.from_dict(d)

    @property
    def arch_hash(self) -> str:
        """Stable 12-hex-digit identity: equal architectures hash equal across runs."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(canon.encode()).hexdigest()[:12]


def load_arch(path: str | Path) -> ArchBase:
    """Read an architecture JSON written by ``to_json`` (``archs/<id>.json``, ``best.json``).

    Result files may wrap the architecture with metrics (``{"arch": {...}, ...}``);
    both forms are accepted.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ArchError(f"cannot read architecture file {p}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ArchError(f"{p} is not a text (JSON) architecture file") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArchError(f"{p} is not valid JSON: {e}") from None
    if isinstance(d, dict) and isinstance(d.get("arch"), dict):
        d = d["arch"]
    return ArchBase.from_dict(d)
