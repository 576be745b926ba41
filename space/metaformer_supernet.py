"""The ``metaformer`` space's weight-sharing supernet (SPOS with elastic widths); see space/metaformer.py.

Every block position of a stage holds one ``Sliced`` copy of every candidate token sub-block and
channel sub-block (a channel candidate is a mixer *and* an MLP ratio); depth is a prefix of the
positions.  Widths are represented: each deployed width option of a stage maps to a supernet
width proportional to it (the widest option to ``supernet_widths[i]``, ``width_map``), and the
narrower widths run on the leading channels of the widest's weights (space/sliced.py), so two
architectures that differ only in width are scored differently, and the path of a width is the
stand-alone network of that width with inherited weights (``subnet``).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

from .choice import Choice
from .metaformer_blocks import (ChannelSub, Head, LayerNorm2d, NeckClassifier, TokenSub, init_weights, make_downsample,
                                make_local, make_stem, neck_inputs)
from .metaformer_plan import BRA_TOPKS, MetaformerArch, MetaformerNet, Stage, adapted_stem_stride, bra_kw, stage_resolutions
from .ops.swiftformer import ConvEncoder
from .sliced import Sliced


def width_map(options: Sequence[int], widest: int) -> Dict[int, int]:
    """Deployed width -> supernet width, proportional (even, >= 4; the widest option -> ``widest``)."""
    top = max(options)
    out = {int(w): max(4, 2 * round(w * widest / top / 2)) for w in options}
    if len(set(out.values())) < len(out):
        raise ValueError(f"supernet width {widest} is too narrow to tell the widths {sorted(options)} apart "
                         f"(they map to {out}); raise supernet_widths")
    return out


def _channel_key(name: str, ratio: float) -> str:
    return f"{name}@{ratio:g}"


class SuperPosition(nn.Module):
    """One block position of a supernet stage: every candidate at every width, one path active."""

    def __init__(self, arch: MetaformerArch, dims: Sequence[int], tokens: Dict[str, Dict[str, int]],
                 channels: Sequence[str], ratios: Sequence[float], conv: bool):
        super().__init__()
        p = arch
        self.local = Sliced(lambda d: make_local(p.local, d), dims) if p.local != "none" else None
        self.token = Choice({n: Sliced(lambda d, n=n, kw=kw: TokenSub(d, n, kw, p.token_norm, p.layer_scale), dims)
                             for n, kw in tokens.items()})
        self.channel = Choice({_channel_key(n, r): Sliced(lambda d, n=n, r=r: ChannelSub(d, n, r, p.mlp_norm,
                                                                                         p.layer_scale), dims)
                               for n in channels for r in ratios})
        self.conv = Choice({f"{r:g}": Sliced(lambda d, r=r: ConvEncoder(d, r), dims) for r in ratios}) \
            if conv else None
        self.mode = "mixer"  # "mixer" | "conv" | "skip"

    def set(self, mode: str, stage: Stage, dim: int) -> None:
        if mode == "conv":
            if self.conv is None:
                raise ValueError("this supernet has no ConvEncoder blocks (style without conv_blocks)")
            self.conv.set(f"{stage.mlp_ratio:g}")
            self.conv.module.set(dim)
        elif mode == "mixer":
            self.token.set(stage.token_mixer)
            self.channel.set(_channel_key(stage.channel_mixer, stage.mlp_ratio))
            for m in (self.local, self.token.module, self.channel.module):
                if m is not None:
                    m.set(dim)
        self.mode = mode

    def active(self) -> List[Sliced]:
        """The modules this position runs, in the deployed network's order."""
        if self.mode == "skip":
            return []
        if self.mode == "conv":
            return [self.conv.module]
        return [m for m in (self.local, self.token.module, self.channel.module) if m is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.active():
            x = m(x)
        return x


class _PlainHead(Head):
    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        return super().forward(feats[-1])


class _NeckHead(NeckClassifier):
    def __init__(self, name: str, widths: Sequence[int], neck_width: int, num_classes: int, norm: str, dist: int):
        super().__init__(name, widths, neck_width, num_classes, norm, dist)
        self.n = len(widths)

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        return super().forward(*feats[-self.n:])


def _combos(dims: Sequence[Sequence[int]]) -> List[Tuple[int, ...]]:
    out: List[Tuple[int, ...]] = [()]
    for ds in dims:
        out = [c + (d,) for c in out for d in ds]
    return out


class MetaformerSupernet(nn.Module):
    def __init__(self, style: Dict[str, Any], width_maps: Sequence[Dict[int, int]], depths: Sequence[int],
                 token_mixers: Sequence[str], channel_mixers: Sequence[str], ratios: Sequence[float],
                 num_classes: int, input_size: Sequence[int], conv_blocks: bool,
                 necks: Sequence[str] = ("none",), neck_width: int = 32):
        super().__init__()
        c_in, h, w = input_size
        self.width_maps = [dict(m) for m in width_maps]
        dims = [sorted(m.values()) for m in self.width_maps]
        self.stem_stride = adapted_stem_stride((h, w))
        self.resolutions = stage_resolutions((h, w), self.stem_stride)
        self.input_size, self.num_classes, self.neck_width = tuple(input_size), num_classes, neck_width
        self.style = dict(style)
        proto = MetaformerArch(stages=(), **style)  # the style fields only
        self.stem = Sliced(lambda d: make_stem(proto.stem, c_in, d, self.stem_stride), dims[0])
        self.downsamples = nn.ModuleList(
            Sliced(lambda io: make_downsample(*io), _combos(dims[i - 1:i + 1])) for i in range(1, 4))
        self.stages = nn.ModuleList()
        for i in range(4):
            tokens = {n: dict(bra_kw(self.resolutions[i], BRA_TOPKS[i])) if n == "bra" else {} for n in token_mixers}
            self.stages.append(nn.ModuleList(
                SuperPosition(proto, dims[i], tokens, channel_mixers, ratios, conv_blocks)
                for _ in range(depths[i])))
        self.stage_norms = nn.ModuleList(Sliced(LayerNorm2d, ds) if proto.stage_norm == "ln" else nn.Identity()
                                         for ds in dims)
        heads: Dict[str, nn.Module] = {}
        for n in necks:
            if n == "none":
                heads[n] = Sliced(lambda d: _PlainHead(d, num_classes, proto.head_norm, proto.dist_head), dims[-1])
            else:
                k = neck_inputs(n)
                heads[n] = Sliced(lambda ws, n=n: _NeckHead(n, ws, neck_width, num_classes, proto.head_norm,
                                                            proto.dist_head), _combos(dims[4 - k:]), lazy=True)
        self.heads = Choice(heads)
        init_weights(self, proto.init)

    def widths_of(self, arch: MetaformerArch) -> List[int]:
        out = []
        for i, (s, m) in enumerate(zip(arch.stages, self.width_maps)):
            if s.width not in m:
                raise ValueError(f"stage {i + 1} width {s.width} is not a width option of this supernet "
                                 f"({sorted(m)})")
            out.append(m[s.width])
        return out

    def set_active(self, arch: MetaformerArch) -> None:
        """Activate ``arch``'s mixers, ratios, depths and widths."""
        dims = self.widths_of(arch)
        self.stem.set(dims[0])
        for i, d in enumerate(self.downsamples):
            d.set((dims[i], dims[i + 1]))
        for positions, s, dim, norm in zip(self.stages, arch.stages, dims, self.stage_norms):
            if s.depth > len(positions):
                raise ValueError(f"depth {s.depth} exceeds the supernet's {len(positions)} positions")
            for j, pos in enumerate(positions):
                pos.set("skip" if j >= s.depth else "conv" if j < s.conv_blocks else "mixer", s, dim)
            if isinstance(norm, Sliced):
                norm.set(dim)
        self.heads.set(arch.neck)
        head = self.heads.module
        head.set(dims[-1] if arch.neck == "none" else tuple(dims[4 - neck_inputs(arch.neck):]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        feats = []
        for i, (positions, norm) in enumerate(zip(self.stages, self.stage_norms)):
            if i:
                x = self.downsamples[i - 1](x)
            for pos in positions:
                x = pos(x)
            x = norm(x)
            feats.append(x)
        return self.heads(feats)

    # -- the active path as a stand-alone network ----------------------------------------------
    def subnet_arch(self, arch: MetaformerArch) -> MetaformerArch:
        """``arch`` at the supernet's widths, resolution and class count (what its path runs)."""
        dims = self.widths_of(arch)
        stages = tuple(replace(s, width=d, mixer_kw=bra_kw(self.resolutions[i], BRA_TOPKS[i])
                               if s.token_mixer == "bra" else s.mixer_kw)
                       for i, (s, d) in enumerate(zip(arch.stages, dims)))
        return replace(arch, stages=stages, stem_stride=self.stem_stride, input_size=self.input_size,
                       num_classes=self.num_classes, neck_width=self.neck_width, **self.style)

    def subnet(self, arch: MetaformerArch) -> nn.Module:
        """The stand-alone (undeployed) network of ``subnet_arch(arch)`` with the weights it
        inherits from this supernet: the module order follows ``space.metaformer.plan``."""
        self.set_active(arch)
        modules: List[Sliced] = [self.stem]
        for i, (positions, norm) in enumerate(zip(self.stages, self.stage_norms)):
            if i:
                modules.append(self.downsamples[i - 1])
            for pos in positions:
                modules += pos.active()
            if isinstance(norm, Sliced):
                modules.append(norm)
        modules.append(self.heads.module)
        net = MetaformerNet(self.subnet_arch(arch))
        if len(net.layers) != len(modules):
            raise RuntimeError(f"the supernet path has {len(modules)} modules, the network {len(net.layers)}")
        state = {f"layers.{k}.{n}": v for k, m in enumerate(modules) for n, v in m.state_at().items()}
        net.load_state_dict(state)
        return net
