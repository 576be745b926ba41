"""The ``metaformer`` space: four-stage hierarchical networks of token mixer + channel mixer blocks.

MetaFormer (Yu et al., arXiv 2111.11418) abstracts a transformer block as
``x + TokenMixer(Norm(x))`` then ``x + ChannelMixer(Norm(x))``; VAN (arXiv 2202.09741),
SwiftFormer (arXiv 2303.15446) and BiFormer (arXiv 2303.08810) are all instances of it, with
different stems, norms, layer scales and positional convs.  An architecture names, per stage,
its token mixer (``TOKEN_MIXERS``), channel mixer (``CHANNEL_MIXERS``), depth, width and MLP
ratio, and once for the network the block style (fields below), so the published models are
data here (``VAN_B0``, ``SWIFTFORMER_XS``, ``BIFORMER_T``).

Files: this one holds the presets and the space (choices, decode, all_parts); the architecture
and its plan (the one description of the network) are in space/metaformer_plan.py, the blocks in
space/metaformer_blocks.py, the weight-sharing supernet in space/metaformer_supernet.py.

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
from dataclasses import replace
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from torch import nn

from .base import Part, SearchSpace, split_names, whole, wholes
from .plan import bank_parts
from .metaformer_blocks import ChannelSub, TokenSub, available_necks, neck_inputs
from .metaformer_plan import (BRA_TOPKS, MetaformerArch, MetaformerNet, Stage, Step, adapted_stem_stride,
                              bra_kw, build, downsample_step, head_step, neck_step, parts, plan, stage_norm_step,
                              stage_resolutions, stage_steps, stem_step)
from .metaformer_supernet import MetaformerSupernet, width_map
from .ops.swiftformer import ConvEncoder
from .registry import CHANNEL_MIXERS, SPACES, TOKEN_MIXERS

# the space's public names, with the blocks and the plan they are built from
__all__ = ["MetaformerArch", "Stage", "MetaformerNet", "MetaformerSpace", "TokenSub", "ChannelSub", "ConvEncoder",
           "plan", "build", "parts", "bra_kw", "adapted_stem_stride", "available_necks", "recipe_drop_path",
           "PRESETS", "STYLES", "DROP_PATH"]

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
        self.depths = [wholes("depths", ds) for ds in depths]
        self.widths = [wholes("widths", ws) for ws in widths]
        self.mlp_ratios = wholes("mlp_ratios", mlp_ratios)
        self.necks = list(necks) if necks is not None else list(DEFAULT_NECKS)
        unknown = [n for n in self.necks if n not in available_necks()]
        if unknown:
            raise ValueError(f"unknown neck(s) {unknown}; available: {', '.join(available_necks())}")
        self.input_size = tuple(wholes("input_size", input_size))
        self.num_classes = whole("num_classes", num_classes, 2)
        self.supernet_widths = wholes("supernet_widths", supernet_widths)
        self.neck_width = whole("neck_width", neck_width)
        self.supernet_neck_width = whole("supernet_neck_width", supernet_neck_width)
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

    BASELINES = ("van_b0", "swiftformer_xs", "biformer_t")

    def scaled(self, arch: MetaformerArch, factor: float) -> MetaformerArch:
        """The MetaFormers' own knobs, widths and depths (VAN-B0..B3 and SwiftFormer XS..L3 differ in
        both), each times ``factor ** (1/3)``: compute grows with depth x width^2, so ``factor`` is
        about the fraction kept.  Widths rounded to 8 (>= 8), depths >= 1, a stage's mixer blocks
        kept before its leading conv blocks (SwiftFormer: depth - 1 ConvEncoders, then its attention
        block); the space's input size (``bra``'s windows follow it) and classes."""
        g = factor ** (1 / 3)
        res = stage_resolutions(self.input_size[1:], self.stem_stride)

        def one(i: int, s):
            depth = max(1, round(s.depth * g))
            return replace(s, width=max(8, 8 * round(s.width * g / 8)), depth=depth,
                           conv_blocks=max(0, min(s.conv_blocks, depth - (s.depth - s.conv_blocks))),
                           mixer_kw=bra_kw(res[i], BRA_TOPKS[i]) if s.token_mixer == "bra" else s.mixer_kw)

        stages = tuple(one(i, s) for i, s in enumerate(arch.stages))
        return replace(arch, stages=stages, stem_stride=self.stem_stride, input_size=self.input_size,
                       num_classes=self.num_classes)

    # plain counterparts for module verdicts: PoolFormer's pooling, the transformer MLP, no neck
    PLAIN = {"token": "pool_mixer", "channel": "mlp", "neck": "none"}

    def modules(self, arch: MetaformerArch) -> Dict[Tuple[str, str], int]:
        return self.count_uses([u for s in arch.stages if s.depth > s.conv_blocks
                                for u in (("token", s.token_mixer), ("channel", s.channel_mixer))]
                               + [("neck", arch.neck)])

    def without(self, arch: MetaformerArch, role: str, name: str) -> MetaformerArch:
        plain = self.PLAIN[role]
        if role == "neck":
            return replace(arch, neck=plain) if arch.neck == name else arch
        field = "token_mixer" if role == "token" else "channel_mixer"
        stages = tuple(replace(s, **{field: plain}, **({"mixer_kw": ()} if role == "token" else {}))
                       if getattr(s, field) == name else s for s in arch.stages)
        return replace(arch, stages=stages)

    def supernet(self, num_classes: int, input_size: Sequence[int]) -> nn.Module:
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
        return bank_parts(steps)
