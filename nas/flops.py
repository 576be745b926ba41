"""FLOP counting: fvcore, plus handles for the arithmetic fvcore leaves out.

Convention (shown wherever a budget is): **one multiply-add counts as one FLOP**, as fvcore
counts.  "300MFLOPs" therefore means 300M multiply-adds (= 300MMACs).  fvcore already counts
conv, linear, matmul/bmm, einsum, norm layers (1-2 per element), interpolation and adaptive
average pooling.  This module decides, explicitly, every other op a library op may emit:

============================================  ==============================================
op                                            counted as
============================================  ==============================================
scaled_dot_product_attention                  B*H*L*S*(E+Ev): the two matmuls (fvcore: 0)
einsum                                        exact product of index sizes (fvcore rounds
                                              to 4 significant digits and allocates arrays)
mul, div (tensor or scalar operand)           1 per output element: the multiply half of a
                                              MAC, and the whole cost of attention gates
softmax, log_softmax                          1 per element (normalisation, as norm layers)
mean, sum, amax, max/min over a dim,          1 per input element read (as fvcore counts
var, std, norm (F.normalize), topk, logsumexp adaptive_avg_pool2d)
max_pool2d, avg_pool2d                        k*k per output element
adaptive_max_pool2d                           1 per input element
add, sub, activations (relu, gelu, sigmoid,   0: additions and nonlinearities are not
hardtanh, hardswish, silu, tanh, exp...)      multiply-adds (fvcore's convention, on which
                                              published MobileNetV2/ResNet counts rely)
gather, index, cat, pad, roll, permute...     0: data movement
============================================  ==============================================

Any op left that fvcore reports as unsupported is a bug of this table: the op-library tests
assert that no registered op leaves one.  ``analysis`` is the only way the project counts.
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

with warnings.catch_warnings():  # importing fvcore.nn warns about torch.jit.script
    warnings.simplefilter("ignore")
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

log = logging.getLogger(__name__)
CONVENTION = "fvcore convention: 1 FLOP = 1 multiply-add (so 300MFLOPs = 300M MACs)"


def _numel(shape: Optional[Sequence[int]]) -> int:
    return int(math.prod(shape)) if shape else 0


def _out_elems(inputs: List[Any], outputs: List[Any]) -> int:
    return _numel(get_shape(outputs[0]))


def _in_elems(inputs: List[Any], outputs: List[Any]) -> int:
    return _numel(get_shape(inputs[0]))


def _sdpa(inputs: List[Any], outputs: List[Any]) -> int:
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = _numel(q[:-2]) if len(q) > 2 else 1
    L, E = q[-2], q[-1]
    S, Ev = k[-2], v[-1]
    return batch * L * S * (E + Ev)


def _einsum(inputs: List[Any], outputs: List[Any]) -> int:
    eq = inputs[0].toIValue().replace(" ", "")
    shapes = [get_shape(v) for v in inputs[1].node().inputs()]
    lhs = eq.split("->")[0].split(",")
    sizes: Dict[str, int] = {}
    for term, shape in zip(lhs, shapes):
        if "." in term:
            raise NotImplementedError("einsum with ellipsis is not counted; spell the indices")
        for letter, n in zip(term, shape):
            sizes[letter] = n
    if len(lhs) > 2:
        raise NotImplementedError("einsum over more than two operands is not counted")
    return _numel(list(sizes.values()))  # every index combination is one multiply-add


def _int_list(value: Any) -> List[int]:
    v = value.toIValue()
    if v is None or (isinstance(v, (list, tuple)) and any(x is None for x in v)):
        v = [x.toIValue() for x in value.node().inputs()]  # a prim::ListConstruct
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _pool_window(inputs: List[Any], outputs: List[Any]) -> int:
    k = _int_list(inputs[1])
    dims = len(get_shape(outputs[0])) - 2
    k = k * dims if len(k) == 1 else k
    return _out_elems(inputs, outputs) * _numel(k)


FREE = None  # fvcore: a None handle ignores the op explicitly
HANDLES: Dict[str, Optional[Callable]] = {
    "aten::scaled_dot_product_attention": _sdpa,
    "aten::einsum": _einsum,
    **{f"aten::{op}": _out_elems for op in ("mul", "mul_", "div", "div_", "softmax",
                                            "_softmax", "log_softmax")},
    **{f"aten::{op}": _in_elems for op in ("mean", "sum", "amax", "amin", "max", "min", "var",
                                           "std", "var_mean", "std_mean", "linalg_vector_norm",
                                           "norm", "frobenius_norm", "topk", "adaptive_max_pool2d",
                                           "adaptive_max_pool1d", "adaptive_avg_pool1d", "logsumexp")},
    "aten::max_pool2d": _pool_window,
    "aten::avg_pool2d": _pool_window,
    "aten::max_pool1d": _pool_window,
    "aten::avg_pool1d": _pool_window,
    **{f"aten::{op}": FREE for op in (
        "add", "add_", "sub", "sub_", "rsub", "neg", "abs", "sign", "relu6", "leaky_relu",
        "gelu", "sigmoid", "sigmoid_", "hardtanh", "hardtanh_", "hardswish", "hardswish_",
        "hardsigmoid", "silu", "silu_", "tanh", "tanh_", "exp", "sqrt", "rsqrt", "pow",
        "reciprocal", "clamp_min", "clamp_max", "elu", "softplus", "mish", "erf",
        "gather", "index_select", "repeat", "expand_as", "where", "masked_fill_", "scatter",
        "pixel_shuffle", "pixel_unshuffle", "im2col", "col2im", "unfold", "flip",
        "reflection_pad2d", "replication_pad2d", "pad", "view_as", "new_ones",
        "zero_", "fill_", "bernoulli_", "ones_like", "lt", "le", "ne", "logical_not",
        "argmax", "sort", "argsort", "cumsum", "linspace", "meshgrid", "floor_divide",
        "broadcast_tensors", "clone", "movedim", "unflatten", "tile", "channel_shuffle",
        "numpy_T", "mT", "dropout_", "feature_dropout", "alpha_dropout", "masked_select",
        "repeat_interleave", "stack", "split", "chunk", "detach_", "type_as", "to",
        "upsample_nearest1d", "_unsafe_view", "lift_fresh", "alias", "expand")},
}


def analysis(model: nn.Module, inputs: Any) -> FlopCountAnalysis:
    """fvcore's analysis of ``model`` on ``inputs`` with this project's handles.

    Pass the model in eval mode at batch 1 to count a deployed network (train mode counts
    batch-norm differently); ``count`` does that for you.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    fca = FlopCountAnalysis(model, tuple(inputs))
    for op, handle in HANDLES.items():
        fca.set_op_handle(op, handle)
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    fca.tracer_warnings("none")
    return fca


def count(model: nn.Module, input_shapes: Iterable[Sequence[int]]) -> int:
    """FLOPs of ``model`` in eval mode on zero-filled inputs of the given shapes (batch included).

    Warns (never silently) if an op is left that this module has no decision for.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            xs = tuple(torch.zeros(*s) for s in input_shapes)
            fca = analysis(model, xs)
            total = int(fca.total())
            missing = fca.unsupported_ops()
    finally:
        model.train(was_training)
    if missing:
        log.warning("FLOP count of %s leaves ops uncounted: %s", type(model).__name__, dict(missing))
    return total


class PartCounter:
    """Fast count of a network as the sum of cached per-part counts (FLOPs, and parameters).

    A space describes a network as ``Part``s (op instances with their input shapes) whose
    forward composition is the whole network with only free glue (cat, views) between them;
    each distinct part is traced once and reused by every later candidate.  The test suite
    proves ``PartCounter().total(parts) == count(build(arch))`` exactly on random archs.
    """

    def __init__(self) -> None:
        self.cache: Dict[str, Tuple[int, int]] = {}  # part key -> (flops, params)
        self.traced = 0  # parts traced, for the benchmark's hit-rate line

    def _entry(self, p) -> Tuple[int, int]:
        e = self.cache.get(p.key)
        if e is None:
            m = p.make()
            e = (count(m, p.inputs), params(m))
            self.cache[p.key] = e
            self.traced += 1
        return e

    def total(self, parts: Iterable) -> int:
        return sum(self._entry(p)[0] for p in parts)

    def params(self, parts: Iterable) -> int:
        return sum(self._entry(p)[1] for p in parts)


def params(model: nn.Module, trainable_only: bool = True) -> int:
    """Parameter count; trainable only by default (DO-Conv's fixed ``d_diag`` is not a weight)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
