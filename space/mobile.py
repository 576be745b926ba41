"""The ``mobile`` search space: MobileNetV2 / MobileNeXt-like chains of mobile blocks.

References: MobileNetV2 (Sandler et al., arXiv 1801.04381; structure as torchvision's
``mobilenet_v2``) and MobileNeXt (Zhou et al., arXiv 2007.02269; ``mnext.py`` of
zhoudaquan/rethinking_bottleneck_design).  Both presets are rebuilt exactly:
``mobilenet_v2`` (1.0: 3,504,872 params, fvcore 314,193,216 at 1x3x224x224) and ``mobilenext``
(1.0: 3,535,416 params, fvcore 327,532,192).

Network: stem (3x3 conv stride 2 -> BN -> ReLU6), stages of blocks (the first block of a stage
strides and changes width), then a head from ``HEADS`` (``plain``: [1x1 conv -> BN -> ReLU6]
-> pool -> dropout 0.2 -> linear; ``genet``: GENet's group-ensemble head, space/ops/genet.py).
A block is
  * ``ir``, the inverted residual (torchvision): [1x1 expand -> BN -> ReLU6] -> dw k x k
    (stride) -> BN -> ReLU6 -> **attention** -> 1x1 project -> BN; hidden = round(cin * t);
    residual when stride 1 and cin == cout;
  * ``sg``, the sandglass block (space/ops/sandglass.py; t is a reduction ratio), in the form
    the official code picks -> **attention** -> residual when the official block has its
    identity shortcut (MXNet's keep_3x3 rule: first block of a one-block stride-1 stage).
The depthwise convs of both are ``DW_CONVS[conv]``.  The attention plug-in sits where a block's
features are richest: on the expanded features after the depthwise conv in ``ir`` (where
MobileNetV3/MnasNet put SE), on the high-dimensional output end in ``sg`` (before the shortcut,
where the block's identity path lives).  A residual block merges its shortcut with
``FUSIONS[fusion](cout)(block_output, shortcut)`` (``sum`` = the plain add); blocks without a
residual ignore the fusion choice.

Layers the space builds (stem, 1x1 convs, plain depthwise convs, BN, classifiers) are
initialised as torchvision's MobileNetV2 and MXNet (same rule); registered plug-ins (attention,
fusion, non-plain conv variants) keep their own initialisation.

Stateful attention (registry meta ``state=``, e.g. DCANet's ``dca_se``) chains along a stage:
the state is cleared at every forward and every stage start; inside a stage an attention
continues the chain of the previous attention of the same state name only when both run at
the same width, otherwise it drops the state and starts a new chain (DCANet's ``att_fc``
projection between widths is not assumed of the op; in ``sg``-only stages all attentions run
at the stage width, so the chain runs through the whole stage).

Search (``MobileSpace``): a base (``mobilenetv2`` or ``mobilenext``) fixes the stem, the first
stage (the published first block: IR t=1 / SG t=2), the stage strides and base widths, and the
head width.  Per searched stage: width multiplier (percent, from a short list; widths rounded
to 8 as both references do) and depth; per block slot: type, kernel, expansion (IR expansion /
SG reduction), conv variant, attention ("none" or any ATTENTIONS name), fusion; one head
choice.  ``decode`` canonicalises choices a block ignores (fusion without residual, kernel and
conv of a 1x1-only sandglass) to the first option, so equal networks get equal archs.

Parts (cost units, see nas/flops.py ``PartCounter``): stem; ``ir`` = expand+dw part, attention
part, project part, fusion part; ``sg`` = conv part, attention part, fusion part; head.  The
network and the parts are built from one ``plan``.

Files: the architecture, its plan, the network and its parts are in space/mobile_plan.py; this
file holds the presets and the space; the supernet is space/mobile_supernet.py.

Supernet (SPOS): one ``SuperBlock`` per block slot (max depth), holding one depthwise
candidate per (kernel, conv variant) and position, one attention per name and position, one
fusion per name; the 1x1 convs are shared across kernels/variants.  Width multipliers,
expansions and bottleneck widths share weights by channel masking: every tensor is allocated
at the widest option and channels beyond the active width are zeroed (OFA's leading-channel
sharing, done with masks so any registered module works unchanged; attention and fusion
modules run at the allocated width and see the masked channels as zeros).  Widths are
``supernet_width`` percent of the deployed ones (at least 8 active / 16 allocated channels).
It runs at the data's resolution: stride-2 layers are turned into stride 1 from the stem on
until the last stage keeps at least ``supernet_min_resolution`` (4) pixels (32x32 CIFAR: the
stem and the first stride-2 stage run at stride 1, stages end at 4x4).  Block forms and
residuals follow the deployed arch (its strides), so a block keeps its deployed structure.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from torch import nn

from .base import Part, SearchSpace, split_names, whole, wholes
from .mobile_plan import (BLOCK_TYPES, Block, BlockPlan, MobileArch, Stage, _down, _scaled, head_step, stem_step,
                          block_parts, block_plan, build, parts, plan)
from .mobile_supernet import MobileSupernet
from .plan import part
from .ops.base import stateful_key
from .ops.common import dw_kernel, make_divisible
from .registry import HEADS
from .registry import ATTENTIONS, DW_CONVS, FUSIONS, SPACES


# -- presets ----------------------------------------------------------------------------

def _stage(width: int, stride: int, n: int, block: Block) -> Stage:
    return Stage(width, stride, (block,) * n)


_IR6, _SG6 = Block("ir", 3, 6), Block("sg", 3, 6)
MOBILENET_V2 = MobileArch(  # torchvision mobilenet_v2(width_mult=1.0)
    stages=(_stage(16, 1, 1, Block("ir", 3, 1)), _stage(24, 2, 2, _IR6), _stage(32, 2, 3, _IR6),
            _stage(64, 2, 4, _IR6), _stage(96, 1, 3, _IR6), _stage(160, 2, 3, _IR6),
            _stage(320, 1, 1, _IR6)),
    stem=32, head_channels=1280)
MOBILENEXT = MobileArch(  # mnext(width_mult=1.0)
    stages=(_stage(96, 2, 1, Block("sg", 3, 2)), _stage(144, 1, 1, _SG6), _stage(192, 2, 3, _SG6),
            _stage(288, 2, 3, _SG6), _stage(384, 1, 4, _SG6), _stage(576, 2, 4, _SG6),
            _stage(960, 1, 3, _SG6), _stage(1280, 1, 1, _SG6)),
    stem=32, head_channels=0)


@dataclass(frozen=True)
class Base:
    """A published network whose stem, first stage, stage strides and head width the space
    keeps; ``stages`` gives (width, depth, stride) of the stages it searches."""

    preset: MobileArch

    @property
    def stages(self) -> List[Tuple[int, int, int]]:
        return [(st.width, len(st.blocks), st.stride) for st in self.preset.stages[1:]]


BASES: Dict[str, Base] = {"mobilenetv2": Base(MOBILENET_V2), "mobilenext": Base(MOBILENEXT)}
WIDE_END = 1280  # MobileNetV2's head conv and MobileNeXt's last stage: never narrowed


def width_multiplied(arch: MobileArch, mult: float) -> MobileArch:
    """``arch`` at width multiplier ``mult``, as torchvision's ``mobilenet_v2(width_mult)`` and
    mnext.py's ``MXNet(width_mult)`` scale it: the stem and every stage to
    ``make_divisible(c * mult, 8)``, the 1280-wide end kept at 1280 when ``mult < 1``."""
    if mult == 1:
        return arch

    def w(c: int) -> int:
        return c if c == WIDE_END and mult < 1 else make_divisible(c * mult, 8)

    return replace(arch, stem=w(arch.stem), stages=tuple(replace(s, width=w(s.width)) for s in arch.stages),
                   head_channels=w(arch.head_channels) if arch.head_channels else 0)


# The papers' width-multiplier tables (x0.35 .. x1.4); x1.0 is MOBILENET_V2 / MOBILENEXT
MULTIPLIERS = (35, 50, 75, 140)
WIDTH_PRESETS = {f"{name}_{m:03d}": width_multiplied(a, m / 100) for name, a in
                 (("mobilenet_v2", MOBILENET_V2), ("mobilenext", MOBILENEXT)) for m in MULTIPLIERS}


# -- the space -----------------------------------------------------------------------------

# The default candidates, explicit (see space/darts.py's DEFAULT_OPS for why).
DEFAULT_CONVS = ("plain", "deconv", "do_conv", "weightnet")
DEFAULT_ATTENTIONS = ("none", "cga", "se", "dca_se", "lka", "ms_cam", "ulsam")
DEFAULT_FUSIONS = ("sum", "cga_fusion", "aff", "iaff")


def _check_list(name: str, values: Sequence[Any]) -> List[Any]:
    values = [values] if isinstance(values, (int, str)) else list(values)  # --space-opt kernels=5
    if not values or len(set(values)) != len(values):
        raise ValueError(f"{name} must be a non-empty list without repeats, got {values}")
    return values


@SPACES.register("mobile")
class MobileSpace(SearchSpace):
    """Settings (defaults): base "mobilenetv2" | "mobilenext"; base_width 100 (percent: the
    whole base, stem and first stage included, at the papers' width multiplier, e.g. 140 for
    x1.4; ``width_multiplied``); block_types (("ir", "sg") on the
    mobilenetv2 base; ("sg",) on mobilenext, whose 960-1600-channel stages would make an
    expanded IR block 5-30x the cost of a sandglass one: pass ("sg", "ir") to offer it);
    kernels (3, 5, 7); expansions (3, 6) (IR expansion / SG reduction); width_mults
    (75, 100, 125) percent of the base widths; depths (1, 2, 3, 4) per searched stage; convs
    (``DEFAULT_CONVS``), attentions (``DEFAULT_ATTENTIONS``), fusions (``DEFAULT_FUSIONS``): explicit
    lists, so that registering a module never changes a default search; heads ("plain", "genet");
    genet_groups 4; input_size (3, 224, 224); num_classes 1000; supernet_width 35 (percent of the deployed widths);
    supernet_min_resolution 4 (pixels per side of the supernet's last stage)."""

    name = "mobile"
    arch_cls = MobileArch
    presets = {"mobilenet_v2": MOBILENET_V2, "mobilenext": MOBILENEXT, **WIDTH_PRESETS}
    build = staticmethod(build)
    parts = staticmethod(parts)

    def __init__(self, base: str = "mobilenetv2", block_types: Optional[Sequence[str]] = None,
                 kernels: Sequence[int] = (3, 5, 7), expansions: Sequence[int] = (3, 6),
                 width_mults: Sequence[int] = (75, 100, 125), depths: Sequence[int] = (1, 2, 3, 4),
                 convs: Optional[Sequence[str]] = None, attentions: Optional[Sequence[str]] = None,
                 fusions: Optional[Sequence[str]] = None, heads: Sequence[str] = ("plain", "genet"),
                 genet_groups: int = 4, input_size: Sequence[int] = (3, 224, 224), num_classes: int = 1000,
                 supernet_width: int = 35, supernet_min_resolution: int = 4, ops: Optional[Sequence[str]] = None,
                 base_width: int = 100):
        if ops is not None:  # --ops: conv variants and attention plug-ins by name
            picked = split_names(ops, {"convs": DW_CONVS, "attentions": ATTENTIONS},
                                 {"convs": ["plain"], "attentions": ["none"]}, "mobile")
            convs = convs if convs is not None else picked["convs"]
            attentions = attentions if attentions is not None else picked["attentions"]
        if base not in BASES:
            raise ValueError(f"unknown base {base!r}; known: {', '.join(BASES)}")
        self.base = base
        if int(base_width) < 1:
            raise ValueError(f"base_width must be a positive percent, got {base_width}")
        self.base_width = int(base_width)  # the whole base network scaled as the papers do (x0.35..x1.4)
        if block_types is None:
            block_types = BLOCK_TYPES if base == "mobilenetv2" else ("sg",)
        self.block_types = _check_list("block_types", block_types)
        if any(t not in BLOCK_TYPES for t in self.block_types):
            raise ValueError(f"block_types must be among {BLOCK_TYPES}, got {self.block_types}")
        self.kernels = [int(k) for k in _check_list("kernels", kernels)]
        self.expansions = [int(t) for t in _check_list("expansions", expansions)]
        self.width_mults = [int(m) for m in _check_list("width_mults", width_mults)]
        self.depths = [int(d) for d in _check_list("depths", depths)]
        if any(k < 1 or k % 2 == 0 for k in self.kernels) or min(self.expansions) < 1 \
                or min(self.width_mults) < 1 or min(self.depths) < 1:
            raise ValueError("kernels must be odd, expansions, width_mults and depths >= 1")
        self.convs = DW_CONVS.check(_check_list("convs", convs if convs is not None else DEFAULT_CONVS))
        self.attentions = _check_list("attentions", attentions if attentions is not None else DEFAULT_ATTENTIONS)
        ATTENTIONS.check(a for a in self.attentions if a != "none")
        self.fusions = FUSIONS.check(_check_list("fusions", fusions if fusions is not None else DEFAULT_FUSIONS))
        self.heads = HEADS.check(_check_list("heads", heads))
        self.genet_groups = whole("genet_groups", genet_groups)
        self.input_size = tuple(wholes("input_size", input_size))
        self.num_classes = whole("num_classes", num_classes, 2)
        self.supernet_width = whole("supernet_width", supernet_width)
        self.supernet_min_resolution = whole("supernet_min_resolution", supernet_min_resolution)
        if "genet" in self.heads:
            pre = self.base_net.preset
            widths = [pre.head_channels] if pre.head_channels else \
                [self.width(self.base_net.stages[-1][0], m) for m in self.width_mults]
            widths += [_scaled(c, self.supernet_width) for c in widths]
            if self.genet_groups < 2 or any(c % self.genet_groups for c in widths):
                raise ValueError(f"genet_groups={self.genet_groups} must be >= 2 and divide the head widths {widths}")

    @staticmethod
    def width(base_width: int, percent: int) -> int:
        return make_divisible(base_width * percent / 100.0, 8)

    def settings(self) -> Dict[str, Any]:
        return {"space": self.name, "base": self.base, "block_types": list(self.block_types),
                "kernels": list(self.kernels), "expansions": list(self.expansions),
                "width_mults": list(self.width_mults), "depths": list(self.depths), "convs": list(self.convs),
                "attentions": list(self.attentions), "fusions": list(self.fusions), "heads": list(self.heads),
                "genet_groups": self.genet_groups, "input_size": list(self.input_size),
                "num_classes": self.num_classes, "supernet_width": self.supernet_width,
                "supernet_min_resolution": self.supernet_min_resolution,
                # added later: written only when set, so that tables built before it match exactly
                **({"base_width": self.base_width} if self.base_width != 100 else {})}

    @property
    def base_net(self) -> Base:
        """The base network at ``base_width`` (stem, first stage, stage widths, head)."""
        return Base(width_multiplied(BASES[self.base].preset, self.base_width / 100))

    def _slot_options(self) -> Dict[str, List[Any]]:
        return {"type": list(self.block_types), "kernel": list(self.kernels), "expand": list(self.expansions),
                "conv": list(self.convs), "attention": list(self.attentions), "fusion": list(self.fusions)}

    def choices(self) -> Dict[str, List[Any]]:
        out: Dict[str, List[Any]] = {}
        for j in range(1, len(self.base_net.stages) + 1):
            out[f"s{j}_width"] = list(self.width_mults)
            out[f"s{j}_depth"] = list(self.depths)
            for i in range(max(self.depths)):
                for field, opts in self._slot_options().items():
                    out[f"s{j}_b{i}_{field}"] = opts
        out["head"] = list(self.heads)
        return out

    def _canonical(self, arch: MobileArch) -> MobileArch:
        """Replace choices a block ignores by the first option."""
        stages = [list(st.blocks) for st in arch.stages]
        for p in plan(arch).blocks:
            b = p.block
            if not p.residual:
                b = replace(b, fusion=self.fusions[0])
            if p.form == "pw":
                b = replace(b, kernel=self.kernels[0], conv=self.convs[0])
            elif dw_kernel(b.conv, b.kernel) != b.kernel:  # e.g. deconv exists at 3x3 only
                b = replace(b, kernel=dw_kernel(b.conv, b.kernel))
            stages[p.stage][p.index] = b
        return replace(arch, stages=tuple(replace(st, blocks=tuple(bs)) for st, bs in zip(arch.stages, stages)))

    def decode(self, params: Dict[str, Any]) -> MobileArch:
        base = self.base_net
        stages = [base.preset.stages[0]]
        for j, (c, _, s) in enumerate(base.stages, 1):
            depth = int(params[f"s{j}_depth"])
            blocks = tuple(Block(type=params[f"s{j}_b{i}_type"], kernel=int(params[f"s{j}_b{i}_kernel"]),
                                 expand=int(params[f"s{j}_b{i}_expand"]), conv=params[f"s{j}_b{i}_conv"],
                                 attention=params[f"s{j}_b{i}_attention"], fusion=params[f"s{j}_b{i}_fusion"])
                           for i in range(depth))
            stages.append(Stage(self.width(c, int(params[f"s{j}_width"])), s, blocks))
        head = params["head"]
        arch = replace(base.preset, stages=tuple(stages), head=head,
                       head_groups=self.genet_groups if head == "genet" else 1,
                       input_size=self.input_size, num_classes=self.num_classes)
        arch.validate()
        return self._canonical(arch)

    def encode(self, arch: MobileArch) -> Dict[str, Any]:
        """Params with ``decode(encode(arch)) == arch`` for archs of this base whose values are
        among the choices and canonical (as ``decode`` returns them; the presets are)."""
        base = self.base_net
        fixed = replace(base.preset, stages=(), head="plain", head_groups=1, input_size=self.input_size,
                        num_classes=self.num_classes)
        if replace(arch, stages=(), head="plain", head_groups=1) != fixed \
                or arch.stages[:1] != base.preset.stages[:1] or len(arch.stages) != len(base.stages) + 1:
            raise ValueError(f"the arch does not have the {self.base} base's stem, first stage, stage count, "
                             f"head width, input size and classes of this space")
        out: Dict[str, Any] = {}
        opts = self._slot_options()

        def put(key: str, value: Any, options: List[Any]) -> None:
            if value not in options:
                raise ValueError(f"{key}={value!r} is not among this space's choices {options}")
            out[key] = value

        for j, ((c, _, s), st) in enumerate(zip(base.stages, arch.stages[1:]), 1):
            if st.stride != s:
                raise ValueError(f"stage {j} has stride {st.stride}, the {self.base} base has {s}")
            mults = [m for m in self.width_mults if self.width(c, m) == st.width]
            put(f"s{j}_width", mults[0] if mults else f"{st.width} channels", self.width_mults)
            put(f"s{j}_depth", len(st.blocks), self.depths)
            for i in range(max(self.depths)):
                b = st.blocks[i] if i < len(st.blocks) else None
                for field, options in opts.items():
                    put(f"s{j}_b{i}_{field}", getattr(b, field) if b else options[0], options)
        put("head", arch.head, self.heads)
        if arch.head == "genet" and arch.head_groups != self.genet_groups:
            raise ValueError(f"the arch's genet head has {arch.head_groups} groups, the space {self.genet_groups}")
        return out

    BASELINES = ("mobilenet_v2", "mobilenext")

    def scaled(self, arch: MobileArch, factor: float) -> MobileArch:
        """The papers' width multiplier (``width_multiplied``), at the space's input size and classes."""
        return width_multiplied(replace(arch, input_size=self.input_size, num_classes=self.num_classes), factor)

    # plain counterparts for module verdicts: the plain depthwise conv, no attention, the add, the
    # MobileNetV2 head
    PLAIN = {"conv": "plain", "attention": "none", "fusion": "sum", "head": "plain"}

    def modules(self, arch: MobileArch) -> Dict[Tuple[str, str], int]:
        return self.count_uses([(r, getattr(p.block, r)) for p in plan(arch).blocks
                                for r in ("conv", "attention", "fusion") if r != "fusion" or p.residual]
                               + [("head", arch.head)])

    def without(self, arch: MobileArch, role: str, name: str) -> MobileArch:
        plain = self.PLAIN[role]
        if role == "head":
            return replace(arch, head=plain, head_groups=1) if arch.head == name else arch
        return replace(arch, stages=tuple(replace(st, blocks=tuple(
            replace(b, **{role: plain}) if getattr(b, role) == name else b for b in st.blocks)) for st in arch.stages))

    def supernet(self, num_classes: int, input_size: Sequence[int]) -> nn.Module:
        return MobileSupernet(self, num_classes, input_size)

    def all_parts(self) -> Iterator[Part]:
        """Every distinct part the choices can produce (stem, fixed stage, searched slots, heads)."""
        base = self.base_net
        proto = self.decode({k: v[0] for k, v in self.choices().items()})
        seen = set()

        def new(ps):
            for p in ps:
                if p.key not in seen:
                    seen.add(p.key)
                    yield p

        yield from new([part(stem_step(self.input_size[0], proto.stem, tuple(self.input_size[1:])))])
        fixed = [p for p in plan(proto).blocks if p.stage == 0]
        for p in fixed:
            yield from new(block_parts(p))
        cins, hw = [proto.stages[0].width], fixed[-1].hw_out
        stateful = [a for a in self.attentions if a != "none" and stateful_key(ATTENTIONS.meta(a))]
        for j, (c, _, s) in enumerate(base.stages, 1):
            couts = [self.width(c, m) for m in self.width_mults]
            hw_out = _down(hw, s)
            for i in range(max(self.depths)):
                keeps = sorted({d == 1 and s == 1 for d in self.depths}) if i == 0 else [False]
                pairs = [(ci, co) for ci in cins for co in couts] if i == 0 else [(co, co) for co in couts]
                for (ci, co), keep, t, typ in itertools.product(pairs, keeps, self.expansions, self.block_types):
                    def at(**kw) -> BlockPlan:
                        b = Block(typ, kw.get("k", self.kernels[0]), t, kw.get("conv", self.convs[0]),
                                  kw.get("att", "none"), kw.get("fusion", self.fusions[0]))
                        return block_plan(j, i, b, ci, co, s if i == 0 else 1, hw if i == 0 else hw_out, keep)

                    for k, conv in itertools.product(self.kernels, self.convs):  # conv parts
                        yield from new(block_parts(at(k=dw_kernel(conv, k), conv=conv)))
                    if at().residual:  # fusion parts
                        for f in self.fusions:
                            yield from new(q for q in block_parts(at(fusion=f)) if q.kind.startswith("fusion:"))
                    for att in self.attentions:  # attention parts, as chain start and continuation
                        if att == "none":
                            continue
                        p = at(att=att)
                        for v in [p, replace(p, att_prev=True)] if att in stateful and i > 0 else [p]:
                            yield from new(q for q in block_parts(v) if q.kind.startswith("attention:"))
            cins, hw = couts, hw_out
        for head in self.heads:
            groups = self.genet_groups if head == "genet" else 1
            for c_last in cins:
                arch = replace(proto, head=head, head_groups=groups,
                               stages=proto.stages[:-1] + (replace(proto.stages[-1], width=c_last),))
                yield from new([part(head_step(arch, plan(arch).c_last, plan(arch).hw_last))])
