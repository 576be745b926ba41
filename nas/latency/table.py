"""A latency table on disk: one row per distinct ``Part.key``, plus metadata.

CSV layout (readable by any CSV reader that skips ``#`` lines, e.g. ``pd.read_csv(p, comment="#")``)::

    # nas-latency-table 1 {"space": "darts", "device": {...}, ...}     <- metadata, one JSON line
    key,kind,ms,q20,q80,n,inputs                                      <- pandas CSV body
    ...
    # end rows=48 sha256=<hex of the body>                            <- written last

The end line makes a truncated file (a copy cut short, a build killed while writing) fail to
load with a one-line message instead of silently missing rows; its checksum catches edits and
corruption.  A ``.parquet`` path stores the same body with the metadata in the file's key-value
metadata (needs pyarrow).  Tables are written atomically (temporary file, then rename).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Union

import pandas as pd

from .measure import LatencyError

MAGIC = "# nas-latency-table"
FORMAT = 1
COLUMNS = ["key", "kind", "ms", "q20", "q80", "n", "inputs"]
PARQUET_KEY = b"nas_latency_meta"


def sha256_file(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shapes_text(shapes: Iterable[Iterable[int]]) -> str:
    return ";".join("x".join(str(int(v)) for v in s) for s in shapes)


@dataclass
class Table:
    """Rows (a DataFrame indexed by nothing, one row per key) and metadata (a JSON-able dict)."""

    rows: pd.DataFrame
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for c in COLUMNS:
            if c not in self.rows.columns:
                self.rows[c] = pd.Series(dtype=float if c in ("ms", "q20", "q80", "n") else object)
        self.rows = self.rows[COLUMNS + [c for c in self.rows.columns if c not in COLUMNS]]

    @classmethod
    def from_records(cls, records: List[Dict[str, Any]], meta: Dict[str, Any]) -> "Table":
        return cls(pd.DataFrame.from_records(records, columns=COLUMNS) if records
                   else pd.DataFrame(columns=COLUMNS), dict(meta))

    def entries(self) -> Dict[str, float]:
        return dict(zip(self.rows["key"].astype(str), self.rows["ms"].astype(float)))

    def kinds(self) -> Dict[str, str]:
        return dict(zip(self.rows["key"].astype(str), self.rows["kind"].astype(str)))

    def __len__(self) -> int:
        return len(self.rows)

    # -- writing --------------------------------------------------------------------------
    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(self.meta, format=FORMAT, rows=len(self.rows))
        tmp = path.with_name(path.name + ".tmp")
        if path.suffix == ".parquet":
            _save_parquet(self.rows, meta, tmp)
        elif path.suffix == ".csv":
            body = self.rows.to_csv(index=False, lineterminator="\n")
            digest = hashlib.sha256(body.encode()).hexdigest()
            with open(tmp, "w", newline="\n") as f:
                f.write(f"{MAGIC} {FORMAT} {json.dumps(meta, sort_keys=True)}\n")
                f.write(body)
                f.write(f"# end rows={len(self.rows)} sha256={digest}\n")
        else:
            raise LatencyError(f"{path}: a table file ends in .csv or .parquet")
        os.replace(tmp, path)
        return path


def _save_parquet(rows: pd.DataFrame, meta: Dict[str, Any], path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise LatencyError("writing .parquet tables needs pyarrow (pip install pyarrow); "
                           "or write a .csv table") from None
    t = pa.Table.from_pandas(rows, preserve_index=False)
    t = t.replace_schema_metadata({**(t.schema.metadata or {}), PARQUET_KEY: json.dumps(meta).encode()})
    pq.write_table(t, path)


def _load_parquet(path: Path) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LatencyError(f"{path}: reading .parquet tables needs pyarrow (pip install pyarrow)") from None
    try:
        t = pq.read_table(path)
        raw = (t.schema.metadata or {}).get(PARQUET_KEY)
        if raw is None:
            raise LatencyError(f"{path}: not a latency table (no {PARQUET_KEY.decode()} metadata)")
        meta = json.loads(raw)
        rows = t.to_pandas()
    except LatencyError:
        raise
    except Exception as e:  # pyarrow raises several types for truncated/corrupted files
        raise LatencyError(f"{path}: corrupted or truncated parquet table ({_one_line(e)})") from None
    if meta.get("rows") != len(rows):
        raise LatencyError(f"{path}: truncated table ({len(rows)} rows, metadata says {meta.get('rows')})")
    return Table(rows, meta)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def read_meta(path: Union[str, Path]) -> Dict[str, Any]:
    """The metadata alone (reads the first line of a CSV table)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return load(path).meta
    return _parse_header(path, _first_line(path))


def _first_line(path: Path) -> str:
    try:
        with open(path, "r", encoding="utf-8", newline="") as f:
            return f.readline()
    except FileNotFoundError:
        raise LatencyError(f"no latency table at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LatencyError(f"{path}: cannot read latency table ({_one_line(e)})") from None


def _parse_header(path: Path, line: str) -> Dict[str, Any]:
    if not line:
        raise LatencyError(f"{path}: empty file, not a latency table")
    if not line.startswith(MAGIC + " "):
        raise LatencyError(f"{path}: not a latency table (first line does not start with {MAGIC!r})")
    if not line.endswith("\n"):
        raise LatencyError(f"{path}: truncated latency table (cut inside its metadata line)")
    parts = line[len(MAGIC) + 1:].split(" ", 1)
    try:
        version = int(parts[0])
        meta = json.loads(parts[1])
    except (ValueError, IndexError):
        raise LatencyError(f"{path}: corrupted latency table (unreadable metadata line)") from None
    if version > FORMAT:
        raise LatencyError(f"{path}: table format {version} is newer than this toolkit reads ({FORMAT})")
    if not isinstance(meta, dict):
        raise LatencyError(f"{path}: corrupted latency table (metadata is not an object)")
    return meta


def load(path: Union[str, Path]) -> Table:
    """Read a table; any problem raises LatencyError with a one-line message."""
    path = Path(path)
    if not path.exists():
        raise LatencyError(f"no latency table at {path}")
    if path.suffix == ".parquet":
        return _load_parquet(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LatencyError(f"{path}: cannot read latency table ({_one_line(e)})") from None
    first, _, rest = text.partition("\n")
    meta = _parse_header(path, first + ("\n" if _ else ""))
    lines = rest.split("\n")
    # the file ends with "# end ...\n": split leaves ["...", "# end ...", ""]
    if len(lines) < 2 or lines[-1] != "" or not lines[-2].startswith("# end "):
        raise LatencyError(f"{path}: truncated latency table (no end line; the file was cut short "
                           f"or a build was interrupted)")
    end = lines[-2]
    body = "\n".join(lines[:-2]) + "\n"
    try:
        fields = dict(kv.split("=", 1) for kv in end[len("# end "):].split())
        n_rows, digest = int(fields["rows"]), fields["sha256"]
    except (ValueError, KeyError):
        raise LatencyError(f"{path}: corrupted latency table (unreadable end line)") from None
    if hashlib.sha256(body.encode()).hexdigest() != digest:
        raise LatencyError(f"{path}: corrupted latency table (checksum mismatch: the rows were changed "
                           f"or damaged)")
    try:
        rows = pd.read_csv(io.StringIO(body), dtype={"key": str, "kind": str, "inputs": str})
    except Exception as e:
        raise LatencyError(f"{path}: corrupted latency table ({_one_line(e)})") from None
    if len(rows) != n_rows or meta.get("rows", n_rows) != n_rows:
        raise LatencyError(f"{path}: corrupted latency table ({len(rows)} rows, end line says {n_rows})")
    missing = [c for c in ("key", "kind", "ms") if c not in rows.columns]
    if missing:
        raise LatencyError(f"{path}: corrupted latency table (no column {', '.join(missing)})")
    if rows["ms"].isna().any() or rows["key"].duplicated().any():
        raise LatencyError(f"{path}: corrupted latency table (empty or duplicated entries)")
    return Table(rows, meta)
