"""Building blocks of the ``metaformer`` space (space/metaformer.py): the MetaFormer block's two
sub-blocks, norms, local layers, stems, heads, necks and the official networks' weight init.
Generic over the registered mixers; the architecture and the plan are in space/metaformer_plan.py."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .ops.adaptformer import Adapter
from .ops.common import drop_path
from .ops.swiftformer import LocalRepresentation
from .registry import CHANNEL_MIXERS, NECKS, TOKEN_MIXERS


# -- building blocks -------------------------------------------------------------------------

class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first map (eps 1e-6 as VAN and BiFormer)."""

    def __init__(self, dim: int):
        super().__init__(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def make_norm(kind: str, dim: int) -> nn.Module:
    return {"bn": lambda: nn.BatchNorm2d(dim), "ln": lambda: LayerNorm2d(dim), "none": nn.Identity}[kind]()


def _scale(dim: int, init: float) -> Optional[nn.Parameter]:
    return nn.Parameter(init * torch.ones(dim, 1, 1)) if init > 0 else None


class TokenSub(nn.Module):
    """x + s * TokenMixer(Norm(x))."""

    def __init__(self, dim: int, mixer: str, kw: Dict[str, int], norm: str, layer_scale: float):
        super().__init__()
        self.norm = make_norm(norm, dim)
        self.mixer = TOKEN_MIXERS[mixer](dim, **kw)
        self.layer_scale = _scale(dim, layer_scale)
        self.drop_prob = 0.0  # stochastic depth of the branch (MetaformerNet.set_drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mixer(self.norm(x))
        y = y if self.layer_scale is None else self.layer_scale * y
        return x + drop_path(y, self.drop_prob, self.training)


class ChannelSub(nn.Module):
    """x + (s * ChannelMixer(Norm(x)) [+ side(x)]): a mixer whose registry entry declares
    ``reads_residual`` (AdaptMLP; its module has ``main`` and ``side``) gets the block input for
    its side path, outside the layer scale (AdaptFormer's order)."""

    def __init__(self, dim: int, mixer: str, mlp_ratio: float, norm: str, layer_scale: float):
        super().__init__()
        self.norm = make_norm(norm, dim)
        self.mixer = CHANNEL_MIXERS[mixer](dim, mlp_ratio)
        self.layer_scale = _scale(dim, layer_scale)
        self.reads_residual = bool(CHANNEL_MIXERS.meta(mixer).get("reads_residual"))
        self.drop_prob = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        y = self.mixer.main(h) if self.reads_residual else self.mixer(h)
        if self.layer_scale is not None:
            y = self.layer_scale * y
        if self.reads_residual:
            y = y + self.mixer.side(x)
        return x + drop_path(y, self.drop_prob, self.training)


class CPE(nn.Module):
    """BiFormer's conditional positional encoding before each block: x + DW3x3(x)."""

    def __init__(self, dim: int):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos_embed(x)


def make_local(kind: str, dim: int) -> nn.Module:
    return {"cpe": lambda: CPE(dim), "swift_local": lambda: LocalRepresentation(dim)}[kind]()


def _stem_strides(stride: int) -> Tuple[int, int]:
    return {4: (2, 2), 2: (2, 1), 1: (1, 1)}[stride]


def make_stem(kind: str, c_in: int, dim: int, stride: int) -> nn.Module:
    if kind == "patch7":  # VAN's OverlapPatchEmbed
        return nn.Sequential(nn.Conv2d(c_in, dim, 7, stride, 3), nn.BatchNorm2d(dim))
    s1, s2 = _stem_strides(stride)
    act = nn.ReLU if kind == "conv3x2_relu" else nn.GELU
    layers = [nn.Conv2d(c_in, dim // 2, 3, s1, 1), nn.BatchNorm2d(dim // 2), act(),
              nn.Conv2d(dim // 2, dim, 3, s2, 1), nn.BatchNorm2d(dim)]
    if kind == "conv3x2_relu":  # SwiftFormer's stem ends with ReLU, BiFormer's with BN
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_downsample(c_in: int, c_out: int) -> nn.Module:
    """3x3 stride-2 conv + BN between stages: VAN, SwiftFormer and BiFormer agree."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1), nn.BatchNorm2d(c_out))


class Head(nn.Module):
    def __init__(self, dim: int, num_classes: int, norm: str, dist: int):
        super().__init__()
        self.norm = make_norm(norm, dim)
        self.head = nn.Linear(dim, num_classes)
        self.dist_head = nn.Linear(dim, num_classes) if dist else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).mean((2, 3))
        y = self.head(x)
        return y if self.dist_head is None else (y + self.dist_head(x)) / 2


# -- necks (multi-scale modules over the four stage outputs) -----------------------------------

def neck_registry():
    """``NECKS`` (a function so that a test can offer a registry of its own)."""
    return NECKS


def available_necks() -> List[str]:
    """"none" and every registered neck that reads at most the four stage outputs."""
    reg = neck_registry()
    return ["none"] + [n for n in reg.names() if reg.meta(n).get("inputs", 4) <= 4]


def neck_inputs(name: str) -> int:
    return neck_registry().meta(name).get("inputs", 4)


class NeckHead(nn.Module):
    """Classifier over a neck's maps: per map the head norm and global mean, concatenated,
    then the linear classifier(s).  Our choice (FPT is a detection neck): every level, not
    only the finest, reaches the classifier."""

    def __init__(self, widths: Sequence[int], num_classes: int, norm: str, dist: int):
        super().__init__()
        self.norms = nn.ModuleList(make_norm(norm, w) for w in widths)
        self.head = nn.Linear(sum(widths), num_classes)
        self.dist_head = nn.Linear(sum(widths), num_classes) if dist else None

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([n(t).mean((2, 3)) for n, t in zip(self.norms, xs)], dim=1)
        y = self.head(x)
        return y if self.dist_head is None else (y + self.dist_head(x)) / 2


class NeckClassifier(nn.Module):
    """The neck over the deepest stage outputs (given as separate tensors, finest first) and
    the classifier over its maps: one part, so that planning never builds a neck."""

    def __init__(self, name: str, channels: Sequence[int], width: int, num_classes: int, norm: str, dist: int):
        super().__init__()
        self.neck = neck_registry()[name](list(channels), width)
        out = self.neck.out_channels
        widths = list(out) if isinstance(out, (list, tuple)) else [int(out)] * len(channels)
        self.head = NeckHead(widths, num_classes, norm, dist)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(list(xs)))


def init_weights(model: nn.Module, style: str) -> None:
    """The official networks' weight init (adapters keep their identity-preserving init)."""
    if style == "torch":
        return
    skip = {id(p) for m in model.modules() if isinstance(m, Adapter) for p in m.parameters()}
    for m in model.modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm)) or id(m.weight) in skip:
            continue
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) or style == "swiftformer":
            nn.init.trunc_normal_(m.weight, std=0.02)
        elif style == "van":  # conv: normal(0, sqrt(2 / fan_out))
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        else:  # biformer leaves its convs at the torch default
            continue
        if m.bias is not None and not isinstance(m, nn.LayerNorm):
            nn.init.zeros_(m.bias)
