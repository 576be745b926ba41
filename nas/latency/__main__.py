"""``python -m nas.latency build|refit|validate|show``: build, refit, check and inspect latency tables.

Errors (a missing, truncated or corrupted table, a foreign device, bad settings) print one line
and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .local import table_name as default_table_name  # one naming for shipped and cached tables
from .measure import LatencyError


def _settings(text: Optional[str]) -> Dict[str, Any]:
    if not text:
        return {}
    src = Path(text).read_text() if not text.lstrip().startswith("{") and Path(text).exists() else text
    try:
        d = json.loads(src)
    except ValueError:
        raise LatencyError(f"--settings takes a JSON object or a JSON file, got {text!r}") from None
    if not isinstance(d, dict):
        raise LatencyError("--settings must be a JSON object")
    d.pop("space", None)  # space.settings() names the space; the constructor does not take it
    return d




def _build(a: argparse.Namespace) -> int:
    import torch
    from . import TABLES
    from .build import MEASURE_DEFAULTS, build_table
    from .validate import LOAD_WARNING

    threads = a.threads or torch.get_num_threads()
    out = Path(a.out) if a.out else TABLES / default_table_name(a.space, a.device, threads, a.batch)
    measure = {k: getattr(a, k) for k in MEASURE_DEFAULTS if getattr(a, k, None) is not None}
    table = build_table(a.space, _settings(a.settings), out, a.device, threads, a.batch,
                        restart=a.restart, progress=not a.quiet, **measure)
    m = table.meta["model"]
    cv = m.get("cv", {}).get(m["name"], {})
    print(f"wrote {out}: {len(table)} parts, reference {table.meta['reference']['ms'][0]:.3f} ms, model "
          f"{m['name']} (factor {m['factor']:.3f}, overhead {m['overhead_ms']:.3f} ms"
          + (f", leave-one-out RMSPE {100 * cv['rmspe']:.1f}%, within 10% {100 * cv['within10']:.0f}%" if cv else "")
          + f"), {table.meta['build_seconds']:.0f} s")
    load = table.meta.get("max_chunk_load")
    if load is not None and load > max(LOAD_WARNING, table.meta["measure"]["max_load"]):
        print(f"warning: other processes used up to {100 * load:.0f}% of the CPU during the build; "
              f"rebuild on an idle machine (--restart) before shipping this table", file=sys.stderr)
    return 0


def _validate_processes(a: argparse.Namespace) -> int:
    """``--processes N``: the validation in N fresh processes, ``--gap`` s apart, then combined."""
    from .interval import INTERVALS, record
    from .processes import combine, format_combined, run_processes

    if not a.out:
        raise LatencyError("--processes needs --out (a text report; each process's rows go beside it)")
    out = Path(a.out)
    keep = ["--samples", str(a.samples), "--seed", str(a.seed), "--anchors", str(a.anchors)]
    for flag, v in (("--space", a.space), ("--settings", a.settings), ("--group", a.group), ("--rounds", a.rounds),
                    ("--max-load", a.max_load), ("--max-wait", a.max_wait)):
        keep += [flag, str(v)] if v is not None else []
    files = run_processes(a.table, keep + (["--force"] if a.force else []), a.processes, a.gap,
                          out.with_name(out.stem + ".processes"))
    rows, summary = combine(files)
    text = format_combined(summary)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = f"$ {a.command_line}\n\n" if a.command_line else ""
    out.write_text(head + text + "\n\n" + json.dumps(dict(summary, command=a.command_line), indent=2) + "\n")
    print(f"wrote {out}")
    if record(summary, str(out)):  # a shipped table's searches now quote this interval
        print(f"its 90% interval is now the one searches with {Path(a.table).name} report ({INTERVALS})")
    return 0


def _validate(a: argparse.Namespace) -> int:
    if a.processes > 1:
        return _validate_processes(a)
    from space import SPACES
    from .predict import Predictor
    from .validate import format_report, validate, write_report

    p = Predictor.load(a.table, force=a.force)
    space_name = a.space or p.meta.get("space")
    if space_name != p.meta.get("space"):
        raise LatencyError(f"{a.table} was built for space {p.meta.get('space')!r}, not {space_name!r}")
    settings = _settings(a.settings) if a.settings else dict(p.meta.get("settings") or {})
    settings.pop("space", None)
    try:
        space = SPACES[space_name](**settings)
    except (KeyError, TypeError, ValueError) as e:
        raise LatencyError(f"cannot make space {space_name!r} with settings {settings}: {e}") from None
    df, summary = validate(p, space, a.samples, a.seed, a.group, a.rounds, progress=not a.quiet, max_load=a.max_load,
                           anchors=a.anchors,
                           max_wait=a.max_wait)
    print(format_report(df, summary))
    if a.out:
        print(f"wrote {write_report(df, summary, a.out, command=a.command_line)}")
    return 0


def _refit(a: argparse.Namespace) -> int:
    from .refit import refit_table

    t = refit_table(a.table, a.networks, a.rounds, a.group, a.out, progress=not a.quiet, fit_only=a.fit_only,
                    anchors=a.anchors)
    m = t.meta["model"]
    cv = m.get("cv", {}).get(m["name"], {})
    print(f"wrote {a.out or a.table}: model {m['name']} over {len(t.meta['calibration']['networks'])} networks"
          + (f", leave-one-out RMSPE {100 * cv['rmspe']:.1f}%, within 10% {100 * cv['within10']:.0f}%" if cv else "")
          + (f", {t.meta['refit']['seconds']:.0f} s" if not a.fit_only else ", fitted on the stored times"))
    return 0


def _show(a: argparse.Namespace) -> int:
    from .measure import describe
    from .table import load, sha256_file

    t = load(a.table)
    m = t.meta
    ref = m.get("reference") or {}
    model = m.get("model") or {}
    cv = model.get("cv") or {}
    print(f"table     {a.table} (sha256 {sha256_file(a.table)[:16]}...)")
    print(f"space     {m.get('space')} {json.dumps(m.get('settings'))}")
    print(f"device    {describe(m.get('device', {}))}, {m.get('threads')} threads, batch {m.get('batch')}, "
          f"{m.get('dtype')}, torch {m.get('torch')}")
    print(f"built     {m.get('date')} in {m.get('build_seconds')} s, {m.get('sessions')} session(s), "
          f"{m.get('chunks')} chunks, speed range {m.get('drift_range')}, others' load up to "
          f"{m.get('max_chunk_load')}")
    print(f"reference {', '.join(f'{v:.3f}' for v in ref.get('ms') or [])} ms "
          f"({len(ref.get('archs') or [])} network(s), {len(ref.get('fillers') or [])} fillers)")
    print(f"model     {model.get('name', 'sum')}: factor {model.get('factor', 1.0):.4f}, overhead "
          f"{model.get('overhead_ms', 0.0):.3f} ms, per part {model.get('per_part_ms', 0.0):.4f} ms"
          + (f", {len(model.get('kind_factor') or {})} kind factors" if model.get("kind_factor") else ""))
    for name, v in cv.items():
        if isinstance(v, dict):
            print(f"          leave-one-out over {cv.get('networks')} networks, {name:14s} RMSPE "
                  f"{100 * v['rmspe']:5.1f}%  within 10% {100 * v['within10']:5.1f}%")
    print(f"entries   {len(t)} parts, {t.rows['kind'].nunique()} kinds; largest:")
    top = t.rows.sort_values("ms", ascending=False).head(a.top)
    print(top[["key", "kind", "ms", "q20", "q80"]].to_string(index=False))
    return 0


def _command_line(argv: Optional[List[str]] = None) -> str:
    import shlex
    threads = os.environ.get("OMP_NUM_THREADS")
    env = f"OMP_NUM_THREADS={threads} " if threads else ""
    return env + "python -m nas.latency " + " ".join(shlex.quote(v) for v in (sys.argv[1:] if argv is None else argv))


def _check_args(a: argparse.Namespace) -> None:
    """Counts and limits refused before any timing or any file (one line, exit 2)."""
    from ..checks import check_numbers

    at_least = {"threads": 1, "batch": 1, "networks": 1, "rounds": 1, "group": 1, "samples": 1, "top": 1,
                "anchors": 0, "warmup": 0, "chunk": 1, "net_rounds": 1, "net_group": 1, "references": 1,
                "fillers": 0, "seed": 0, "min_seconds": 0, "max_wait": 0}
    checks = [(k, f"--{k.replace('_', '-')}", lambda v, n=n: v is None or (v >= n and v == v and v != float("inf")),
               f"a number >= {n}") for k, n in at_least.items() if hasattr(a, k)]
    if hasattr(a, "max_load"):
        checks.append(("max_load", "--max-load", lambda v: v is None or 0 < v <= 1, "a fraction in (0, 1]"))
    try:
        check_numbers(a, checks)
    except ValueError as e:
        raise LatencyError(str(e)) from None


def main(argv: Optional[List[str]] = None) -> int:
    from .build import MEASURE_DEFAULTS

    from ..cli import OneLineParser

    ap = OneLineParser(prog="python -m nas.latency", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="measure every part of a space on this machine")
    b.add_argument("--space", required=True)
    b.add_argument("--settings", help="space settings: a JSON object or a JSON file (config.json works)")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    b.add_argument("--threads", type=int, help="intra-op threads (default: torch's current count)")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--out", help="table path, .csv or .parquet (default: nas/latency/tables/<name>.csv)")
    b.add_argument("--restart", action="store_true", help="discard a partial build instead of resuming it")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    for k, v in MEASURE_DEFAULTS.items():
        b.add_argument(f"--{k.replace('_', '-')}", dest=k, type=type(v), help=f"default {v}")
    r = sub.add_parser("refit", help="time the table's networks again (more of them) and refit its model")
    r.add_argument("table")
    r.add_argument("--networks", type=int, help="networks to time (default: the table's)")
    r.add_argument("--rounds", type=int, help="timed rounds per group (default: the table's)")
    r.add_argument("--group", type=int, help="networks timed together (default: the table's)")
    r.add_argument("--out", help="write here instead of over the table")
    r.add_argument("--anchors", type=int, default=1, help="networks of known time (the reference, then "
                   "networks the table timed) read each group's speed")
    r.add_argument("--fit-only", action="store_true", help="time nothing: fit the model again on the stored "
                   "networks' times")
    r.add_argument("--quiet", action="store_true")
    v = sub.add_parser("validate", help="predicted vs measured latency of random networks")
    v.add_argument("table")
    v.add_argument("--space", help="default: the table's space (with the table's settings)")
    v.add_argument("--settings", help="space settings (JSON object or file); default: the table's")
    v.add_argument("--samples", type=int, default=50)
    v.add_argument("--seed", type=int, default=1)
    v.add_argument("--group", type=int, help="networks timed together with the reference (default: the build's)")
    v.add_argument("--rounds", type=int, help="timed rounds per group (default: the build's, at least 40)")
    v.add_argument("--anchors", type=int, default=8, help="networks of known time timed in every group to "
                   "read the machine's speed (the reference, then the build's networks)")
    v.add_argument("--out", help="write the report: .csv (rows + .summary.json) or text")
    v.add_argument("--force", action="store_true", help="use a table measured on another device")
    v.add_argument("--max-load", type=float, help="time a group again if other processes used more of "
                   "the CPU meanwhile (default: the table's build setting)")
    v.add_argument("--max-wait", type=float, help="seconds to wait for calm per group (default: the table's)")
    v.add_argument("--processes", type=int, default=1, help="validate in this many separate processes, --gap s "
                   "apart, and report the spread and the machine's noise floor (resumable; needs --out)")
    v.add_argument("--gap", type=float, default=120.0, help="seconds between the processes (default 120)")
    v.add_argument("--quiet", action="store_true")
    s = sub.add_parser("show", help="print a table's metadata and its largest entries")
    s.add_argument("table")
    s.add_argument("--top", type=int, default=15)
    a = ap.parse_args(argv)
    a.command_line = _command_line(argv)
    try:
        _check_args(a)
        return {"build": _build, "refit": _refit, "validate": _validate, "show": _show}[a.cmd](a)
    except LatencyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:  # an unknown space or op name (the registry's message names the known ones)
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user named that cannot be read or written
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
