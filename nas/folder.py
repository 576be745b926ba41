"""The run folder: refused before any work where it cannot be this run's, then created and
locked (one process per folder), and removed again if the run is refused before writing in it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, List

from .checks import RunError

# settings a resume may change: they shape no finished trial (verdicts: the end only)
RESUMABLE_CHANGES = ("resume", "progress", "trials", "out", "device", "threads", "driver_options",
                     "verdict_pairs", "trial_timeout", "verify", "export", "latency_every")


def check_folder(cfg: Any, default: Path, collected: Any = None) -> Path:
    """The run folder's path, refused in one line where it cannot be this run's; creates nothing.
    ``collected``: a study's name, whose earlier collection in the folder may be replaced."""
    out = Path(cfg.out) if cfg.out else default
    if collected and (out / "config.json").exists():
        try:
            study = json.loads((out / "config.json").read_text()).get("study") or {}
        except (ValueError, OSError):
            study = {}
        if not (study.get("collected") and study.get("name") == collected):
            raise RunError(f"{out} already holds results other than a collection of study {collected!r}: "
                           f"choose another --out")
        return out
    if cfg.resume:
        if not (out / "config.json").exists():
            raise RunError(f"--resume: {out} holds no run to resume (no config.json)")
        try:
            old = json.loads((out / "config.json").read_text())["config"]
            assert isinstance(old, dict)
        except (ValueError, KeyError, TypeError, AssertionError, OSError):
            raise RunError(f"--resume: {out / 'config.json'} is not a run's configuration") from None
        from .drivers.optuna import hide_password

        mine = {**dataclasses.asdict(cfg), "storage": hide_password(cfg.storage)}
        diff = [k for k in mine if k not in RESUMABLE_CHANGES and old.get(k) != mine[k]]
        if diff:
            raise RunError(f"--resume: settings differ from the run in {out}: {', '.join(diff)}")
    elif out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a folder")
    elif out.exists() and any(p.name != ".lock" for p in out.iterdir()):
        raise RunError(f"{out} already holds results: choose another --out, or add --resume to continue it")
    return out


def claim_folder(out: Path) -> Path:
    """Create ``out`` if need be and hold its lock until ``release_folders``."""
    fresh = not out.exists() or all(p.name == ".lock" for p in out.iterdir())
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / ".lock", "a")
    except OSError as e:
        raise RunError(f"cannot write to --out {out}: {e.strerror}") from None
    _lock(out, lock)
    if fresh:
        _FRESH.append(out)
    return out


_LOCKS: List[Any] = []  # open lock files of this process's run folders, released when its run ends
_FRESH: List[Path] = []  # folders this run created: removed again if it fails before writing anything


def _lock(out: Path, fh) -> None:
    """One process per run folder: a second one would duplicate trial numbers and overwrite
    outputs.  (An advisory flock; on systems without fcntl the folder is not locked.)"""
    try:
        import fcntl
    except ImportError:
        _LOCKS.append(fh)
        return
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise RunError(f"{out} is in use by another search process: wait for it to end, or choose another "
                       f"--out") from None
    _LOCKS.append(fh)


def claim_sqlite(url: str) -> None:
    """A SQLite study file is one process's: SQLite serialises writers with a file lock, so
    several workers would stall on "database is locked" (and on a network filesystem the file can
    be corrupted).  Several workers need a database server (PostgreSQL, MySQL)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return
    path = Path(u.database).resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path.with_name(path.name + ".lock"), "a")
    except OSError as e:
        raise RunError(f"cannot write beside --storage {path}: {e.strerror}") from None
    try:
        _lock(path, fh)
    except RunError:
        raise RunError(f"--storage {url} is in use by another search: a SQLite study takes one process; "
                       f"for several workers use a database server (--storage postgresql://...)") from None


def release_folders(refused: bool = False) -> None:
    """Release this process's locks; ``refused``: remove the folders it created and left empty."""
    if refused:
        for out in _FRESH:
            left = {p.name for p in out.iterdir()} if out.is_dir() else set()
            if left <= {".lock"}:
                (out / ".lock").unlink(missing_ok=True)
                out.rmdir()
    _FRESH.clear()
    while _LOCKS:
        _LOCKS.pop().close()
