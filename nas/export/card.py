"""The model card beside an export: what the network is, what it costs, how far its score can be
trusted and how it was made, as card.json (for programs) and card.md (for people)."""
from __future__ import annotations

import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .support import ROLES


def papers(modules: Dict[Tuple[str, str], int]) -> List[Dict[str, Any]]:
    """Each module of the network with the paper and official code its file opens with."""
    out = []
    for (role, name), uses in modules.items():
        reg = ROLES.get(role)
        doc = ""
        if reg is not None and name in reg.names():
            doc = sys.modules[reg.origin(name)].__doc__ or ""
        lines = doc.strip().splitlines()
        head = " ".join(lines[0].split()) if lines else None  # the file's first line names the paper
        top = "\n".join(lines[:8])  # where the house style puts arXiv id and official code
        out.append({"role": role, "module": name, "uses": uses, "paper": head,
                    "arxiv": list(dict.fromkeys(re.findall(r"arXiv:?\s*(\d{4}\.\d{4,5})", top))),
                    "code": list(dict.fromkeys(u.rstrip(".,;)`") for u in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+",
                                                                                   top)))})
    return out


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def markdown(card: Dict[str, Any]) -> str:
    a, c, lat, score = card["arch"], card["costs"], card["latency"], card["score"]
    lines = [f"# Model card: {card['name']}", "",
             f"{a['space']} space, architecture hash `{card['arch_hash']}`, input {tuple(c['input_shape'])}, "
             f"{a.get('num_classes', '?')} classes. Weights: {card['weights']}.", "",
             "## Costs", "",
             f"- parameters: {c['params']:,}",
             f"- FLOPs: {c['flops']:,} ({c['flops_convention']})",
             f"- latency measured now on this device ({lat['device']}): {_ms(lat['measured_ms'])} "
             f"(median of timed runs, batch 1, {lat['threads']} threads)",
             f"- latency predicted by the lookup table: {_ms(lat['predicted_ms'])}"
             + (f" (table `{lat['table']}`, sha256 `{lat['table_sha256'][:12]}`)" if lat.get("table") else
                f" ({lat.get('why_not', 'no table')})"), "",
             "## Accuracy and how far to trust it", ""]
    if score.get("estimator"):
        lines.append(f"- search score: {score['value']:.4g} ({score['estimator']})")
    if score.get("trust"):
        lines.append(f"- ranking quality of that estimator: {score['trust']}")
    for k, label in (("val_acc", "validation accuracy"), ("test_acc", "test accuracy")):
        if score.get(k) is not None:
            lines.append(f"- {label}: {score[k]:.4f}" + (f" ({score['accuracy_source']})" if score.get(
                "accuracy_source") else ""))
    if lines[-1] == "":
        lines.append("- none known: the network was exported untrained")
    lines += ["", "## Plug-in modules", ""]
    if not card["modules"]:
        lines.append(f"None: only the {a['space']} space's plain operations.")
    else:
        lines += ["| role | module | uses | paper | arXiv | official code |", "| --- | --- | --- | --- | --- | --- |"]
    for p in card["modules"]:
        lines.append(f"| {p['role']} | `{p['module']}` | {p['uses']} | {p['paper'] or '-'} | "
                     f"{', '.join(p['arxiv']) or '-'} | {', '.join(p['code']) or '-'} |")
    lines += ["", "## Files", "", f"Each file was run on a random input other than the one it was traced with and "
              f"compared with the toolkit's network (tolerance {card['tolerance']:g}, fp32). "
              f"ONNX opset {card['onnx_opset']}; input shape fixed at {tuple(c['input_shape'])}.", "",
              "| format | file | max abs diff | note |", "| --- | --- | --- | --- |"]
    for o in card["formats"]:
        note = "" if o["ok"] else o["message"]
        diff = "-" if o["max_abs_diff"] is None else f"{o['max_abs_diff']:.1e}"
        lines.append(f"| {o['format']} | {o['file'] or 'not written'} | {diff} | {note.strip('; ') or 'ok'} |")
    lines += ["", "## How it was made", "", f"    {card['command']}", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()), "",
              "## Architecture", "", "```json", card["arch_json"], "```", ""]
    return "\n".join(lines)


def usage(files: Sequence[str]) -> str:
    return ("Load it with plain torch:\n\n"
            "    import importlib.util, torch\n"
            "    spec = importlib.util.spec_from_file_location('model', 'model.py')\n"
            "    model = importlib.util.module_from_spec(spec); spec.loader.exec_module(model)\n"
            "    net = model.build()\n"
            "    net.load_state_dict(torch.load('weights.pt'))\n") if "model.py" in files else ""
