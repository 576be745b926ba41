"""Build a latency table: time every distinct part of a space, then fit how parts combine.

A build has three phases, all journalled line by line to ``<out>.partial`` so that an
interrupted build resumes where it stopped (``build_table`` called again with the same
arguments; other arguments are refused rather than mixed):

1. every part of ``space.all_parts()``, in chunks, timed interleaved (shuffled rounds, each call
   timed alone; see ``measure.time_interleaved``);
2. random networks of the space, timed end to end (interleaved in small groups), on which
   ``model.fit`` chooses and fits how entries combine into a network's latency.

Every chunk and group also times the reference network(s) in its rounds: the machine's speed
drifts by 10-20% over tens of seconds even when idle, so each time is converted to the build's
reference units (``assemble``), and ``Predictor.calibrate`` converts back with the reference's
time in the predicting process.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .measure import (LatencyError, OtherLoad, device_identity, gated, make_inputs, num_threads, speed_ratio,
                      statistic, time_interleaved)
from .model import Sample, fit, res_label
from .predict import build_reference
from .table import Table, shapes_text

MEASURE_DEFAULTS: Dict[str, Any] = {
    "stat": "median",  # statistic of the timed samples of a part or network
    "rounds": 30,  # timed rounds over a chunk of parts (each part timed once per round)
    "warmup": 3,  # untimed rounds first
    "min_seconds": 0.0,  # a chunk runs more rounds until this long
    "chunk": 32,  # parts built and timed together
    "networks": 48,  # random networks timed end to end to fit the combination model (24 left the
    #                  per-kind model losing to one shared factor in leave-one-out on metaformer)
    "net_rounds": 40,  # timed rounds over a group of networks (15 left 30-40 ms networks 17-22%
    #                    apart between repeats on this VM; 40: 1.5% std)
    "net_group": 12,  # networks timed interleaved together, with the reference in every round
    "references": 1,  # reference networks for drift calibration
    "fillers": 2,  # calibration times the reference among this many of the build's networks
    "ref_repeats": 20,  # rounds of a calibration
    "ref_seconds": 1.0,  # ... and at least this long
    "seed": 0,  # networks sampled, round orders
    "max_load": 0.1,  # a chunk timed while other processes used more of the CPU is timed again...
    "max_wait": 120.0,  # ... after waiting (at most this many seconds per chunk) for a calm machine
}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _archs(space: Any, tag: str, n: int, seed: int) -> List[Any]:
    rng = random.Random(f"{tag}:{seed}")
    return [space.sample(rng) for _ in range(n)]


def _what(value: Any, key: str) -> Any:
    """A header field as far as it decides the numbers (how long to wait for calm does not)."""
    if key == "measure" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in ("max_load", "max_wait")}
    return value


class Journal:
    """Append-only JSON lines; the first line is the build's identity."""

    def __init__(self, path: Path, header: Dict[str, Any], restart: bool):
        self.path = path
        self.records: List[Dict[str, Any]] = []
        if path.exists() and not restart:
            lines = path.read_text().splitlines()
            try:
                old = json.loads(lines[0])["header"]
            except (IndexError, ValueError, KeyError, TypeError):
                raise LatencyError(f"{path}: unreadable partial build; delete it or pass --restart") from None
            diff = sorted(k for k in set(old) | set(header) if _what(old.get(k), k) != _what(header.get(k), k))
            if diff:
                raise LatencyError(f"{path} is a partial build with other settings (differs in: "
                                   f"{', '.join(diff)}); delete it or pass --restart")
            for line in lines[1:]:
                try:
                    self.records.append(json.loads(line))
                except ValueError:  # the line being written when the build was killed
                    break
            with open(path, "w") as f:  # rewrite without a torn last line
                f.write(json.dumps({"header": old}) + "\n")
                for r in self.records:
                    f.write(json.dumps(r) + "\n")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                f.write(json.dumps({"header": header}) + "\n")
        self.session = 1 + max((r.get("session", 0) for r in self.records), default=0)

    def add(self, **record: Any) -> None:
        record["session"] = self.session
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def of(self, kind: str) -> List[Dict[str, Any]]:
        return [r for r in self.records if kind in r]


def _callable(m: torch.nn.Module, shapes: Sequence[Sequence[int]], device: str, batch: int, what: str):
    try:
        m = m.to(device).eval()
        xs = make_inputs(shapes, batch, device)
        with torch.inference_mode():
            m(*xs)
    except Exception as e:
        raise LatencyError(f"{what} cannot run ({type(e).__name__}: {e})") from None
    return lambda: m(*xs)


def _timed(calls: List[Any], refs: List[Any], device: str, threads: Optional[int], ms: Dict[str, Any],
           rounds: int, seed: int) -> Tuple[List[List[float]], List[float]]:
    """Samples of ``calls`` (ms) and the reference networks' statistic, timed in the same rounds."""
    with num_threads(threads):
        samples = time_interleaved(calls + refs, rounds, ms["warmup"], device, seed, ms["min_seconds"])
    return samples[:len(calls)], [statistic(s, ms["stat"]) for s in samples[len(calls):]]


def _part_rows(parts: Sequence[Any], refs: List[Any], device: str, threads: Optional[int], batch: int,
               ms: Dict[str, Any], seed: int) -> Tuple[List[Dict[str, Any]], List[float]]:
    calls = [_callable(p.make(), p.inputs, device, batch, f"part {p.key}") for p in parts]
    samples, ref = _timed(calls, refs, device, threads, ms, ms["rounds"], seed)
    rows = []
    for p, s in zip(parts, samples):
        rows.append({"key": p.key, "kind": p.kind, "ms": statistic(s, ms["stat"]),
                     "q20": float(np.percentile(s, 20)), "q80": float(np.percentile(s, 80)),
                     "n": len(s), "inputs": shapes_text(p.inputs)})
    return rows, ref


def build_table(space_name: str, settings: Optional[Dict[str, Any]] = None,
                out: Optional[Union[str, Path]] = None, device: str = "cpu", threads: Optional[int] = None,
                batch: int = 1, restart: bool = False, progress: bool = True,
                **measure: Any) -> Table:
    """Measure a table for ``SPACES[space_name](**settings)`` on ``device``; writes ``out`` if given."""
    from space import SPACES

    unknown = set(measure) - set(MEASURE_DEFAULTS)
    if unknown:
        raise LatencyError(f"unknown measurement setting(s) {sorted(unknown)}; known: {sorted(MEASURE_DEFAULTS)}")
    ms = dict(MEASURE_DEFAULTS, **measure)
    try:
        space = SPACES[space_name](**(settings or {}))
    except (KeyError, TypeError, ValueError) as e:
        raise LatencyError(f"cannot make space {space_name!r} with settings {settings}: {e}") from None
    ident = device_identity(device)
    threads = int(threads) if threads else torch.get_num_threads()
    if batch < 1:
        raise LatencyError("batch must be >= 1")
    header = {"space": space_name, "settings": space.settings(), "device": ident, "threads": threads,
              "batch": int(batch), "dtype": "float32", "torch": torch.__version__, "measure": ms}
    out = Path(out) if out is not None else None
    if out is not None and out.suffix not in (".csv", ".parquet"):
        raise LatencyError(f"{out}: a table file ends in .csv or .parquet")
    jpath = out.with_name(out.name + ".partial") if out is not None else None
    journal = Journal(jpath, header, restart) if jpath is not None else None
    records = journal.records if journal else []
    rec = (journal.add if journal else lambda **r: records.append(dict(r, session=1)))
    session = journal.session if journal else 1

    t_start = time.time()
    parts = list(space.all_parts())
    by_key = {}
    for p in parts:
        by_key.setdefault(p.key, p)
    parts = list(by_key.values())
    refs = [a.to_dict() for a in _archs(space, "reference", ms["references"], ms["seed"])]
    nets = _archs(space, "calibration", ms["networks"], ms["seed"])
    done = {r["part"]["key"] for r in records if "part" in r}
    nets_done = {r["net"]["index"] for r in records if "net" in r}
    todo = [p for p in parts if p.key not in done]

    from tqdm.auto import tqdm
    bar = tqdm(total=len(parts) + len(nets), initial=len(parts) - len(todo) + len(nets_done),
               desc=f"{space_name} on {ident['model']}", unit="part", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    def gate(fn):
        out = gated(fn, ms["max_load"], ms["max_wait"])
        if out[2]:
            bar.set_postfix_str("timed again after other processes' load")
        return out

    load = OtherLoad().__enter__()
    n_chunks = sum(1 for r in records if "chunk" in r)

    def chunk_id() -> str:
        nonlocal n_chunks
        n_chunks += 1
        return f"{session}.{n_chunks}"

    try:
        bar.set_postfix_str("reference")
        ref_calls = []
        for d in refs:
            net, shape = build_reference(d)
            ref_calls.append(_callable(net, [shape], device, batch, "the reference network"))
        rng = random.Random(f"{ms['seed']}:{session}")
        for i in range(0, len(todo), ms["chunk"]):
            chunk = todo[i:i + ms["chunk"]]
            bar.set_postfix_str(f"parts {chunk[0].kind}")
            seed = rng.randrange(1 << 30)
            (rows, ref), share, _ = gate(lambda: _part_rows(chunk, ref_calls, device, threads, batch, ms, seed))
            cid = chunk_id()
            rec(chunk={"id": cid, "ref": ref, "load": share})
            for row in rows:
                rec(part=dict(row, chunk=cid))
            bar.update(len(chunk))
        # parts the space's networks use that all_parts() did not list: a space bug, but not
        # one to stop a build for; they are timed and counted in the metadata.
        have = {r["part"]["key"] for r in records if "part" in r}
        extra: Dict[str, Any] = {}
        for a in nets:
            for p in space.parts(a):
                if p.key not in have and p.key not in extra:
                    extra[p.key] = p
        for i in range(0, len(extra), ms["chunk"]):
            chunk = list(extra.values())[i:i + ms["chunk"]]
            bar.set_postfix_str("parts all_parts() missed")
            seed = rng.randrange(1 << 30)
            (rows, ref), share, _ = gate(lambda: _part_rows(chunk, ref_calls, device, threads, batch, ms, seed))
            cid = chunk_id()
            rec(chunk={"id": cid, "ref": ref, "load": share})
            for row in rows:
                rec(part=dict(row, chunk=cid, extra=True))
        todo_nets = [i for i in range(len(nets)) if i not in nets_done]
        for g in range(0, len(todo_nets), ms["net_group"]):
            idx = todo_nets[g:g + ms["net_group"]]
            bar.set_postfix_str("networks")
            calls = [_callable(space.build(nets[i]), [(1, *nets[i].input_size)], device, batch,
                               f"calibration network {i}") for i in idx]
            seed = rng.randrange(1 << 30)
            (samples, ref), share, _ = gate(lambda: _timed(calls, ref_calls, device, threads, ms,
                                                           ms["net_rounds"], seed))
            cid = chunk_id()
            rec(chunk={"id": cid, "ref": ref, "load": share})
            for i, smp in zip(idx, samples):
                rec(net={"index": i, "ms": statistic(smp, ms["stat"]), "chunk": cid})
            bar.update(len(idx))
    finally:
        bar.close()
        load.__exit__(None, None, None)

    table = assemble(records, header, space, nets, refs)
    table.meta.update(date=_now(), build_seconds=round(time.time() - t_start, 1), sessions=session,
                      other_load=load.share,
                      python=platform.python_version(), numpy=np.__version__)
    if out is not None:
        table.save(out)
        if jpath is not None and jpath.exists():
            jpath.unlink()
    return table


def assemble(records: List[Dict[str, Any]], header: Dict[str, Any], space: Any, nets: Sequence[Any],
             refs: Sequence[Dict[str, Any]]) -> Table:
    """Express every time in the build's reference units, merge sessions, and fit the model.

    Each chunk timed the reference network(s) in its own rounds; a time measured in a chunk
    whose reference ran k times slower than the reference's median over the whole build is
    divided by k, which removes the machine's drift between chunks (and between sessions).
    """
    chunks = {r["chunk"]["id"]: r["chunk"] for r in records if "chunk" in r}
    n_ref = len(refs)
    unit = [float(np.median([c["ref"][j] for c in chunks.values()])) for j in range(n_ref)]

    def factor(cid: str) -> float:
        return 1.0 / speed_ratio(chunks[cid]["ref"], unit)

    rows, extra = {}, 0
    for r in records:
        if "part" in r:
            row = dict(r["part"])
            f = factor(row.pop("chunk"))
            for c in ("ms", "q20", "q80"):
                row[c] = row[c] * f
            extra += bool(row.pop("extra", False))
            rows[row["key"]] = row
    entries = {k: v["ms"] for k, v in rows.items()}
    kinds = {k: v["kind"] for k, v in rows.items()}
    timed = [(r["net"]["index"], r["net"]["ms"] * factor(r["net"]["chunk"])) for r in records if "net" in r]
    model, calib = fit_networks(space, nets, timed, entries, kinds)
    drift = [1 / factor(c) for c in chunks]
    loads = [c.get("load") for c in chunks.values() if c.get("load") is not None]
    meta = dict(header)
    fillers = [nets[i].to_dict() for i in range(min(header["measure"].get("fillers", 0), len(nets)))]
    meta.update(reference={"archs": list(refs), "ms": unit, "fillers": fillers}, model=model.to_dict(),
                calibration={"seed": header["measure"]["seed"], "networks": calib}, extra_parts=extra,
                chunks=len(chunks), drift_range=[round(min(drift), 4), round(max(drift), 4)],
                max_chunk_load=max(loads) if loads else None)
    return Table.from_records(list(rows.values()), meta)


def fit_networks(space: Any, nets: Any, timed: Sequence[Tuple[int, float]], entries: Dict[str, float],
                 kinds: Dict[str, str]) -> Tuple[Any, List[Dict[str, Any]]]:
    """(fitted model, calibration records) from networks ``nets[i]`` timed at ``ms`` (table units)."""
    samples, calib = [], []
    for i, t in timed:
        ps = space.parts(nets[i])
        sums: Dict[str, float] = {}
        res: Dict[str, float] = {}
        for p in ps:
            sums[kinds[p.key]] = sums.get(kinds[p.key], 0.0) + entries[p.key]
            r = res_label(shapes_text(p.inputs))
            res[r] = res.get(r, 0.0) + entries[p.key]
        samples.append(Sample(sums, len(ps), t, res))
        calib.append({"index": i, "ms": round(t, 5), "sum_ms": round(sum(sums.values()), 5), "parts": len(ps)})
    return fit(samples), calib


def table_space(meta: Dict[str, Any]) -> Any:
    """The space a table was built for, with the table's settings."""
    from space import SPACES

    settings = dict(meta.get("settings") or {})
    settings.pop("space", None)  # space.settings() names the space; the constructor does not take it
    return SPACES[meta["space"]](**settings)


def stored_networks(space: Any, meta: Dict[str, Any], entries: Dict[str, float]) -> List[Tuple[int, Any, float]]:
    """(index, arch, ms in table units) of the table's timed networks, regenerated from its seed.

    Stops at the first network whose parts no longer sum to the stored sum: the space changed
    since the build and samples other networks from the same seed.
    """
    stored = sorted((meta.get("calibration") or {}).get("networks") or [], key=lambda n: n["index"])
    if not stored:
        return []
    nets = _archs(space, "calibration", 1 + stored[-1]["index"], meta.get("measure", {}).get("seed", 0))
    out = []
    for n in stored:
        a = nets[n["index"]]
        total = sum(entries.get(p.key, float("nan")) for p in space.parts(a))
        if not abs(total - n["sum_ms"]) <= 1e-3 * max(1.0, n["sum_ms"]):
            break
        out.append((n["index"], a, float(n["ms"])))
    return out
