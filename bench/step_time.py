"""Where a supernet training step's time goes: each candidate's share of a uniform random path.

    python bench/step_time.py [--space darts] [--threads 2] [--batch 64] [--paths 300]
                              [--rounds 3] [--steps 8] [--out FILE]

Samples ``--paths`` random architectures and plans each at the supernet's size (the plan of
space/plan.py: one step per module a path runs), so every module of the bank gets its expected
count per path.  Modules with equal cost keys cost the same, so each distinct key is timed once
(forward + backward of its bank module, training mode, channels-last, at ``--batch``; median of
``--rounds``) and weighted by its count.  The sum is the step's predicted module time; the script
then times ``--steps`` real supernet steps (forward, loss, backward, SGD step) on sampled paths
and prints how much of them the modules explain (the rest: glue, the loss, the optimiser).
Last, the same paths' steps run again under ``torch.profiler`` and the self time of every ATen
kernel is summed by class (convolutions by kind, forward and backward; batch norm; elementwise;
copies and fills, which move memory without arithmetic): what a faster op form can still cut,
and what only a different kernel (oneDNN's, or a fused one) could.
Shares are of the predicted module time; "x sep3" is the candidate's expected time per use over
``sep_conv_3x3``'s at the same slots.  Only spaces whose supernet is the generic
``space.plan.Supernet`` (a bank of steps) can be broken down this way.
"""
from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command, emit  # noqa: E402
from space.plan import Supernet  # noqa: E402
from space.registry import SPACES  # noqa: E402

INPUT = (3, 32, 32)


def fwd_bwd(module: torch.nn.Module, shapes, batch: int, rounds: int, state: dict) -> float:
    """Median seconds of one forward + backward; ``state`` (the supernet's chain state) is
    cleared before each call, so a chained op runs as a chain's start."""
    xs = [torch.randn(batch, *s[1:]).contiguous(memory_format=torch.channels_last).requires_grad_()
          if len(s) == 4 else torch.randn(batch, *s[1:]).requires_grad_() for s in shapes]
    ts = []
    for r in range(rounds + 1):
        state.clear()
        t = time.perf_counter()
        y = module(*xs)
        y.float().pow(2).mean().backward()
        if r:  # the first call warms oneDNN's kernel cache
            ts.append(time.perf_counter() - t)
    module.zero_grad(set_to_none=True)
    return statistics.median(ts)


def _conv_class(name: str, shapes) -> str:
    """'conv dw kxk' / 'conv 1x1' / 'conv dense kxk' (grouped ones count as dense), + fwd/bwd."""
    bwd = name == "aten::convolution_backward"
    x, w = (shapes[1], shapes[2]) if bwd else (shapes[0], shapes[1])
    if not w or len(w) != 4:
        return "conv other"
    kind = ("dw" if w[1] == 1 and x[1] > 1 else "1x1" if w[2:] == [1, 1] else "dense")
    k = "" if kind == "1x1" else f" {w[2]}x{w[3]}"
    return f"conv {kind}{k} {'bwd' if bwd else 'fwd'}"


_CLASSES = {  # ATen kernel -> class; anything unlisted is "other"
    "batch norm": ("aten::native_batch_norm", "aten::native_batch_norm_backward",
                   "aten::_batch_norm_with_update", "aten::batch_norm_backward"),
    "copy, fill, pad (layout)": ("aten::copy_", "aten::fill_", "aten::zero_", "aten::cat",
                                 "aten::reflection_pad2d", "aten::reflection_pad2d_backward",
                                 "aten::constant_pad_nd", "aten::slice_backward", "aten::empty",
                                 "aten::empty_strided", "aten::clone", "aten::contiguous"),
    "pooling": ("aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward",
                "aten::avg_pool2d", "aten::avg_pool2d_backward", "aten::mean", "aten::max",
                "aten::adaptive_avg_pool2d", "aten::_adaptive_avg_pool2d_backward"),
}
_ELEMENTWISE = re.compile(
    r"aten::(clamp|clamp_min|clamp_min_|hardtanh_backward|threshold_backward|relu|relu_|mul|mul_|add|add_|"
    r"sub|div|div_|neg|rsub|pow|sum|where|tanh|exp|sigmoid|sigmoid_backward|gelu|gelu_backward|"
    r"_softmax|_softmax_backward_data|bernoulli_|hardswish)")


def kernel_classes(sup, archs, x, y, opt) -> dict:
    """Self CPU seconds per kernel class over one profiled training step on each path."""
    from torch.profiler import profile

    def step(arch):
        sup.set_active(arch)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(sup(x), y).backward()
        opt.step()

    step(archs[0])  # warm
    with profile(record_shapes=True) as prof:
        for arch in archs:
            step(arch)
    out = defaultdict(float)
    for e in prof.key_averages(group_by_input_shape=True):
        name = e.key
        if name in ("aten::convolution_backward", "aten::mkldnn_convolution"):
            cls = _conv_class(name, e.input_shapes)
        elif _ELEMENTWISE.fullmatch(name):
            cls = "elementwise"
        else:
            cls = next((c for c, names in _CLASSES.items() if name in names), "other")
        out[cls] += e.self_cpu_time_total / 1e6 / len(archs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="darts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--paths", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    space = SPACES[a.space]()
    torch.manual_seed(0)
    sup = space.supernet(10, INPUT)
    if not isinstance(sup, Supernet):
        raise SystemExit(f"the {a.space} space's supernet is its own class, not a bank of steps: "
                         "this breakdown needs space.plan.Supernet")
    sup = sup.to(memory_format=torch.channels_last).train()
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(a.paths)]
    count = defaultdict(float)  # key -> expected uses per path
    rep, label = {}, {}  # key -> (bank path, input shapes); key -> the candidate or fixed module it is
    for arch in archs:
        for s in sup.plan(arch):
            count[s.key] += 1 / a.paths
            rep.setdefault(s.key, (s.bank_path, s.inputs))
            label[s.key] = (s.option or s.kind, "edge" if s.key_kind == "op" else
                            "combine" if s.slot else "fixed")
    secs = {}
    for key, (path, shapes) in rep.items():
        secs[key] = fwd_bwd(sup.get_submodule(path), shapes, a.batch, a.rounds, sup.state)
    per = defaultdict(float)
    uses = defaultdict(float)
    for key, n in count.items():
        per[label[key]] += n * secs[key]
        uses[label[key]] += n
    total = sum(per.values())

    # real steps on sampled paths, for how much of a step the modules explain
    opt = torch.optim.SGD(sup.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(a.batch, *INPUT).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch,))
    steps, ratios = [], []
    for i in range(a.steps + 1):
        sup.set_active(archs[i])
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(sup(x), y).backward()
        opt.step()
        if i:
            steps.append(time.perf_counter() - t)
            ratios.append(sum(secs[s.key] for s in sup.plan(archs[i])) / steps[-1])
    step = statistics.mean(steps)

    lines = [command(), "",
             f"torch {torch.__version__}, {a.threads} threads, {a.space} supernet "
             f"({len(rep)} distinct modules over {a.paths} uniform random paths), batch {a.batch}, channels-last, "
             "forward + backward",
             f"expected module time per step {total:.2f} s; measured step {step:.2f} s "
             f"({a.batch / step:.1f} images/s; mean of {a.steps} paths); the same paths' modules timed alone "
             f"sum to {100 * statistics.median(ratios):.0f}% of their step (median; "
             f"{100 * min(ratios):.0f}-{100 * max(ratios):.0f}% over the paths)",
             "", f"{'module':>16} {'role':>8} {'uses/path':>9} {'s/step':>7} {'share':>6} {'x sep3':>7}"]
    sep = per.get(("sep_conv_3x3", "edge")), uses.get(("sep_conv_3x3", "edge"))
    roles = defaultdict(float)
    for (name, role), t in sorted(per.items(), key=lambda kv: -kv[1]):
        roles[role] += t
        rel = f"{(t / uses[(name, role)]) / (sep[0] / sep[1]):7.2f}" if role == "edge" and sep[0] else f"{'':>7}"
        lines.append(f"{name:>16} {role:>8} {uses[(name, role)]:9.2f} {t:7.3f} {100 * t / total:5.1f}% {rel}")
    lines += ["", "by role: " + ", ".join(f"{r} {100 * t / total:.0f}%" for r, t in
                                          sorted(roles.items(), key=lambda kv: -kv[1]))]
    kc = kernel_classes(sup, archs[1:a.steps + 1], x, y, opt)
    ktot = sum(kc.values())
    lines += ["", f"by ATen kernel class (self CPU time under torch.profiler, the same {a.steps} paths' steps; "
              f"{ktot:.2f} s per step profiled)", f"{'class':>26} {'s/step':>7} {'share':>6}"]
    for cls, t in sorted(kc.items(), key=lambda kv: -kv[1]):
        lines.append(f"{cls:>26} {t:7.3f} {100 * t / ktot:5.1f}%")
    conv = sum(t for c, t in kc.items() if c.startswith("conv"))
    lines += ["", f"convolution kernels {100 * conv / ktot:.0f}%, elementwise and batch norm "
              f"{100 * (kc['elementwise'] + kc['batch norm']) / ktot:.0f}%, layout (copies, fills, pads) "
              f"{100 * kc['copy, fill, pad (layout)'] / ktot:.0f}%"]
    emit(lines, a.out)


if __name__ == "__main__":
    main()
