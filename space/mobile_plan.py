"""The ``mobile`` architecture and its plan: the one description from which the deployed network
and its parts (costs, latency keys) are built; space/mobile.py describes the space and the
presets, space/mobile_supernet.py the weight-sharing supernet."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Dict, List, Optional, Tuple

from torch import nn

from .arch import ArchBase, ArchError
from .base import Part
from .ops.base import stateful_key
from .plan import Network, Step, part
from .plan import build as finish
from .plan import parts as plan_parts
from .ops.common import conv1x1_bn_act, dw_bn, make_divisible, mobile_init
from .registry import HEADS
from .ops.sandglass import SandglassConv, sandglass_form, sandglass_hidden
from .registry import ATTENTIONS, DW_CONVS, FUSIONS

BLOCK_TYPES = ("ir", "sg")
STEM_STRIDE = 2


@dataclass(frozen=True)
class Block:
    type: str = "ir"  # "ir" (inverted residual) or "sg" (sandglass)
    kernel: int = 3  # depthwise kernel size
    expand: int = 6  # IR expansion ratio / SG reduction ratio
    conv: str = "plain"  # DW_CONVS name
    attention: str = "none"  # "none" or an ATTENTIONS name
    fusion: str = "sum"  # FUSIONS name, used where the block has a residual


@dataclass(frozen=True)
class Stage:
    width: int  # output channels of every block of the stage
    stride: int  # stride of the first block
    blocks: Tuple[Block, ...]


@dataclass(frozen=True)
class MobileArch(ArchBase):
    space: ClassVar[str] = "mobile"
    stages: Tuple[Stage, ...]
    stem: int = 32
    head_channels: int = 1280  # 1x1 conv before pooling; 0: none (MobileNeXt)
    head: str = "plain"  # HEADS name
    head_groups: int = 1  # GENet members (1 for the plain head)
    input_size: Tuple[int, int, int] = (3, 224, 224)
    num_classes: int = 1000

    def validate(self) -> None:
        if len(self.input_size) != 3 or min(self.input_size) < 1:
            raise ArchError(f"input_size must be (C, H, W), got {self.input_size}")
        if self.num_classes < 1 or self.stem < 1 or self.head_channels < 0:
            raise ArchError("num_classes >= 1, stem >= 1 and head_channels >= 0 are required")
        if not self.stages:
            raise ArchError("a mobile network needs at least one stage")
        for si, st in enumerate(self.stages):
            where = f"stage {si}"
            if st.width < 1 or st.stride not in (1, 2) or not st.blocks:
                raise ArchError(f"{where}: width >= 1, stride 1 or 2 and at least one block are required")
            for bi, b in enumerate(st.blocks):
                where = f"stage {si} block {bi}"
                if b.type not in BLOCK_TYPES:
                    raise ArchError(f"{where}: block type {b.type!r} is not one of {BLOCK_TYPES}")
                if b.kernel < 1 or b.kernel % 2 == 0 or b.expand < 1:
                    raise ArchError(f"{where}: kernel must be odd and expand >= 1 (got {b.kernel}, {b.expand})")
                if b.conv not in DW_CONVS:
                    raise ArchError(f"{where}: {DW_CONVS.unknown_message(b.conv)}")
                if b.attention != "none" and b.attention not in ATTENTIONS:
                    raise ArchError(f"{where}: {ATTENTIONS.unknown_message(b.attention)}")
                if b.fusion not in FUSIONS:
                    raise ArchError(f"{where}: {FUSIONS.unknown_message(b.fusion)}")
        if self.head not in HEADS:
            raise ArchError(HEADS.unknown_message(self.head))
        width = self.head_channels or self.stages[-1].width
        if self.head == "genet":
            if self.head_groups < 2 or width % self.head_groups:
                raise ArchError(f"the genet head needs >= 2 groups dividing its width {width}, "
                                f"got {self.head_groups}")
        elif self.head_groups != 1:
            raise ArchError(f"head {self.head!r} has one group, got head_groups={self.head_groups}")


# -- the plan both the network and its parts follow --------------------------------------

@dataclass(frozen=True)
class BlockPlan:
    stage: int
    index: int
    block: Block
    cin: int
    cout: int
    stride: int
    hw_in: Tuple[int, int]
    hw_out: Tuple[int, int]
    hidden: int
    form: str  # "ir" or a sandglass form ("full", "pw_dw", "pw")
    residual: bool
    keep_3x3: bool = False
    att_c: int = 0  # width the attention runs at
    state_key: Optional[str] = None  # network-state name of a stateful attention
    att_prev: bool = False  # it continues a chain (the state holds its predecessor's value)
    restart: bool = False  # it must drop a predecessor's state of another width first


@dataclass(frozen=True)
class Plan:
    stem: int
    stem_hw: Tuple[int, int]  # stem output resolution
    blocks: Tuple[BlockPlan, ...]
    c_last: int
    hw_last: Tuple[int, int]


def _down(hw: Tuple[int, int], s: int) -> Tuple[int, int]:
    return ((hw[0] + s - 1) // s, (hw[1] + s - 1) // s)


def block_plan(stage: int, index: int, block: Block, cin: int, cout: int, stride: int,
               hw_in: Tuple[int, int], keep_3x3: bool) -> BlockPlan:
    """Shape decisions of one block (without its attention chain)."""
    if block.type == "ir":
        hidden = int(round(cin * block.expand))
        form, residual, att_c = "ir", stride == 1 and cin == cout, hidden
    else:
        hidden = sandglass_hidden(cin, cout, block.expand)
        form, residual = sandglass_form(cin, cout, stride, block.expand, keep_3x3)
        att_c = cout
    key = stateful_key(ATTENTIONS.meta(block.attention)) if block.attention != "none" else None
    return BlockPlan(stage, index, block, cin, cout, stride, hw_in, _down(hw_in, stride), hidden,
                     form, residual, keep_3x3, att_c, key)


def plan(arch: MobileArch) -> Plan:
    _, h, w = arch.input_size
    hw = _down((h, w), STEM_STRIDE)
    stem_hw, cin, out = hw, arch.stem, []
    for si, st in enumerate(arch.stages):
        chain: Dict[str, int] = {}  # state name -> width of its last writer in this stage
        for bi, b in enumerate(st.blocks):
            keep = bi == 0 and len(st.blocks) == 1 and st.stride == 1  # MXNet's keep_3x3
            p = block_plan(si, bi, b, cin, st.width, st.stride if bi == 0 else 1, hw, keep)
            if p.state_key is not None:
                prev = chain.get(p.state_key) == p.att_c
                p = replace(p, att_prev=prev, restart=p.state_key in chain and not prev)
                chain[p.state_key] = p.att_c
            out.append(p)
            cin, hw = st.width, p.hw_out
    return Plan(arch.stem, stem_hw, tuple(out), cin, hw)


# -- modules -------------------------------------------------------------------------------

def make_stem(c_in: int, c_out: int, stride: int = STEM_STRIDE) -> nn.Sequential:
    m = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU6())
    mobile_init(m)
    return m


def ir_pre(cin: int, hidden: int, kernel: int, stride: int, conv: str, expand: bool) -> nn.Sequential:
    """Inverted residual up to the attention point: [1x1 expand] -> dw -> BN -> ReLU6."""
    layers: List[nn.Module] = [conv1x1_bn_act(cin, hidden)] if expand else []
    layers.append(dw_bn(hidden, kernel, stride, conv, act=True))
    return nn.Sequential(*layers)


def ir_post(hidden: int, cout: int) -> nn.Sequential:
    m = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
    mobile_init(m)
    return m


def _pre(p: BlockPlan) -> nn.Module:
    b = p.block
    if p.form == "ir":
        return ir_pre(p.cin, p.hidden, b.kernel, p.stride, b.conv, b.expand != 1)
    return SandglassConv(p.cin, p.cout, p.stride, p.hidden, p.form, b.kernel, b.conv)


def _post(p: BlockPlan) -> nn.Module:
    return ir_post(p.hidden, p.cout) if p.form == "ir" else nn.Identity()


def _attention(p: BlockPlan) -> nn.Module:
    return nn.Identity() if p.block.attention == "none" else ATTENTIONS[p.block.attention](p.att_c)


def _head(arch: MobileArch, c_last: int) -> nn.Module:
    kw = {"groups": arch.head_groups} if arch.head == "genet" else {}
    return HEADS[arch.head](c_last, arch.num_classes, arch.head_channels, **kw)


# -- the plan as steps (space/plan.py runs and costs them) ------------------------------------

def _hw(hw: Tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def block_steps(p: BlockPlan, n: int = 0, first: int = 0) -> List[Step]:
    """Block ``n`` of the network, its first step being step ``first`` (so its input is value
    ``first``): pre conv -> attention -> post conv -> fusion with the shortcut (an Identity is
    no step)."""
    b, name = p.block, f"blocks.{n}"
    if p.form == "ir":
        kind, fields = "ir_expand_dw", (("cin", p.cin), ("hidden", p.hidden), ("expand", int(b.expand != 1)),
                                        ("k", b.kernel), ("s", p.stride), ("conv", b.conv), ("hw", _hw(p.hw_in)))
    else:
        dw = p.form != "pw"  # kernel and conv variant only matter where there is a dw conv
        kind, fields = "sg_conv", (("cin", p.cin), ("cout", p.cout), ("hidden", p.hidden), ("form", p.form),
                                   ("k", b.kernel if dw else "-"), ("conv", b.conv if dw else "-"), ("s", p.stride),
                                   ("hw", _hw(p.hw_in)))
    out = [Step(kind, fields, ((1, p.cin, *p.hw_in),), lambda: _pre(p), name=f"{name}.pre",
                stage_start=p.index == 0)]
    if b.attention != "none":
        out.append(Step(f"attention:{b.attention}", (("name", b.attention), ("c", p.att_c), ("hw", _hw(p.hw_out))),
                        ((1, p.att_c, *p.hw_out),), lambda: _attention(p), name=f"{name}.attention",
                        state=p.state_key, restart=p.restart))
    if p.form == "ir":
        out.append(Step("ir_project", (("hidden", p.hidden), ("cout", p.cout), ("hw", _hw(p.hw_out))),
                        ((1, p.hidden, *p.hw_out),), lambda: _post(p), name=f"{name}.post"))
    if p.residual:
        shape = (1, p.cout, *p.hw_out)
        out.append(Step(f"fusion:{b.fusion}", (("name", b.fusion), ("c", p.cout), ("hw", _hw(p.hw_out))),
                        (shape, shape), lambda: FUSIONS[b.fusion](p.cout), name=f"{name}.fusion",
                        reads=(first + len(out), first)))
    return out


def block_parts(p: BlockPlan) -> List[Part]:
    """The parts of one block, in execution order, its attention costed as ``p.att_prev`` says."""
    return [part(s, p.att_prev if s.state else None) for s in block_steps(p)]


def stem_step(c_in: int, c: int, hw_in: Tuple[int, int]) -> Step:
    return Step("stem", (("cin", c_in), ("cout", c), ("hw", _hw(hw_in))), ((1, c_in, *hw_in),),
                lambda: make_stem(c_in, c), name="stem", key_kind="mobile_stem")


def head_step(arch: MobileArch, c_last: int, hw: Tuple[int, int]) -> Step:
    fields = (("name", arch.head), ("cin", c_last), ("mid", arch.head_channels), ("classes", arch.num_classes),
              ("groups", arch.head_groups), ("hw", _hw(hw)))
    return Step(f"head:{arch.head}", fields, ((1, c_last, *hw),), lambda: _head(arch, c_last), name="head",
                key_kind="mobile_head")


def steps(arch: MobileArch) -> List[Step]:
    """The network as steps: stem, blocks, head."""
    pl = plan(arch)
    out = [stem_step(arch.input_size[0], arch.stem, tuple(arch.input_size[1:]))]
    for n, p in enumerate(pl.blocks):
        out += block_steps(p, n, len(out))
    out.append(head_step(arch, pl.c_last, pl.hw_last))
    return out


def build(arch: MobileArch, deploy: bool = True) -> nn.Module:
    """The stand-alone network; ``deploy`` folds train-time ops (what the budget counts)."""
    arch.validate()
    return finish(Network(steps(arch)), deploy)


def parts(arch: MobileArch) -> List[Part]:
    """The deployed network as Parts, in execution order (costs add up exactly)."""
    arch.validate()
    return plan_parts(steps(arch))


def _scaled(width: int, percent: int) -> int:
    return max(8, make_divisible(width * percent / 100.0, 8))
