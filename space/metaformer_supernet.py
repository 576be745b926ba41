"""The ``metaformer`` space's weight-sharing supernet (SPOS); see space/metaformer.py.

Separate from the space so that each file reads in one sitting; ``MetaformerSpace.supernet``
imports it when a search needs it.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
from torch import nn

from .choice import Choice
from .metaformer import (BRA_TOPKS, ChannelSub, Head, LayerNorm2d, MetaformerArch, NeckClassifier, Stage, TokenSub,
                         adapted_stem_stride, bra_kw, init_weights, make_downsample, make_local, make_stem,
                         neck_inputs, stage_resolutions)
from .ops.swiftformer import ConvEncoder

def _channel_key(name: str, ratio: float) -> str:
    return f"{name}@{ratio:g}"


class SuperPosition(nn.Module):
    """One block position of a supernet stage: every candidate, one path active (or skipped)."""

    def __init__(self, arch: MetaformerArch, dim: int, tokens: Dict[str, Dict[str, int]],
                 channels: Sequence[str], ratios: Sequence[float], conv: bool):
        super().__init__()
        self.local = make_local(arch.local, dim) if arch.local != "none" else None
        self.token = Choice({n: TokenSub(dim, n, kw, arch.token_norm, arch.layer_scale) for n, kw in tokens.items()})
        self.channel = Choice({_channel_key(n, r): ChannelSub(dim, n, r, arch.mlp_norm, arch.layer_scale)
                               for n in channels for r in ratios})
        self.conv = Choice({f"{r:g}": ConvEncoder(dim, r) for r in ratios}) if conv else None
        self.mode = "mixer"  # "mixer" | "conv" | "skip"

    def set(self, mode: str, stage: Stage) -> None:
        if mode == "conv":
            if self.conv is None:
                raise ValueError("this supernet has no ConvEncoder blocks (style without conv_blocks)")
            self.conv.set(f"{stage.mlp_ratio:g}")
        elif mode == "mixer":
            self.token.set(stage.token_mixer)
            self.channel.set(_channel_key(stage.channel_mixer, stage.mlp_ratio))
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "skip":
            return x
        if self.mode == "conv":
            return self.conv(x)
        if self.local is not None:
            x = self.local(x)
        return self.channel(self.token(x))


class _PlainHead(Head):
    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        return super().forward(feats[-1])


class _NeckHead(NeckClassifier):
    def __init__(self, name: str, widths: Sequence[int], neck_width: int, num_classes: int, norm: str, dist: int):
        n = neck_inputs(name)
        super().__init__(name, list(widths)[-n:], neck_width, num_classes, norm, dist)
        self.n = n

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        return super().forward(*feats[-self.n:])


class MetaformerSupernet(nn.Module):
    def __init__(self, style: Dict[str, Any], widths: Sequence[int], depths: Sequence[int],
                 token_mixers: Sequence[str], channel_mixers: Sequence[str], ratios: Sequence[float],
                 num_classes: int, input_size: Sequence[int], conv_blocks: bool,
                 necks: Sequence[str] = ("none",), neck_width: int = 32):
        super().__init__()
        c_in, h, w = input_size
        stride = adapted_stem_stride((h, w))
        res = stage_resolutions((h, w), stride)
        proto = MetaformerArch(stages=(), **style)  # the style fields only
        self.stem = make_stem(proto.stem, c_in, widths[0], stride)
        self.downsamples = nn.ModuleList(make_downsample(widths[i - 1], widths[i]) for i in range(1, 4))
        self.stages = nn.ModuleList()
        for i in range(4):
            tokens = {n: dict(bra_kw(res[i], BRA_TOPKS[i])) if n == "bra" else {} for n in token_mixers}
            self.stages.append(nn.ModuleList(
                SuperPosition(proto, widths[i], tokens, channel_mixers, ratios, conv_blocks)
                for _ in range(depths[i])))
        self.stage_norms = nn.ModuleList(LayerNorm2d(wd) if proto.stage_norm == "ln" else nn.Identity()
                                         for wd in widths)
        self.heads = Choice({n: _PlainHead(widths[-1], num_classes, proto.head_norm, proto.dist_head) if n == "none"
                             else _NeckHead(n, widths, neck_width, num_classes, proto.head_norm, proto.dist_head)
                             for n in necks})
        init_weights(self, proto.init)

    def set_active(self, arch: MetaformerArch) -> None:
        """Activate ``arch``'s mixers, ratios and depths (its widths are the deployed ones only)."""
        for positions, s in zip(self.stages, arch.stages):
            if s.depth > len(positions):
                raise ValueError(f"depth {s.depth} exceeds the supernet's {len(positions)} positions")
            for j, pos in enumerate(positions):
                pos.set("skip" if j >= s.depth else "conv" if j < s.conv_blocks else "mixer", s)
        self.heads.set(arch.neck)

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
