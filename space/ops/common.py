"""Building blocks shared by the op library, and how ops adapt to ``(C_in, C_out, stride)``.

Several published modules only exist at C_in == C_out and stride 1.  The registry adapts them
the way DARTS' own cells do: a stride-2 input goes through ``FactorizedReduce`` and a channel
change through a 1x1 ``ReLUConvBN`` (``project``), so the adaptation costs what it costs in the
DARTS network and is counted like any other op.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import ATTENTIONS, DW_CONVS, OPS


def drop_path(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Per-sample path dropout (stochastic depth, Huang et al. arXiv 1603.09382), as DARTS and
    timm apply it: in training, each sample's branch is zeroed with probability ``p`` and the
    kept ones scaled by 1 / (1 - p)."""
    if not training or p <= 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty(x.size(0), *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


def linear_rates(rate: float, n: int) -> list:
    """Stochastic depth rising linearly from 0 at the first block to ``rate`` at the last
    (``torch.linspace(0, rate, n)`` in VAN, SwiftFormer and BiFormer)."""
    return [rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


class ReLUConvBN(nn.Sequential):
    """DARTS' ReLU -> Conv -> BN (its preprocessing and projection unit)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """DARTS' stride-2 reduction: two offset 1x1 stride-2 convs, concatenated, then BN.

    DARTS slices ``x[:, :, 1:, 1:]`` and so needs even sizes; padding one zero row/column first
    reads the same pixels for even sizes and also works for odd ones.

    Training reads those pixels (2i+1, 2j+1), zero past the edge, through a stride-2 conv with
    padding 1 less its first output row and column: the same values with no padded, shifted copy
    of the input, which oneDNN copied again to make it contiguous (forward + backward 1.5-2.2x
    faster channels-last at 16-128 channels, batch 64: FactorizedReduce was 2.6% of the DARTS
    supernet's step, most of it those copies).  Inference keeps the official form, which the
    counts and latency tables measured.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out - C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        if fast_forms(self):
            # cropped by a negative pad, not sliced: a slice's gradient comes back plain-contiguous
            odd = F.pad(F.conv2d(x, self.conv_2.weight, None, stride=2, padding=1), (-1, 0, -1, 0))
        else:
            odd = self.conv_2(F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:])
        return self.bn(torch.cat([self.conv_1(x), odd], dim=1))


class Zero(nn.Module):
    """DARTS' ``none``: outputs zeros of the right shape (no arithmetic, so it costs nothing)."""

    def __init__(self, C_out: int, stride: int):
        super().__init__()
        self.C_out, self.stride = C_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        s = self.stride
        return x.new_zeros(b, self.C_out, (h + s - 1) // s, (w + s - 1) // s)


def project(C_in: int, C_out: int, stride: int) -> nn.Module:
    """Identity when shapes already match, else DARTS' reduction / 1x1 projection."""
    if stride == 2:
        return FactorizedReduce(C_in, C_out)
    if stride != 1:
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if C_in != C_out:
        return ReLUConvBN(C_in, C_out, 1)
    return nn.Identity()


class Adapted(nn.Sequential):
    """``project`` followed by a module that needs C_in == C_out and stride 1."""

    def __init__(self, C_in: int, C_out: int, stride: int, body: nn.Module):
        pre = project(C_in, C_out, stride)
        mods = [body] if isinstance(pre, nn.Identity) else [pre, body]
        super().__init__(*mods)


def check_stride(stride: int) -> int:
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    return stride


class ConvAttention(nn.Sequential):
    """ReLU -> k x k conv (stride, C_in -> C_out) -> BN -> attention plug-in: an attention
    module as a candidate op, as DARTS' ReLUConvBN units (``cga`` is k=1, ``cga_3x3`` k=3)."""

    def __init__(self, C_in: int, C_out: int, stride: int, kernel_size: int, attention: nn.Module):
        super().__init__(ReLUConvBN(C_in, C_out, kernel_size, check_stride(stride), kernel_size // 2),
                         attention)


def register_attention(name: str, ctor: Callable[..., nn.Module], *, tags: Iterable[str] = (),
                       op: bool = True, **meta) -> Callable[..., nn.Module]:
    """Register an attention plug-in in ATTENTIONS and, unless ``op=False``, as the candidate
    ops ``name`` (after a 1x1 ReLUConvBN) and ``name_3x3`` (after a 3x3 one)."""
    tags = set(tags)
    ATTENTIONS.register(name, ctor, tags=tags, **meta)
    if op:
        for k, op_name in ((1, name), (3, f"{name}_3x3")):
            def make(C_in: int, C_out: int, stride: int, _k=k, **kw) -> nn.Module:
                return ConvAttention(C_in, C_out, stride, _k, ctor(C_out, **kw))
            make.__doc__ = f"{k}x{k} ReLUConvBN then the {name} attention plug-in."
            OPS.register(op_name, make, tags=tags | {"attention"}, **meta)
    return ctor


class _Forms:
    fast = True  # a class attribute, not a global list: the .py export copies classes as source


@contextlib.contextmanager
def official_forms(on: bool = True) -> Iterator[None]:
    """Within this block (if ``on``), ops that train through a faster equal form
    (``DilatedDWConv``, ``FactorizedReduce``, CGA's pixel attention) train through their official
    form instead: for benchmarks against the official form and for checking the equality."""
    was, _Forms.fast = _Forms.fast, _Forms.fast and not on
    try:
        yield
    finally:
        _Forms.fast = was


def fast_forms(module: nn.Module) -> bool:
    """Whether ``module`` should run its faster equal training form now."""
    return module.training and _Forms.fast


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-D tensor laid out channels-last (and not also plain-contiguous, as 1x1 maps are).
    Training forms keep such inputs channels-last throughout: a plain-contiguous tensor meeting
    a channels-last one makes oneDNN reorder it in every conv after, forward and backward."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _dilated_as_undilated(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], d: int,
                          q: int) -> torch.Tensor:
    """A stride-1 depthwise conv with dilation d and zero padding d*q, computed as one undilated
    conv (padding q) over the d*d sub-grids of x folded into the batch: output pixel (d*u + r,
    d*v + s) only reads input pixels of residue (r, s), so each sub-grid is an ordinary conv."""
    B, C, H, W = x.shape
    Hp, Wp = -(-H // d) * d, -(-W // d) * d
    if (Hp, Wp) != (H, W):  # zero rows/columns past the edge are what the conv's padding reads
        x = F.pad(x, (0, Wp - W, 0, Hp - H))
    h, v = Hp // d, Wp // d
    # folded in channels-last order, (B, H, W, C) -> (B, r, s, h, v, C): one copy each way, and
    # the conv's input and gradient stay channels-last (NCHW order cost two copies and a reorder)
    z = (x.permute(0, 2, 3, 1).reshape(B, h, d, v, d, C).permute(0, 2, 4, 1, 3, 5)
         .reshape(B * d * d, h, v, C).permute(0, 3, 1, 2))
    pad = q
    if min(h, v) < w.shape[-1]:  # oneDNN's backward is slow where the kernel outgrows the map
        z, pad = F.pad(z, (q, q, q, q)), 0  # unless the padding is explicit (LKA at 16x16: 1.2x)
    y = F.conv2d(z.contiguous(memory_format=torch.channels_last), w, b, padding=pad, groups=C)
    y = (y.permute(0, 2, 3, 1).reshape(B, d, d, h, v, C).permute(0, 3, 1, 4, 2, 5)
         .reshape(B, Hp, Wp, C).permute(0, 3, 1, 2))
    return y[:, :, :H, :W]


class DilatedDWConv(nn.Conv2d):
    """A depthwise dilated conv with 'same' zero padding (LKA's 7x7 d3, CFNet's, DARTS'
    ``dil_conv``): an ``nn.Conv2d`` in parameters, state dict, counting and inference, trained
    through an equal undilated form.

    oneDNN on CPU has no fast kernel for dilated depthwise convs: channels-last, forward+backward
    of the LKA op at 16 channels 32x32 ran 3.7x faster, and DARTS' ``dil_conv_5x5`` at stride 2
    4.1x, with the conv computed as an undilated one over the d*d sub-grids folded into the batch,
    or over the one sub-grid a stride-d conv reads (``bench/dilated_conv.py``).  Below 5 pixels
    per sub-grid side the fold stops paying for kernels over 3x3 (LKA at 8x8: 1.2x slower), and
    the plain conv runs.  Inference keeps the official form, which the latency tables timed."""

    def _fast(self) -> bool:
        (k, k2), (d, d2), (p, p2), (s, s2) = self.kernel_size, self.dilation, self.padding, self.stride
        return (fast_forms(self) and d > 1 and (k, d, p, s) == (k2, d2, p2, s2) and p == d * (k // 2)
                and k % 2 == 1 and s in (1, d) and self.groups == self.in_channels == self.out_channels
                and self.padding_mode == "zeros")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast():
            return super().forward(x)
        d, q, k = self.dilation[0], self.kernel_size[0] // 2, self.kernel_size[0]
        if self.stride[0] == d:  # only the sub-grid of residue (0, 0) is read
            z = x[:, :, ::d, ::d].contiguous(memory_format=torch.channels_last)
            y = F.conv2d(z, self.weight, self.bias, padding=q, groups=self.groups)
        elif -(-min(x.shape[-2:]) // d) >= 5 or k <= 3:
            y = _dilated_as_undilated(x, self.weight, self.bias, d, q)
        else:
            return super().forward(x)
        fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        return y.contiguous(memory_format=fmt)


class DWConv(nn.Sequential):
    """The plain depthwise conv of MobileNet blocks (no BN/activation: blocks add their own)."""

    def __init__(self, C: int, kernel_size: int, stride: int, **kw):
        super().__init__(nn.Conv2d(C, C, kernel_size, check_stride(stride), kernel_size // 2,
                                   groups=C, bias=False))


DW_CONVS.register("plain", DWConv)


def dw_kernel(conv: str, kernel_size: int) -> int:
    """The kernel a depthwise variant really uses for a requested one: variants that exist at
    fixed sizes only (registry meta ``kernels=``, e.g. DEConv's 3x3 difference kernels) take
    their nearest supported size, so every (kernel, variant) choice builds."""
    sizes = DW_CONVS.meta(conv).get("kernels")
    if not sizes or kernel_size in sizes:
        return kernel_size
    return min(sizes, key=lambda k: (abs(k - kernel_size), k))


# -- MobileNet-family layers (torchvision's MobileNetV2 and mnext.py agree on them) --------------

def make_divisible(v: float, divisor: int, min_value: Optional[int] = None) -> int:
    """The TF MobileNet rounding shared by mnext.py and torchvision: nearest multiple of
    ``divisor``, at least ``min_value``, never more than 10% below ``v``."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def mobile_init(*modules: nn.Module) -> None:
    """MXNet's / torchvision MobileNetV2's init: conv weights N(0, sqrt(2 / (k*k*out))) (kaiming,
    fan_out), BN weight 1 and bias 0, linear weights N(0, 0.01), biases 0."""
    for root in modules:
        for m in root.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


def dw_bn(C: int, kernel_size: int, stride: int, dw_conv: str = "plain", act: bool = False) -> nn.Sequential:
    """A depthwise conv variant, BN, and ReLU6 if ``act``."""
    conv, bn = DW_CONVS[dw_conv](C, kernel_size, stride), nn.BatchNorm2d(C)
    mobile_init(bn, *([conv] if dw_conv == "plain" else []))  # variants keep their own init
    return nn.Sequential(conv, bn, *([nn.ReLU6()] if act else []))


def conv1x1_bn_act(C_in: int, C_out: int, groups: int = 1) -> nn.Sequential:
    m = nn.Sequential(nn.Conv2d(C_in, C_out, 1, groups=groups, bias=False), nn.BatchNorm2d(C_out), nn.ReLU6())
    mobile_init(m)
    return m
