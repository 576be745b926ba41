"""CFNet (no official code, no verified numbers): the focal block's structure and exact receptive
field, and the transition block's three designs (shapes, formulas, identity outputs)."""
import pytest
import torch
import torch.nn.functional as F

import space
from nas import flops
from space.ops.cfnet import CFNetTransition, FocalNeXtBlock, cfnet_transition
from space.ops.fpt import NECKS


def impulse_support(block, C, size):
    """Pixels of the output that a unit impulse at the centre of channel 0 changes."""
    block = block.double().eval()
    for p in block.parameters():  # no accidental zeros, LN not at identity
        torch.nn.init.uniform_(p, 0.2, 1.0)
    base = torch.zeros(1, C, size, size, dtype=torch.float64)
    hit = base.clone()
    hit[0, 0, size // 2, size // 2] = 1.0
    with torch.no_grad():
        diff = (block(hit) - block(base)).abs().amax(1)[0]
    return diff != 0


@pytest.mark.parametrize("dilation", [3, 2, 1])
def test_focal_block_receptive_field_is_exactly_3_plus_3r(dilation):
    size = 33
    block = FocalNeXtBlock(8, dilation=dilation)
    reach = 3 + 3 * dilation  # 7x7 DW reaches 3, the 7x7 DW of dilation r reaches 3r more
    assert block.reach == reach
    support = impulse_support(block, 8, size)
    ys, xs = torch.nonzero(support, as_tuple=True)
    c = size // 2
    assert (ys.min().item(), ys.max().item()) == (c - reach, c + reach)
    assert (xs.min().item(), xs.max().item()) == (c - reach, c + reach)
    # and the whole (2*reach+1)^2 square is reached: the 7x7 fills the dilated taps' gaps
    assert int(support.sum()) == (2 * reach + 1) ** 2


def test_focal_block_matches_figure_5a():
    C = 8
    block = FocalNeXtBlock(C).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    x = torch.randn(2, C, 11, 9)

    def ln(t, norm):
        return F.layer_norm(t.permute(0, 2, 3, 1), (C,), norm.weight, norm.bias, 1e-6).permute(0, 3, 1, 2)

    y1 = x + F.gelu(ln(F.conv2d(x, block.dw.weight, block.dw.bias, padding=3, groups=C), block.norm1))
    y2 = y1 + F.gelu(ln(F.conv2d(y1, block.dw_dilated.weight, block.dw_dilated.bias, padding=9,
                                 dilation=3, groups=C), block.norm2))
    ref = x + block.pw2(F.gelu(block.pw1(y2)))
    with torch.no_grad():
        torch.testing.assert_close(block(x), ref)


def test_focal_block_params_and_flops():
    C, H, W = 16, 7, 5
    block = FocalNeXtBlock(C)
    # two 7x7 depthwise convs with bias, two LNs, 1x1 C->4C and 4C->C with bias
    assert sum(p.numel() for p in block.parameters()) == 8 * C * C + 109 * C
    with torch.no_grad():
        ops = flops.analysis(block.eval(), (torch.zeros(1, C, H, W),)).by_operator()
    assert ops["conv"] == H * W * (2 * 49 * C + 8 * C * C)
    assert ops["layer_norm"] == 2 * 5 * C * H * W


def test_focal_op_targets_deep_stages_and_adapts_to_the_contract():
    assert {"deep_stage", "large_kernel"} <= space.OPS.tags("cfnet_focal")
    assert "deepest" in space.OPS.meta("cfnet_focal")["stage"]
    op = space.OPS["cfnet_focal"](12, 24, 2).eval()
    assert op(torch.randn(1, 12, 9, 9)).shape == (1, 24, 5, 5)
    assert isinstance(op[-1], FocalNeXtBlock) and op[-1].pw1.in_channels == 24


@pytest.mark.parametrize("mode", ["add", "concat", "seq_add"])
@pytest.mark.parametrize("sizes", [(8, 4, 2), (9, 5, 3), (7, 3, 1)], ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("C_out", [8, 12])
def test_transition_shapes(mode, sizes, C_out):
    chans = (8, 16, 24)
    m = NECKS["cfnet_transition"](chans, C_out, mode=mode).train()
    xs = [torch.randn(2, c, s, s + 2) for c, s in zip(chans, sizes)]
    outs = m(xs)
    assert [tuple(o.shape) for o in outs] == [(2, C_out, sizes[0], sizes[0] + 2),
                                              (2, 16, sizes[1], sizes[1] + 2),
                                              (2, 24, sizes[2], sizes[2] + 2)]
    assert m.out_channels == [C_out, 16, 24]
    if mode != "seq_add":  # "no P4/P5 in a design: C4/C5 is the output (identity)"
        assert outs[1] is xs[1] and outs[2] is xs[2]
    else:
        assert outs[2] is xs[2]
    outs[0].square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def _up(t, like):
    return F.interpolate(t, size=like.shape[-2:], mode="bilinear", align_corners=False)


def test_transition_formulas():
    c3, c4, c5 = torch.randn(1, 8, 8, 6), torch.randn(1, 16, 4, 3), torch.randn(1, 24, 2, 2)
    add = cfnet_transition((8, 16, 24), 8, mode="add").eval()
    assert add.lateral3 is None  # C_out == d3: the paper's block, no extra layer
    ref = c3 + _up(add.conv5(c5), c3) + _up(add.conv4(c4), c3)
    torch.testing.assert_close(add([c3, c4, c5])[0], ref)

    cat = cfnet_transition((8, 16, 24), 8, mode="concat").eval()
    ref = cat.conv(torch.cat([c3, _up(c4, c3), _up(c5, c3)], 1))
    torch.testing.assert_close(cat([c3, c4, c5])[0], ref)

    seq = cfnet_transition((8, 16, 24), 8, mode="seq_add").eval()
    p4 = c4 + _up(seq.conv5(c5), c4)
    p3, q4, q5 = seq([c3, c4, c5])
    torch.testing.assert_close(q4, p4)
    torch.testing.assert_close(p3, c3 + _up(seq.conv4(p4), c3))
    assert seq.conv5.out_channels == 16  # Conv-d4 on C5, then Conv-d3 on P4

    # with the fusion convs at zero, "add" passes C3 through unchanged (scale factor 2 and 4)
    with torch.no_grad():
        for conv in (add.conv4, add.conv5):
            conv.weight.zero_()
            conv.bias.zero_()
    assert torch.equal(add([c3, c4, c5])[0], c3)


def test_transition_params_and_other_widths():
    d3, d4, d5 = 8, 16, 24
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(CFNetTransition((d3, d4, d5), d3, "add")) == (d5 + 1) * d3 + (d4 + 1) * d3
    assert count(CFNetTransition((d3, d4, d5), d3, "concat")) == (d3 + d4 + d5 + 1) * d3
    assert count(CFNetTransition((d3, d4, d5), d3, "seq_add")) == (d5 + 1) * d4 + (d4 + 1) * d3
    wide = CFNetTransition((d3, d4, d5), 12, "add")  # C_out != d3: C3 gets a 1x1 to C_out
    assert wide.lateral3 is not None and wide.lateral3.out_channels == 12
    with pytest.raises(ValueError):
        CFNetTransition((8, 16), 8)
    with pytest.raises(ValueError):
        CFNetTransition((8, 16, 24), 8, mode="sum")


def test_transition_counts_and_traces():
    m = cfnet_transition((8, 16, 24), 8, mode="seq_add").eval()
    xs = [torch.randn(1, c, s, s) for c, s in zip((8, 16, 24), (9, 5, 3))]
    with torch.no_grad():
        fca = flops.analysis(m, (xs,))
        assert fca.by_operator()["conv"] == 3 * 3 * 24 * 16 + 5 * 5 * 16 * 8
        assert not fca.unsupported_ops()
        traced = torch.jit.trace(m, (xs,), check_trace=False, strict=False)
        for u, v in zip(traced(xs), m(xs)):
            torch.testing.assert_close(u, v)
    assert NECKS.meta("cfnet_transition")["inputs"] == 3
