"""Sandglass block (MobileNeXt): structure, hand-counted params, the official form rule, the
shortcut, the DARTS edge ops, and MobileNeXt-1.0 rebuilt from SGBlocks as mnext.py does."""
import pytest
import torch
from torch import nn

from nas import flops
from space import OPS
from space.ops.common import DWConv
from space.ops.common import make_divisible
from space.ops.sandglass import SGBlock, SandglassEdge, sandglass_form, sandglass_hidden


def _bn(c):
    return 2 * c


def _dw(c, k=3):
    return c * k * k


def test_make_divisible_and_hidden_width_follow_mnext():
    assert make_divisible(24, 16) == 32 and make_divisible(214, 16) == 208 and make_divisible(18, 8) == 24
    assert sandglass_hidden(192, 192, 6) == 32  # 192 // 6
    assert sandglass_hidden(96, 144, 6) == 32  # 16 < 24 -> make_divisible(24, 16)
    assert sandglass_hidden(960, 1280, 6) == 208  # 160 < 213.3 -> make_divisible(214, 16)
    assert sandglass_hidden(32, 96, 2) == 16  # exactly oup / 6: no floor


def test_form_rule_of_the_official_block():
    assert sandglass_form(32, 96, 2, 2) == ("full", False)  # t == 2: first block
    assert sandglass_form(288, 384, 1, 6) == ("pw", False)  # channel change, stride 1
    assert sandglass_form(144, 192, 2, 6) == ("pw_dw", False)  # channel change, stride 2
    assert sandglass_form(192, 192, 1, 6) == ("full", True)  # the identity block
    assert sandglass_form(96, 144, 1, 6, keep_3x3=True) == ("full", False)
    assert sandglass_form(192, 192, 2, 6) == ("full", False)  # departure: stride honoured, no shortcut


def test_identity_block_structure_and_params():
    blk = SGBlock(192, 192, 1, 6)
    seq = list(blk.conv.modules())
    convs = [m for m in seq if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.groups) for c in convs] == [
        (192, 192, (3, 3), (1, 1), 192), (192, 32, (1, 1), (1, 1), 1), (32, 192, (1, 1), (1, 1), 1),
        (192, 192, (3, 3), (1, 1), 192)]
    # activations: after the first dw and after the expanding 1x1 only (the bottleneck is linear)
    kinds = [type(m).__name__ for m in blk.conv.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU6))]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU6", "Conv2d", "BatchNorm2d", "Conv2d", "BatchNorm2d",
                     "ReLU6", "Conv2d", "BatchNorm2d"]
    expected = _dw(192) + _bn(192) + 192 * 32 + _bn(32) + 32 * 192 + _bn(192) + _dw(192) + _bn(192)
    assert flops.params(blk) == expected
    blk.eval()
    x = torch.randn(2, 192, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), blk.conv(x) + x)


@pytest.mark.parametrize("inp,oup,stride,t,keep,expected", [
    (288, 384, 1, 6, False, 288 * 64 + _bn(64) + 64 * 384 + _bn(384)),
    (144, 192, 2, 6, False, 144 * 32 + _bn(32) + 32 * 192 + _bn(192) + _dw(192) + _bn(192)),
    (32, 96, 2, 2, False, _dw(32) + _bn(32) + 32 * 16 + _bn(16) + 16 * 96 + _bn(96) + _dw(96) + _bn(96)),
    (96, 144, 1, 6, True, _dw(96) + _bn(96) + 96 * 32 + _bn(32) + 32 * 144 + _bn(144) + _dw(144) + _bn(144)),
])
def test_other_forms_params_and_no_shortcut(inp, oup, stride, t, keep, expected):
    blk = SGBlock(inp, oup, stride, t, keep)
    assert flops.params(blk) == expected
    assert not blk.identity
    x = torch.randn(1, inp, 8, 8)
    blk.eval()
    with torch.no_grad():
        torch.testing.assert_close(blk(x), blk.conv(x))
        assert blk(x).shape == (1, oup, 8 // stride, 8 // stride)


def test_identity_div_adds_the_shortcut_to_the_leading_channels_only():
    blk = SGBlock(64, 64, 1, 4, identity_div=4).eval()
    x = torch.randn(2, 64, 6, 6)
    with torch.no_grad():
        out, branch = blk(x), blk.conv(x)
    torch.testing.assert_close(out[:, :16], branch[:, :16] + x[:, :16])
    torch.testing.assert_close(out[:, 16:], branch[:, 16:])


def test_layers_get_the_official_initialisation():
    blk = SGBlock(192, 192, 1, 6)
    convs = [m for m in blk.modules() if isinstance(m, nn.Conv2d)]
    for c in convs:  # mnext.py: N(0, sqrt(2 / (k * k * out_channels)))
        std = (2.0 / (c.kernel_size[0] * c.kernel_size[1] * c.out_channels)) ** 0.5
        assert c.weight.std().item() == pytest.approx(std, rel=0.15)
        assert abs(c.weight.mean().item()) < 0.2 * std


def test_kernel_and_conv_variant_reach_both_depthwise_convs():
    blk = SGBlock(64, 64, 1, 4, kernel_size=5, dw_conv="plain")
    dws = [m for m in blk.modules() if isinstance(m, DWConv)]
    assert len(dws) == 2 and all(d[0].kernel_size == (5, 5) and d[0].padding == (2, 2) for d in dws)


@pytest.mark.parametrize("name,k", [("sandglass_3x3", 3), ("sandglass_5x5", 5)])
def test_darts_edge_ops(name, k):
    op = OPS[name](16, 16, 1)
    assert isinstance(op, SandglassEdge) and op.identity
    hidden = 8  # t = 2, above the 16 / 6 floor
    assert flops.params(op) == (_dw(16, k) + _bn(16) + 16 * hidden + _bn(hidden) + hidden * 16 + _bn(16)
                                + _dw(16, k) + _bn(16))
    op.eval()
    x = torch.randn(1, 16, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(op(x), op.conv(x) + x)
    red = OPS[name](12, 24, 2)
    assert not red.identity
    convs = [m for m in red.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].stride == (1, 1) and convs[-1].stride == (2, 2)  # stride on the last dw conv
    assert (convs[0].in_channels, convs[-1].out_channels) == (12, 24)
    assert red(torch.randn(1, 12, 9, 9)).shape == (1, 24, 5, 5)


def test_mobilenext_rebuilt_from_sgblocks_matches_the_official_figures():
    cfgs = [(2, 96, 1, 2), (6, 144, 1, 1), (6, 192, 3, 2), (6, 288, 3, 2), (6, 384, 4, 1), (6, 576, 4, 2),
            (6, 960, 3, 1), (6, 1280, 1, 1)]
    layers, inp = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()], 32
    for t, c, n, s in cfgs:  # as MXNet: keep_3x3 on one-block stride-1 stages
        layers.append(SGBlock(inp, c, s, t, n == 1 and s == 1))
        layers += [SGBlock(c, c, 1, t) for _ in range(n - 1)]
        inp = c
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, 1000))
    assert flops.params(net) == pytest.approx(3.535e6, rel=0.01)  # [M] on mnext.py: 3,535,416
    net.eval()
    with torch.no_grad():
        by_op = flops.analysis(net, (torch.zeros(1, 3, 224, 224),)).by_operator()
    assert by_op["conv"] + by_op["linear"] == pytest.approx(311e6, rel=0.03)
    assert sum(by_op.values()) == pytest.approx(327.5e6, rel=0.03)
