"""The ``metaformer`` architecture and its plan: one list of steps that is the deployed network,
its parts (costs, latency keys) and the order the supernet's path follows (space/metaformer.py
describes the space; space/metaformer_blocks.py the blocks)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, List, Sequence, Tuple

from torch import nn

from .arch import ArchBase, ArchError
from .base import Part
from .metaformer_blocks import (ChannelSub, Head, LayerNorm2d, NeckClassifier, TokenSub, available_necks,
                                init_weights, make_downsample, make_local, make_stem, neck_inputs)
from .ops.common import linear_rates
from .plan import Network, Step
from .plan import build as finish
from .plan import parts as plan_parts
from .ops.swiftformer import ConvEncoder
from .registry import CHANNEL_MIXERS, TOKEN_MIXERS

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


def neck_step(arch: MetaformerArch, res, taps: Sequence[int] = (0, 0, 0, 0)) -> Step:
    """The neck over the deepest stage outputs (values ``taps``) with the classifier over its maps."""
    n = neck_inputs(arch.neck)
    chans = [s.width for s in arch.stages][-n:]
    fields = (("name", arch.neck), ("c", "-".join(map(str, chans))), ("width", arch.neck_width),
              ("hw", "-".join(_hw(hw) for hw in res[-n:])), ("classes", arch.num_classes),
              ("norm", arch.head_norm), ("dist", arch.dist_head))
    return Step(f"neck:{arch.neck}", fields, tuple((1, c, *hw) for c, hw in zip(chans, res[-n:])),
                lambda: NeckClassifier(arch.neck, chans, arch.neck_width, arch.num_classes, arch.head_norm,
                                       arch.dist_head), reads=tuple(taps[-n:]))


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
    taps: List[int] = []
    for i, s in enumerate(arch.stages):
        if i:
            steps.append(downsample_step(arch.stages[i - 1].width, s.width, res[i - 1]))
        steps += stage_steps(arch, s, res[i])
        if arch.stage_norm == "ln":
            steps.append(stage_norm_step(s.width, res[i]))
        taps.append(len(steps))  # the value of the stage's last step
    if arch.neck != "none":
        return steps + [neck_step(arch, res, taps)]
    steps.append(head_step(arch.stages[-1].width, res[-1], arch.num_classes, arch.head_norm, arch.dist_head))
    return steps


# -- the network -----------------------------------------------------------------------------

class MetaformerNet(Network):
    """The deployed network: the plan's steps in order (the neck, if any, reads stage ends)."""

    def __init__(self, arch: MetaformerArch):
        super().__init__(plan(arch))
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


def parts(arch: MetaformerArch) -> List[Part]:
    """The deployed network as Parts, in execution order (costs add up exactly)."""
    return plan_parts(plan(arch))


def build(arch: MetaformerArch, deploy: bool = True) -> nn.Module:
    arch.validate()
    return finish(MetaformerNet(arch), deploy)
