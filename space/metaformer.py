"""The ``metaformer`` space: four-stage hierarchical networks of token mixer + channel mixer blocks.

MetaFormer (Yu et al., arXiv 2111.11418) abstracts a transformer block as
``x + TokenMixer(Norm(x))`` then ``x + ChannelMixer(Norm(x))``; VAN (arXiv 2202.09741),
SwiftFormer (arXiv 2303.15446) and BiFormer (arXiv 2303.08810) are all instances of it, with
different stems, norms, layer scales and positional convs.  An architecture names, per stage,
its token mixer (``TOKEN_MIXERS``), channel mixer (``CHANNEL_MIXERS``), depth, width and MLP
ratio, and once for the network the block style (fields below), so the published models are
data here (``VAN_B0``, ``SWIFTFORMER_XS``, ``BIFORMER_T``).

Network (all channels first): stem (stride ``stem_stride``) -> stage 1 -> [3x3 s2 conv + BN ->
stage i] x 3 -> optional neck over the four stage outputs -> head.  A stage is
``conv_blocks`` SwiftFormer ConvEncoders followed by ``depth - conv_blocks`` mixer blocks:
    x = Local(x)                                  none | cpe (x + DW3x3(x), BiFormer) |
                                                  swift_local (SwiftFormer's local representation)
    x = x + s1 * TokenMixer(NormT(x))             s = layer scale (init ``layer_scale``; 0: none)
    x = x + (s2 * ChannelMixer(NormC(x)) [+ Adapter(x)])
then an optional per-stage norm (VAN's LayerNorm).  Head: optional norm, global mean, linear
(``dist_head=1``: SwiftFormer's second, distillation classifier, averaged with the first, as
the official network returns at inference; this toolkit trains without a teacher, so the
average is returned in training too).  The published SwiftFormer-XS count (3.475M) includes
that head, so the preset has it (3.254M without: ``dist_head=0``).

Neck (``neck``, ``neck_width``): a ``NECKS`` entry of ``space.ops.fpt`` (``fpt_neck``, offered
by default when registered; any other registered neck by the ``necks`` setting) reads the
deepest stage outputs it asks for (registry meta ``inputs``), finest first.  FPT is a detection
neck; to classify, the head takes every output map (head norm, global mean), concatenates
them and applies the linear classifier(s) (our choice).  Neck and classifier are one part.

Block styles (``STYLES``), from the official code:
  van          patch7 stem (7x7 s4 + BN), BN pre-norms, layer scale 1e-2, LayerNorm after each
               stage, VAN's weight init.  VAN's MLP is ``mlp_dw`` (DW3x3 inside).
  swiftformer  two conv3x3-s2 + BN + ReLU stem, ConvEncoders then one EAA encoder per stage
               (``conv_blocks = depth - 1``), local representation, no norm before the token
               mixer, BN before the MLP (SwiftFormer's Mlp starts with BN), layer scale 1e-5,
               BN before the head, distillation head, truncated-normal init.
  biformer     conv3x3-s2 + BN + GELU + conv3x3-s2 + BN stem, CPE (DW3x3) before each block,
               LayerNorm (eps 1e-6) pre-norms, no layer scale, BN before the head; ``bra`` with
               n_win 7 and topk 1/4/16 per stage and full attention (topk -2) in the last.

The search fixes the style (a space setting) and searches per stage the two mixers, depth,
width and MLP ratio, and the neck.  ``bra``'s keyword ints live in the arch (``mixer_kw``):
n_win is the largest divisor of the stage resolution <= 7 (7 at 224: BiFormer's), and the
per-stage topk (BiFormer-T's 1, 4, 16, -2) is scaled by regions/49 where fewer regions exist.

Supernet (SPOS, space/metaformer_supernet.py): every block position of a stage holds one
instance of every candidate token sub-block and channel sub-block at every width; depth is a
prefix of the positions.  It is narrower than the deployed network: each width option maps to a
proportional supernet width (``supernet_widths`` is the widest option's, per stage), and the
narrower widths run on the leading channels of the widest's weights (space/sliced.py).  It runs
at the data's resolution: the stem stride drops from 4 to 2 or 1 so that the last stage keeps
>= 4x4 (32x32 CIFAR: stem stride 1, stages at 32/16/8/4), and ``bra``'s n_win/topk follow the
rule above at those resolutions.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .arch import ArchBase, ArchError
from .base import Part, SearchSpace, part_key, split_names
from .ops import deploy as deploy_ops
from .ops.adaptformer import Adapter
from .ops.common import drop_path, linear_rates
from .ops.swiftformer import ConvEncoder, LocalRepresentation
from .registries import CHANNEL_MIXERS, SPACES, TOKEN_MIXERS

STEMS = ("patch7", "conv3x2_relu", "conv3x2_gelu")
NORMS = ("bn", "ln", "none")
LOCALS = ("none", "cpe", "swift_local")
INITS = ("torch", "van", "swiftformer", "biformer")
BRA_TOPKS = (1, 4, 16, -2)  # BiFormer-T, per stage; -2: full attention + LePE
BRA_MAX_WIN = 7


# -- the architecture ------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    depth: int
    width: int
    token_mixer: str
    channel_mixer: str
    mlp_ratio: float
    conv_blocks: int = 0  # leading SwiftFormer ConvEncoders (no token mixer); SwiftFormer: depth - 1
    mixer_kw: Tuple[Tuple[str, int], ...] = ()  # integer keywords of the token mixer (bra: n_win, topk)


@dataclass(frozen=True)
class MetaformerArch(ArchBase):
    space: ClassVar[str] = "metaformer"
    stages: Tuple[Stage, ...]
    stem: str = "patch7"
    stem_stride: int = 4
    token_norm: str = "bn"
    mlp_norm: str = "bn"
    local: str = "none"
    layer_scale: float = 1e-2  # init value of both layer scales; 0 = no layer scale
    stage_norm: str = "ln"
    head_norm: str = "none"
    dist_head: int = 0
    neck: str = "none"
    neck_width: int = 256  # the neck's output width (FPT: 256), when there is a neck
    init: str = "van"
    input_size: Tuple[int, int, int] = (3, 224, 224)
    num_classes: int = 1000

    def validate(self) -> None:
        if len(self.stages) != 4:
            raise ArchError(f"a metaformer network has 4 stages, got {len(self.stages)}")
        for name, value, allowed in (("stem", self.stem, STEMS), ("token_norm", self.token_norm, NORMS),
                                     ("mlp_norm", self.mlp_norm, NORMS), ("local", self.local, LOCALS),
                                     ("stage_norm", self.stage_norm, ("ln", "none")),
                                     ("head_norm", self.head_norm, ("bn", "none")), ("init", self.init, INITS),
                                     ("neck", self.neck, tuple(available_necks()))):
            if value not in allowed:
                raise ArchError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.stem_stride not in (1, 2, 4):
            raise ArchError(f"stem_stride must be 1, 2 or 4, got {self.stem_stride}")
        if self.neck != "none" and (self.neck_width < 4 or self.neck_width % 4):
            raise ArchError(f"neck_width must be a multiple of 4, got {self.neck_width}")
        if self.layer_scale < 0 or self.dist_head not in (0, 1) or self.num_classes < 1:
            raise ArchError("layer_scale >= 0, dist_head in {0, 1} and num_classes >= 1 are required")
        if len(self.input_size) != 3 or min(self.input_size) < 1:
            raise ArchError(f"input_size must be (C, H, W), got {self.input_size}")
        for i, s in enumerate(self.stages, 1):
            where = f"stage {i}"
            if s.depth < 1 or not 0 <= s.conv_blocks <= s.depth:
                raise ArchError(f"{where}: depth >= 1 and 0 <= conv_blocks <= depth required "
                                f"(depth {s.depth}, conv_blocks {s.conv_blocks})")
            if s.width < 4 or s.width % 2 or s.mlp_ratio <= 0 or int(s.width * s.mlp_ratio) < 1:
                raise ArchError(f"{where}: width must be even and >= 4 and mlp_ratio > 0 "
                                f"(width {s.width}, mlp_ratio {s.mlp_ratio})")
            if s.token_mixer not in TOKEN_MIXERS:
                raise ArchError(f"{where}: {TOKEN_MIXERS.unknown_message(s.token_mixer)}")
            if s.channel_mixer not in CHANNEL_MIXERS:
                raise ArchError(f"{where}: {CHANNEL_MIXERS.unknown_message(s.channel_mixer)}")
            keys = [k for k, _ in s.mixer_kw]
            if len(set(keys)) != len(keys) or keys != sorted(keys):
                raise ArchError(f"{where}: mixer_kw keys must be unique and sorted, got {keys}")


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
    """x + (s * ChannelMixer(Norm(x)) [+ side(x)]): a mixer with ``reads_residual`` (AdaptMLP)
    gets the block input for its side path, outside the layer scale (AdaptFormer's order)."""

    def __init__(self, dim: int, mixer: str, mlp_ratio: float, norm: str, layer_scale: float):
        super().__init__()
        self.norm = make_norm(norm, dim)
        self.mixer = CHANNEL_MIXERS[mixer](dim, mlp_ratio)
        self.layer_scale = _scale(dim, layer_scale)
        self.reads_residual = bool(getattr(self.mixer, "reads_residual", False))
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
    """``NECKS`` of ``space.ops.fpt`` (the macro work), or None where that file is absent."""
    try:
        from .ops.fpt import NECKS
    except ImportError:
        return None
    return NECKS


def available_necks() -> List[str]:
    """"none" and every registered neck that reads at most the four stage outputs."""
    reg = neck_registry()
    extra = [] if reg is None else [n for n in reg.names() if reg.meta(n).get("inputs", 4) <= 4]
    return ["none"] + extra


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


# -- the plan: one description that the network, the parts and the supernet follow ------------

def _ceil(hw: Tuple[int, int], s: int) -> Tuple[int, int]:
    return (-(-hw[0] // s), -(-hw[1] // s))


def _hw(hw: Tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def stage_resolutions(input_hw: Tuple[int, int], stem_stride: int) -> List[Tuple[int, int]]:
    out = [_ceil(input_hw, stem_stride)]
    for _ in range(3):
        out.append(_ceil(out[-1], 2))
    return out


def adapted_stem_stride(input_hw: Tuple[int, int]) -> int:
    """4 (published) unless the last stage would fall below 4x4: then 2, or 1."""
    for s in (4, 2, 1):
        if min(input_hw) / (8 * s) >= 4:
            return s
    return 1


def bra_kw(hw: Tuple[int, int], topk: int) -> Tuple[Tuple[str, int], ...]:
    """``bra``'s n_win (largest divisor of both sides <= 7) and topk scaled to the regions."""
    n_win = max(d for d in range(1, BRA_MAX_WIN + 1) if hw[0] % d == 0 and hw[1] % d == 0)
    regions = n_win * n_win
    if topk > 0:
        topk = min(regions, max(1, round(topk * regions / BRA_MAX_WIN ** 2)))
    return (("n_win", n_win), ("topk", topk))


@dataclass(frozen=True)
class Step:
    """One part of the network: cost key fields, input shapes and how to build it."""

    kind: str
    fields: Tuple[Tuple[str, Any], ...]
    inputs: Tuple[Tuple[int, ...], ...]
    make: Callable[[], nn.Module]
    stage_end: bool = False  # its output is a stage output (read by the neck)
    reads: int = 0  # > 0: reads the last ``reads`` stage outputs (the neck)

    @property
    def key(self) -> str:
        return part_key(self.kind.split(":")[0], **dict(self.fields))


def token_step(name: str, dim: int, hw, kw, norm: str, layer_scale: float) -> Step:
    return Step(f"token:{name}", (("name", name), ("c", dim), ("hw", _hw(hw)), ("norm", norm),
                                  ("ls", int(layer_scale > 0)), ("kw", dict(kw))),
                ((1, dim, *hw),), lambda: TokenSub(dim, name, dict(kw), norm, layer_scale))


def channel_step(name: str, dim: int, ratio: float, hw, norm: str, layer_scale: float) -> Step:
    return Step(f"channel:{name}", (("name", name), ("c", dim), ("r", f"{ratio:g}"), ("hw", _hw(hw)),
                                    ("norm", norm), ("ls", int(layer_scale > 0))),
                ((1, dim, *hw),), lambda: ChannelSub(dim, name, ratio, norm, layer_scale))


def conv_encoder_step(dim: int, ratio: float, hw) -> Step:
    return Step("conv_encoder", (("c", dim), ("r", f"{ratio:g}"), ("hw", _hw(hw))), ((1, dim, *hw),),
                lambda: ConvEncoder(dim, ratio))


def local_step(kind: str, dim: int, hw) -> Step:
    return Step(f"local:{kind}", (("name", kind), ("c", dim), ("hw", _hw(hw))), ((1, dim, *hw),),
                lambda: make_local(kind, dim))


def stem_step(kind: str, c_in: int, dim: int, stride: int, hw) -> Step:
    return Step("stem", (("name", kind), ("cin", c_in), ("c", dim), ("s", stride), ("hw", _hw(hw))),
                ((1, c_in, *hw),), lambda: make_stem(kind, c_in, dim, stride))


def downsample_step(c_in: int, c_out: int, hw) -> Step:
    return Step("downsample", (("cin", c_in), ("c", c_out), ("hw", _hw(hw))), ((1, c_in, *hw),),
                lambda: make_downsample(c_in, c_out))


def stage_norm_step(dim: int, hw) -> Step:
    return Step("stage_norm", (("c", dim), ("hw", _hw(hw))), ((1, dim, *hw),), lambda: LayerNorm2d(dim))


def neck_step(arch: MetaformerArch, res) -> Step:
    """The neck over the deepest stage outputs with the classifier over its maps."""
    n = neck_inputs(arch.neck)
    chans = [s.width for s in arch.stages][-n:]
    fields = (("name", arch.neck), ("c", "-".join(map(str, chans))), ("width", arch.neck_width),
              ("hw", "-".join(_hw(hw) for hw in res[-n:])), ("classes", arch.num_classes),
              ("norm", arch.head_norm), ("dist", arch.dist_head))
    return Step(f"neck:{arch.neck}", fields, tuple((1, c, *hw) for c, hw in zip(chans, res[-n:])),
                lambda: NeckClassifier(arch.neck, chans, arch.neck_width, arch.num_classes, arch.head_norm,
                                       arch.dist_head), reads=n)


def head_step(dim: int, hw, classes: int, norm: str, dist: int) -> Step:
    return Step("head", (("c", dim), ("hw", _hw(hw)), ("classes", classes), ("norm", norm), ("dist", dist)),
                ((1, dim, *hw),), lambda: Head(dim, classes, norm, dist))


def stage_steps(arch: MetaformerArch, s: Stage, hw) -> List[Step]:
    out: List[Step] = []
    for j in range(s.depth):
        if j < s.conv_blocks:
            out.append(conv_encoder_step(s.width, s.mlp_ratio, hw))
            continue
        if arch.local != "none":
            out.append(local_step(arch.local, s.width, hw))
        out.append(token_step(s.token_mixer, s.width, hw, s.mixer_kw, arch.token_norm, arch.layer_scale))
        out.append(channel_step(s.channel_mixer, s.width, s.mlp_ratio, hw, arch.mlp_norm, arch.layer_scale))
    return out


def plan(arch: MetaformerArch) -> List[Step]:
    c_in, h, w = arch.input_size
    res = stage_resolutions((h, w), arch.stem_stride)
    steps = [stem_step(arch.stem, c_in, arch.stages[0].width, arch.stem_stride, (h, w))]
    for i, s in enumerate(arch.stages):
        if i:
            steps.append(downsample_step(arch.stages[i - 1].width, s.width, res[i - 1]))
        steps += stage_steps(arch, s, res[i])
        if arch.stage_norm == "ln":
            steps.append(stage_norm_step(s.width, res[i]))
        steps[-1] = replace(steps[-1], stage_end=True)
    if arch.neck != "none":
        return steps + [neck_step(arch, res)]
    steps.append(head_step(arch.stages[-1].width, res[-1], arch.num_classes, arch.head_norm, arch.dist_head))
    return steps


# -- the network -----------------------------------------------------------------------------

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


class MetaformerNet(nn.Module):
    """The deployed network: the plan's parts in order (the neck, if any, reads stage ends)."""

    def __init__(self, arch: MetaformerArch):
        super().__init__()
        steps = plan(arch)
        self.layers = nn.ModuleList(s.make() for s in steps)
        self.taps = [i for i, s in enumerate(steps) if s.stage_end]
        self.reads = [s.reads for s in steps]
        init_weights(self, arch.init)

    def set_drop_path(self, rate: float, progress: float = 0.0) -> None:
        """Stochastic depth as the official recipes: the rate rises linearly over the blocks
        (a ConvEncoder, or a token + channel sub-block pair), constant over training."""
        blocks: List[List[nn.Module]] = []
        for m in self.layers:
            if isinstance(m, (ConvEncoder, TokenSub)):
                blocks.append([m])
            elif isinstance(m, ChannelSub):
                blocks[-1].append(m) if blocks else blocks.append([m])
        for p, block in zip(linear_rates(rate, len(blocks)), blocks):
            for m in block:
                m.drop_prob = p

    def forward(self, x):
        feats = []
        for i, (layer, reads) in enumerate(zip(self.layers, self.reads)):
            x = layer(*feats[-reads:]) if reads else layer(x)
            if i in self.taps:
                feats.append(x)
        return x


def _deployed(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def f() -> nn.Module:
        return deploy_ops(make()).eval()
    return f


def parts(arch: MetaformerArch) -> List[Part]:
    """The deployed network as Parts, in execution order (costs add up exactly)."""
    return [Part(s.key, s.kind, s.inputs, _deployed(s.make)) for s in plan(arch)]


def build(arch: MetaformerArch, deploy: bool = True) -> nn.Module:
    arch.validate()
    net = MetaformerNet(arch)
    return deploy_ops(net) if deploy else net


# -- presets (modules.md [M]: params / fvcore MACs at 224) ---------------------------------------

STYLES: Dict[str, Dict[str, Any]] = {
    "van": dict(stem="patch7", token_norm="bn", mlp_norm="bn", local="none", layer_scale=1e-2,
                stage_norm="ln", head_norm="none", dist_head=0, init="van"),
    "swiftformer": dict(stem="conv3x2_relu", token_norm="none", mlp_norm="bn", local="swift_local",
                        layer_scale=1e-5, stage_norm="none", head_norm="bn", dist_head=1, init="swiftformer"),
    "biformer": dict(stem="conv3x2_gelu", token_norm="ln", mlp_norm="ln", local="cpe", layer_scale=0.0,
                     stage_norm="none", head_norm="bn", dist_head=0, init="biformer"),
}

def _van(depths, widths) -> MetaformerArch:
    return MetaformerArch(stages=tuple(Stage(d, w, "lka", "mlp_dw", r) for d, w, r in
                                       zip(depths, widths, (8, 8, 4, 4))), **STYLES["van"])


def _swiftformer(depths, widths) -> MetaformerArch:
    return MetaformerArch(stages=tuple(Stage(d, w, "additive_attention", "mlp", 4.0, conv_blocks=d - 1)
                                       for d, w in zip(depths, widths)), **STYLES["swiftformer"])


def _biformer(depths, widths) -> MetaformerArch:
    return MetaformerArch(stages=tuple(Stage(d, w, "bra", "mlp", 3.0, mixer_kw=bra_kw((56 >> i, 56 >> i), BRA_TOPKS[i]))
                                       for i, (d, w) in enumerate(zip(depths, widths))), **STYLES["biformer"])


# The official configurations (models/van.py van_b0..b3, models/swiftformer.py SwiftFormer_XS..L3,
# models/biformer.py biformer_tiny/small/base); their published params / fvcore MACs at 224 are
# in tests/spaces/test_metaformer.py.  SwiftFormer's include the distillation head.
VAN_B0 = _van((3, 3, 5, 2), (32, 64, 160, 256))  # 4.106M / 0.868G
VAN_B1 = _van((2, 2, 4, 2), (64, 128, 320, 512))
VAN_B2 = _van((3, 3, 12, 3), (64, 128, 320, 512))
VAN_B3 = _van((3, 5, 27, 3), (64, 128, 320, 512))
SWIFTFORMER_XS = _swiftformer((3, 3, 6, 4), (48, 56, 112, 220))  # 3.475M / 0.605G (3.254M without the head)
SWIFTFORMER_S = _swiftformer((3, 3, 9, 6), (48, 64, 168, 224))
SWIFTFORMER_L1 = _swiftformer((4, 3, 10, 5), (48, 96, 192, 384))
SWIFTFORMER_L3 = _swiftformer((4, 4, 12, 6), (64, 128, 320, 512))
BIFORMER_T = _biformer((2, 2, 8, 2), (64, 128, 256, 512))  # 13.143M / 2.228G
BIFORMER_S = _biformer((4, 4, 18, 4), (64, 128, 256, 512))
BIFORMER_B = _biformer((4, 4, 18, 4), (96, 192, 384, 768))
PRESETS = {"van_b0": VAN_B0, "van_b1": VAN_B1, "van_b2": VAN_B2, "van_b3": VAN_B3,
           "swiftformer_xs": SWIFTFORMER_XS, "swiftformer_s": SWIFTFORMER_S, "swiftformer_l1": SWIFTFORMER_L1,
           "swiftformer_l3": SWIFTFORMER_L3, "biformer_t": BIFORMER_T, "biformer_s": BIFORMER_S,
           "biformer_b": BIFORMER_B}
# Stochastic-depth rates of the official training recipes: VAN's train.sh (0.1, 0.1, 0.1, 0.2 for
# B0..B3), SwiftFormer's main.py (sets none: the model's default 0), BiFormer's main.py default
# (0.1, T) and README command (0.15, S; B's is unstated, so S's).  A searched architecture gets
# its style's smallest model's rate.
DROP_PATH = {"van_b0": 0.1, "van_b1": 0.1, "van_b2": 0.1, "van_b3": 0.2, "swiftformer_xs": 0.0,
             "swiftformer_s": 0.0, "swiftformer_l1": 0.0, "swiftformer_l3": 0.0, "biformer_t": 0.1,
             "biformer_s": 0.15, "biformer_b": 0.15}
STYLE_DROP_PATH = {"van": 0.1, "swiftformer": 0.0, "biformer": 0.1}


def recipe_drop_path(arch: MetaformerArch) -> float:
    """The official recipe's stochastic depth for ``arch`` (see ``DROP_PATH``)."""
    for name, p in PRESETS.items():
        if [(s.depth, s.width, s.token_mixer) for s in p.stages] == \
                [(s.depth, s.width, s.token_mixer) for s in arch.stages] and p.init == arch.init:
            return DROP_PATH[name]
    return STYLE_DROP_PATH.get(arch.init, 0.0)


# -- the space -------------------------------------------------------------------------------

DEFAULT_DEPTHS = ((1, 2, 3), (1, 2, 3), (2, 4, 5, 6, 8), (1, 2, 3, 4))
DEFAULT_WIDTHS = ((32, 48, 64), (56, 64, 96, 128), (112, 160, 256), (220, 256, 384, 512))
DEFAULT_RATIOS = (3, 4, 8)
DEFAULT_NECKS = ("none", "fpt_neck")
# The default mixers, explicit (see space/darts.py's DEFAULT_OPS for why).
DEFAULT_TOKEN_MIXERS = ("bra", "lka", "pool_mixer", "dwconv_mixer", "additive_attention")
DEFAULT_CHANNEL_MIXERS = ("adapt_mlp", "mlp", "mlp_dw")


@SPACES.register("metaformer")
class MetaformerSpace(SearchSpace):
    """Per stage: token mixer, channel mixer, depth, width, MLP ratio; and the neck.

    Settings: ``style`` (``van``, ``swiftformer`` or ``biformer``: block style, stem, norms,
    layer scale, head), candidate ``token_mixers``/``channel_mixers`` (default: the explicit
    ``DEFAULT_TOKEN_MIXERS``/``DEFAULT_CHANNEL_MIXERS``), per-stage ``depths``/``widths`` options,
    ``mlp_ratios`` (ints), the deployed ``input_size``/``num_classes`` (224, 1000), the
    supernet's ``supernet_widths`` (per stage, the supernet width of the widest option).
    """

    name = "metaformer"
    arch_cls = MetaformerArch
    presets = PRESETS
    recipe_drop_path = staticmethod(recipe_drop_path)
    build = staticmethod(build)
    parts = staticmethod(parts)

    def __init__(self, style: str = "van", token_mixers: Optional[Sequence[str]] = None,
                 channel_mixers: Optional[Sequence[str]] = None,
                 depths: Sequence[Sequence[int]] = DEFAULT_DEPTHS,
                 widths: Sequence[Sequence[int]] = DEFAULT_WIDTHS,
                 mlp_ratios: Sequence[int] = DEFAULT_RATIOS, necks: Optional[Sequence[str]] = None,
                 neck_width: int = 256, input_size: Sequence[int] = (3, 224, 224), num_classes: int = 1000,
                 supernet_widths: Sequence[int] = (16, 32, 64, 128), supernet_neck_width: int = 32,
                 ops: Optional[Sequence[str]] = None):
        if ops is not None:  # --ops: token and channel mixers by name
            picked = split_names(ops, {"token_mixers": TOKEN_MIXERS, "channel_mixers": CHANNEL_MIXERS}, {},
                                 "metaformer")
            token_mixers = token_mixers if token_mixers is not None else picked["token_mixers"] or None
            channel_mixers = channel_mixers if channel_mixers is not None else picked["channel_mixers"] or None
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
        self.style = style
        self.token_mixers = TOKEN_MIXERS.check(token_mixers if token_mixers is not None else DEFAULT_TOKEN_MIXERS)
        self.channel_mixers = CHANNEL_MIXERS.check(channel_mixers if channel_mixers is not None
                                                   else DEFAULT_CHANNEL_MIXERS)
        self.depths = [[int(d) for d in ds] for ds in depths]
        self.widths = [[int(w) for w in ws] for ws in widths]
        self.mlp_ratios = [int(r) for r in mlp_ratios]
        self.necks = list(necks) if necks is not None else [n for n in available_necks() if n in DEFAULT_NECKS]
        unknown = [n for n in self.necks if n not in available_necks()]
        if unknown:
            raise ValueError(f"unknown neck(s) {unknown}; available: {', '.join(available_necks())}")
        self.input_size = tuple(int(v) for v in input_size)
        self.num_classes = int(num_classes)
        self.supernet_widths = [int(w) for w in supernet_widths]
        self.neck_width, self.supernet_neck_width = int(neck_width), int(supernet_neck_width)
        if not (self.token_mixers and self.channel_mixers and self.mlp_ratios and self.necks):
            raise ValueError("the space needs at least one token mixer, channel mixer, ratio and neck")
        if len(self.depths) != 4 or len(self.widths) != 4 or len(self.supernet_widths) != 4 \
                or not all(self.depths) or not all(self.widths):
            raise ValueError("depths, widths and supernet_widths give 4 stages, each with options")
        self.stem_stride = adapted_stem_stride(self.input_size[1:])

    def settings(self) -> Dict[str, Any]:
        return {"space": self.name, "style": self.style, "token_mixers": list(self.token_mixers),
                "channel_mixers": list(self.channel_mixers), "depths": self.depths, "widths": self.widths,
                "mlp_ratios": self.mlp_ratios, "necks": self.necks, "neck_width": self.neck_width,
                "input_size": list(self.input_size), "num_classes": self.num_classes,
                "supernet_widths": self.supernet_widths, "supernet_neck_width": self.supernet_neck_width}

    def choices(self) -> Dict[str, List[Any]]:
        out: Dict[str, List[Any]] = {}
        for i in range(4):
            out[f"s{i + 1}_token"] = list(self.token_mixers)
            out[f"s{i + 1}_channel"] = list(self.channel_mixers)
            out[f"s{i + 1}_depth"] = list(self.depths[i])
            out[f"s{i + 1}_width"] = list(self.widths[i])
            out[f"s{i + 1}_mlp_ratio"] = list(self.mlp_ratios)
        out["neck"] = list(self.necks)
        return out

    def _stage(self, i: int, token: str, channel: str, depth: int, width: int, ratio: float) -> Stage:
        res = stage_resolutions(self.input_size[1:], self.stem_stride)[i]
        kw = bra_kw(res, BRA_TOPKS[i]) if token == "bra" else ()
        conv = depth - 1 if self.style == "swiftformer" else 0
        return Stage(int(depth), int(width), token, channel, float(ratio), conv, kw)

    def decode(self, params: Dict[str, Any]) -> MetaformerArch:
        stages = tuple(self._stage(i, params[f"s{i + 1}_token"], params[f"s{i + 1}_channel"],
                                   params[f"s{i + 1}_depth"], params[f"s{i + 1}_width"],
                                   params[f"s{i + 1}_mlp_ratio"]) for i in range(4))
        arch = MetaformerArch(stages=stages, stem_stride=self.stem_stride, neck=params.get("neck", "none"),
                              neck_width=self.neck_width, input_size=self.input_size,
                              num_classes=self.num_classes, **STYLES[self.style])
        arch.validate()
        return arch

    def encode(self, arch: MetaformerArch) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for i, s in enumerate(arch.stages):
            out.update({f"s{i + 1}_token": s.token_mixer, f"s{i + 1}_channel": s.channel_mixer,
                        f"s{i + 1}_depth": s.depth, f"s{i + 1}_width": s.width,
                        f"s{i + 1}_mlp_ratio": int(s.mlp_ratio) if float(s.mlp_ratio).is_integer() else s.mlp_ratio})
        out["neck"] = arch.neck
        choices = self.choices()
        outside = [f"{k}={v!r}" for k, v in out.items() if v not in choices[k]]
        if outside:
            raise ValueError(f"arch lies outside this space's choices: {', '.join(outside)}")
        if self.decode(out) != arch:
            raise ValueError(f"arch differs from this space's {self.style!r} style or input size "
                             "in fields that are not choices")
        return out

    def supernet(self, num_classes: int, input_size: Sequence[int]) -> nn.Module:
        from .metaformer_supernet import MetaformerSupernet, width_map  # the supernet imports this module

        maps = [width_map(ws, sw) for ws, sw in zip(self.widths, self.supernet_widths)]
        return MetaformerSupernet(STYLES[self.style], maps, [max(d) for d in self.depths],
                                  self.token_mixers, self.channel_mixers, [float(r) for r in self.mlp_ratios],
                                  num_classes, input_size, conv_blocks=self.style == "swiftformer",
                                  necks=self.necks, neck_width=self.supernet_neck_width)

    def all_parts(self) -> Iterator[Part]:
        c_in, h, w = self.input_size
        res = stage_resolutions((h, w), self.stem_stride)
        style = STYLES[self.style]
        proto = MetaformerArch(stages=(), stem_stride=self.stem_stride, input_size=self.input_size,
                               num_classes=self.num_classes, **style)
        steps: List[Step] = [stem_step(proto.stem, c_in, wd, self.stem_stride, (h, w)) for wd in self.widths[0]]
        for i in range(4):
            for wd in self.widths[i]:
                if i:
                    steps += [downsample_step(wp, wd, res[i - 1]) for wp in self.widths[i - 1]]
                for token in self.token_mixers:
                    for channel in self.channel_mixers:
                        for r in self.mlp_ratios:
                            stage = self._stage(i, token, channel, max(self.depths[i]), wd, r)
                            steps += stage_steps(proto, stage, res[i])
                if proto.stage_norm == "ln":
                    steps.append(stage_norm_step(wd, res[i]))
        steps += [head_step(wd, res[3], self.num_classes, proto.head_norm, proto.dist_head)
                  for wd in self.widths[3]]
        for neck in self.necks:
            if neck == "none":
                continue
            n = neck_inputs(neck)
            for chans in itertools.product(*self.widths[4 - n:]):
                stages = tuple(Stage(1, c, "", "", 1.0) for c in [0] * (4 - n) + list(chans))  # widths only
                steps.append(neck_step(replace(proto, stages=stages, neck=neck, neck_width=self.neck_width), res))
        seen = set()
        for s in steps:
            if s.key not in seen:
                seen.add(s.key)
                yield Part(s.key, s.kind, s.inputs, _deployed(s.make))
