"""``python -m nas.export ARCH.json [--format py,torchscript,pt2,onnx] [--weights W.pt] [--out DIR]``

Writes the deployed network of an architecture (archs/<trial>.json, best.json or a nas.train
result) in each format, checks each against the toolkit's own output, and writes card.md and
card.json beside them.  A format that fails says why in one line; the others still go out.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import space

from ..cli import OneLineParser, _csv
from .formats import FORMATS, TOLERANCE
from .model import ExportFailed, about_from, export_model

def main(argv: Optional[List[str]] = None) -> int:
    p = OneLineParser(prog="python -m nas.export", description=__doc__.split("\n\n")[1])
    p.add_argument("arch", nargs="?", help="architecture JSON (archs/<trial>.json, best.json, a nas.train result)")
    p.add_argument("--format", type=_csv, default=list(FORMATS), help=f"comma-separated, of {', '.join(FORMATS)} "
                   "(default: all)")
    p.add_argument("--weights", default=None, help="state dict saved by nas.train (default: beside a nas.train "
                   "result of the same name, else the initial weights)")
    p.add_argument("--out", default=None, help="folder (default: export/ beside ARCH.json)")
    p.add_argument("--table", action="store_true", help="print which registered module exports to which format, "
                   "as the README's table, and exit")
    a = p.parse_args(argv)
    if a.table:
        from .support import markdown_table
        print(markdown_table(), end="")
        return 0
    if a.arch is None:
        p.error("the architecture JSON is required")
    unknown = [f for f in a.format if f not in FORMATS]
    if unknown or not a.format:
        p.error(f"unknown format {', '.join(unknown) or '(none)'}; known: {', '.join(FORMATS)}")
    src = Path(a.arch)
    try:
        arch = space.load_arch(src)
    except (space.ArchError, space.UnknownName) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    weights = Path(a.weights) if a.weights else None
    if weights is None and src.with_suffix(".pt").is_file():  # nas.train --out writes X.json and X.pt
        weights = src.with_suffix(".pt")
    if weights is not None and not weights.is_file():
        print(f"{p.prog}: error: --weights {weights}: no such file", file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else src.parent / "export"
    if out.exists() and not out.is_dir():
        print(f"{p.prog}: error: --out {out} is a file; name a folder", file=sys.stderr)
        return 2
    print(f"exporting {arch.space} architecture {arch.arch_hash} into {out}/ (checked to {TOLERANCE:g}):")
    try:
        card = export_model(arch, out, a.format, weights=weights, about=about_from(src),
                            command=" ".join(["python -m nas.export"] + list(sys.argv[1:] if argv is None else argv)))
    except ExportFailed as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{p.prog}: error: cannot write into {out}: {e.strerror}", file=sys.stderr)
        return 2
    failed = [o for o in card["formats"] if not o["ok"]]
    print(f"model card: {out / 'card.md'}" + (f"; {len(failed)} of {len(card['formats'])} formats failed"
                                                if failed else ""))
    return 1 if len(failed) == len(card["formats"]) else 0


if __name__ == "__main__":
    sys.exit(main())
