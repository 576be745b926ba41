"""The four formats a deployed network leaves in, each checked right after it is written.

A check runs the written file (TorchScript and torch.export reloaded, ONNX through onnxruntime,
the .py in a fresh interpreter that cannot import this toolkit) on a random input other than the
one it was traced with, and compares with the toolkit's own network: max abs difference, passed
below ``TOLERANCE`` in fp32.  The input shape is fixed at batch 1 and the architecture's size.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..results import atomic
from . import FORMATS  # re-exported: the formats, in the order they are written
from .pycode import ExportError, python_source
FILES = {"py": "model.py", "torchscript": "model.torchscript.pt", "pt2": "model.pt2", "onnx": "model.onnx"}
WEIGHTS = "weights.pt"  # the state dict the .py file loads (nas.train's, or the initial weights)
ONNX_OPSET = 18  # the dynamo exporter's default in torch 2.13; onnxruntime >= 1.14 runs it
TOLERANCE = 1e-4  # max abs difference to the toolkit's output, fp32
ONNX_EXTRA = 'pip install -e ".[onnx]"'


@dataclass
class Outcome:
    format: str
    file: Optional[str]
    ok: bool
    max_abs_diff: Optional[float] = None
    message: str = ""
    seconds: float = 0.0
    culprits: List[Dict[str, str]] = field(default_factory=list)  # ops that cannot go to this format, and why

    def line(self) -> str:
        if self.ok:
            return f"{self.format}: {self.file} (max abs diff {self.max_abs_diff:.1e} <= {TOLERANCE:g}, {self.seconds:.1f} s)"
        return f"{self.format}: not exported: {self.message}"

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warn about torchvision's absence: keep the run's output readable."""
    before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # torch.export logs the whole graph when it gives up
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(before)


def _one_line(e: BaseException) -> str:
    """The root cause's first sentence: exporters wrap the error that names the op in long advice."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if ln.strip()]
    text = re.split(r"(?<=[.:])\s+\(", lines[0])[0] if lines else ""  # drop "(unhinted: ...)" asides
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _as_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        return torch.cat([torch.as_tensor(o).flatten() for o in out])
    return torch.as_tensor(out).flatten()


# -- writing -------------------------------------------------------------------------------------

def write(fmt: str, net: nn.Module, example: Sequence[torch.Tensor], path: Path, header: str = "",
          programs: Optional[Dict[int, Any]] = None) -> None:
    """Write ``net`` (eval mode) in ``fmt`` to ``path``, atomically; raises on failure.  ``programs``
    keeps the torch.export program of each network (by id) between formats: ONNX's exporter starts
    from one, so exporting pt2 first saves ONNX that step."""
    programs = {} if programs is None else programs
    with atomic(path) as tmp, _quiet(), torch.no_grad():
        if fmt == "py":
            tmp.write_text(python_source(net, header or "A network exported by plug-and-play NAS.",
                                         tuple(example[0].shape[1:]) if len(example) == 1 else None))
            with atomic(path.with_name(WEIGHTS)) as wtmp:
                torch.save(net.state_dict(), wtmp)
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(net, tuple(example), check_trace=False), str(tmp))
        elif fmt == "pt2":
            programs[id(net)] = torch.export.export(net, tuple(example))
            torch.export.save(programs[id(net)], str(tmp))
        elif fmt == "onnx":
            _need_onnx()
            names = [f"input{i}" if len(example) > 1 else "input" for i in range(len(example))]
            torch.onnx.export(programs.get(id(net), net), tuple(example), str(tmp), dynamo=True,
                              opset_version=ONNX_OPSET, input_names=names, output_names=["output"],
                              external_data=False)
        else:
            raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


def _need_onnx() -> None:
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if not _importable(m)]
    if missing:
        raise ExportError(f"needs {', '.join(missing)}: {ONNX_EXTRA}")


def _importable(mod: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(mod) is not None


# -- running what was written ------------------------------------------------------------------

_FRESH = r"""
import importlib.util, sys, torch
class _NoToolkit:  # the exported file must run where this toolkit is not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("space", "nas"):
            raise ImportError(f"the exported file imported {name}, which a user of it would not have")
sys.meta_path.insert(0, _NoToolkit())
for i, (model, weights, inputs, out) in enumerate(torch.load(sys.argv[1], weights_only=True)):
    try:
        spec = importlib.util.spec_from_file_location(f"exported_model_{i}", model)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        net = mod.build()
        net.load_state_dict(torch.load(weights, weights_only=True))
        with torch.no_grad():
            torch.save(net(*torch.load(inputs, weights_only=True)), out)
    except Exception as e:
        torch.save(f"{type(e).__name__}: {e}", out)
"""


def run_py(jobs: Sequence[Tuple[Path, Sequence[torch.Tensor]]]) -> List[Any]:
    """Outputs of each .py file on its inputs, all in one fresh interpreter that cannot import the
    toolkit (a str where one failed): a user's interpreter, without a process start per file."""
    with tempfile.TemporaryDirectory() as d:
        specs = []
        for i, (path, xs) in enumerate(jobs):
            torch.save(list(xs), Path(d) / f"x{i}.pt")
            specs.append((str(path), str(path.with_name(WEIGHTS)), str(Path(d) / f"x{i}.pt"), str(Path(d) / f"y{i}.pt")))
        torch.save(specs, Path(d) / "jobs.pt")
        r = subprocess.run([sys.executable, "-I", "-B", "-c", _FRESH, str(Path(d) / "jobs.pt")], capture_output=True,
                           text=True, timeout=1200, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        if r.returncode:
            tail = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
            raise ExportError(f"a fresh interpreter failed: {tail[-1] if tail else r.returncode}")
        outs = [torch.load(s[3], weights_only=True) for s in specs]
    return [f"the file fails in a fresh interpreter: {o}" if isinstance(o, str) else o for o in outs]


def run(fmt: str, path: Path, xs: Sequence[torch.Tensor]) -> Any:
    """Outputs of the written file on ``xs``."""
    with torch.no_grad(), _quiet():
        if fmt == "torchscript":
            return torch.jit.load(str(path))(*xs)
        if fmt == "pt2":
            return torch.export.load(str(path)).module()(*xs)
        if fmt == "onnx":
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            outs = sess.run(None, {i.name: x.numpy() for i, x in zip(sess.get_inputs(), xs)})
            return [torch.from_numpy(o) for o in outs]
    return run_py([(path, xs)])[0]


def export_many(fmt: str, items: Sequence[Tuple[nn.Module, Path, Sequence[torch.Tensor], Sequence[torch.Tensor], str]],
                programs: Optional[Dict[int, Any]] = None) -> List[Outcome]:
    """``export_one`` for each (net, folder, example, check input, header); the .py files are all
    checked in one fresh interpreter."""
    written: List[Any] = []
    for net, folder, ex, check, header in items:
        path, t0 = folder / FILES[fmt], time.time()
        try:
            write(fmt, net, ex, path, header, programs)
            with torch.no_grad():
                want = _as_tensor(net(*check))
            written.append((path, want, time.time() - t0))
        except Exception as e:  # noqa: BLE001 - an exporter's failure is reported, the other formats go on
            written.append(Outcome(fmt, None, False, message=_one_line(e), seconds=time.time() - t0))
    todo = [(i, w[0], items[i][3]) for i, w in enumerate(written) if not isinstance(w, Outcome)]
    if fmt == "py" and todo:
        t0 = time.time()
        try:
            got = run_py([(p, xs) for _, p, xs in todo])
        except ExportError as e:
            got = [str(e)] * len(todo)
        runs = {i: (g, (time.time() - t0) / len(todo)) for (i, _, _), g in zip(todo, got)}
    else:
        runs = {}
        for i, p, xs in todo:
            t0 = time.time()
            try:
                runs[i] = (run(fmt, p, xs), time.time() - t0)
            except Exception as e:  # noqa: BLE001
                runs[i] = (_one_line(e), time.time() - t0)
    out = []
    for i, w in enumerate(written):
        if isinstance(w, Outcome):
            out.append(w)
            continue
        path, want, secs = w
        got, run_s = runs[i]
        if isinstance(got, str):
            _remove(fmt, path)
            out.append(Outcome(fmt, None, False, message=got, seconds=secs + run_s))
            continue
        got = _as_tensor(got)
        diff = float((got.float() - want.float()).abs().max()) if got.shape == want.shape else float("inf")
        ok = diff <= TOLERANCE
        out.append(Outcome(fmt, path.name, ok, diff, "" if ok else f"outputs differ by {diff:.2e} (> {TOLERANCE:g})",
                           secs + run_s))
    return out


def export_one(fmt: str, net: nn.Module, folder: Path, example: Sequence[torch.Tensor],
               check: Sequence[torch.Tensor], header: str = "", programs: Optional[Dict[int, Any]] = None) -> Outcome:
    """Write one format into ``folder`` and check it; any failure is an Outcome, never an exception."""
    return export_many(fmt, [(net, folder, example, check, header)], programs)[0]


def _remove(fmt: str, path: Path) -> None:
    for stale in (path, path.with_name(WEIGHTS) if fmt == "py" else None):
        if stale is not None and stale.exists():
            stale.unlink()


def inputs(input_size: Sequence[int], n: int = 1, seed: int = 0) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, *input_size, generator=g) for _ in range(n)]
