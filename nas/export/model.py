"""One architecture out of the toolkit: every format, each checked, and the model card beside them."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch

import space

from ..flops import count, params
from ..interrupt import requested as stop_requested
from ..results import atomic, load_tensors, versions, write_json
from . import card as cards
from .formats import FORMATS, ONNX_OPSET, TOLERANCE, Outcome, export_one, inputs
from .support import culprits


class ExportFailed(Exception):
    """Bad input to an export (unreadable weights, a state dict of another network): one line."""


def network(arch, weights: Optional[Path] = None, net: Optional[torch.nn.Module] = None, seed: int = 0):
    """The deployed network to export: ``net`` as given, or built (initial weights at ``seed``)
    and filled from ``weights`` (a state dict saved by ``nas.train``)."""
    if net is None:
        with torch.random.fork_rng():  # the caller's random stream goes on as if nothing was built
            torch.manual_seed(seed)
            net = space.build(arch)
        if weights is not None:
            try:
                state = load_tensors(weights)
            except Exception as e:  # noqa: BLE001 - any unreadable file is one line
                raise ExportFailed(f"cannot read weights {weights}: {str(e).splitlines()[0] if str(e) else e}") from None
            if not isinstance(state, dict):
                raise ExportFailed(f"{weights} holds a {type(state).__name__}, not a state dict")
            try:
                net.load_state_dict(state)
            except RuntimeError as e:
                first = [ln.strip() for ln in str(e).splitlines() if ln.strip()][:2]
                raise ExportFailed(f"{weights} is not a state dict of this architecture: {' '.join(first)[:200]}") \
                    from None
    return net.cpu().eval()


def _latency(arch, net, predictor) -> Dict[str, Any]:
    from ..latency import LatencyError, Predictor, device_identity, find_shipped_table, measure_model
    from ..latency.measure import describe

    out: Dict[str, Any] = {"device": describe(device_identity("cpu")), "threads": torch.get_num_threads(),
                           "measured_ms": None, "predicted_ms": None}
    with torch.no_grad(), torch.random.fork_rng():
        out["measured_ms"] = measure_model(net, (1, *arch.input_size), repeats=20, max_seconds=5.0)
    try:
        if predictor is None:
            path = find_shipped_table(arch.space, space.SPACES[arch.space]().settings())
            if path is None:
                out["why_not"] = "no table of this space matches this machine"
                return out
            predictor = Predictor.load(path)
            predictor.calibrate(wait=False)
        parts = space.parts(arch)
        if predictor.missing(parts) and predictor.native:
            predictor.add_missing(parts)  # this machine's table: time what it lacks (milliseconds a part)
        if predictor.missing(parts):
            out["why_not"] = (f"the table lacks {len(predictor.missing(parts))} of this network's parts: "
                              f"`python -m nas.latency build --space {arch.space}` for its settings adds them")
            return out
        out.update(predicted_ms=predictor.predict(parts), table=str(predictor.path),
                   table_sha256=predictor.content_hash)
    except LatencyError as e:
        out["why_not"] = str(e)
    return out


def header(arch, costs: Dict[str, Any], mods) -> str:
    used = ", ".join(f"{r} {n} x{k}" for (r, n), k in mods.items())
    return (f"{arch.space} network {arch.arch_hash}, exported by plug-and-play NAS (space/, nas/).\n\n"
            f"Parameters {costs['params']:,}; FLOPs {costs['flops']:,} ({costs['flops_convention']}) at input "
            f"{tuple(costs['input_shape'])}.\nModules: {used or 'none'}.\n\n"
            "Plain torch only: build() recreates the deployed (folded) network with zero weights, and\n"
            "net.load_state_dict(torch.load('weights.pt')) fills them (a state dict saved by nas.train\n"
            "has the same keys).  The classes below are copied from the toolkit's source.\n\n"
            f"Architecture:\n{arch.to_json()}")


def export_model(arch, out: Path, formats: Sequence[str] = FORMATS, weights: Optional[Path] = None,
                 net: Optional[torch.nn.Module] = None, about: Optional[Dict[str, Any]] = None,
                 predictor=None, command: Optional[str] = None,
                 say: Callable[[str], None] = print) -> Dict[str, Any]:
    """Write ``arch`` in each of ``formats`` into ``out`` with card.json and card.md; returns the card.
    ``about``: what the caller knows of the network's quality (score, estimator, trust, val_acc,
    test_acc, accuracy_source, weights)."""
    about = dict(about or {})
    net = network(arch, weights, net)
    out.mkdir(parents=True, exist_ok=True)
    shape = (1, *arch.input_size)
    costs = {"params": params(net), "flops": count(net, [shape]), "input_shape": list(shape),
             "flops_convention": "fvcore: 1 FLOP = 1 multiply-add"}
    sp = space.SPACES[arch.space]()
    mods = sp.modules(arch)
    example, check = inputs(arch.input_size, 2)[:1], inputs(arch.input_size, 2)[1:]
    outcomes, programs = [], {}  # pt2's program is where ONNX's exporter starts
    for fmt in formats:
        if stop_requested():  # Ctrl-C between two formats: the rest can be exported again later
            outcomes.append(Outcome(fmt, None, False, message="not exported: a stop was asked for"))
            continue
        o: Outcome = export_one(fmt, net, out, example, check, header(arch, costs, mods), programs)
        if not o.ok and o.file is None:
            o.culprits = culprits(list(mods), fmt)
            if o.culprits:
                o.message = "; ".join(f"{c['role']} {c['module']} cannot go to {fmt} ({c['reason']})"
                                      for c in o.culprits)
        say(f"  {o.line()}")
        outcomes.append(o)
    card = {"name": about.pop("name", f"{arch.space}-{arch.arch_hash}"), "arch_hash": arch.arch_hash,
            "arch": arch.to_dict(), "arch_json": json.dumps(arch.to_dict()), "costs": costs,
            "modules": cards.papers(mods), "latency": _latency(arch, net, predictor),
            "weights": about.pop("weights", "trained" if weights else "initial (untrained, seed 0)"),
            "score": {"value": about.pop("score", None), **about}, "formats": [o.to_dict() for o in outcomes],
            "tolerance": TOLERANCE, "onnx_opset": ONNX_OPSET,
            "command": command or " ".join(["python"] + sys.argv), "versions": versions()}
    write_json(out / "card.json", card)
    with atomic(out / "card.md") as tmp:
        tmp.write_text(cards.markdown(card) + "\n" + cards.usage([o.file for o in outcomes if o.ok]))
    return card


def about_from(path: Path) -> Dict[str, Any]:
    """What a result file says of its network: best.json (score, estimator) or nas.train's JSON."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(d, dict):
        return {}
    keep = {k: d[k] for k in ("score", "estimator", "val_acc", "test_acc") if d.get(k) is not None}
    if d.get("test_acc_inherited") is not None:
        keep.update(test_acc=d["test_acc_inherited"], accuracy_source="with supernet-inherited weights")
    return keep


def export_best(folder: Path, best, formats: Sequence[str], trust: Optional[str], predictor=None,
                say: Callable[[str], None] = print) -> Optional[Dict[str, Any]]:
    """The end of a search: best.json's network into <run>/export/ (initial weights: train it with
    ``nas.train best.json --out``, which exports again with the trained ones)."""
    if best is None or not formats:
        return None
    say(f"exporting best.json (trial {best.number}) into {folder / 'export'}/:")
    about = {"score": best.score, "estimator": best.estimator, "trust": trust, "val_acc": best.val_acc,
             "name": f"{folder.name} trial {best.number}"}
    return export_model(best.arch, folder / "export", formats, about=about, predictor=predictor,
                        command=" ".join(["python"] + sys.argv), say=say)
