"""DEA-Net CGA / CGAFusion: params, channel interleave, double sigmoid, reflect padding."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import space
from nas import flops
from space.ops.cga import CGA, CGAFusion, reflect_pad
from space.ops.common import official_forms


def test_cgafusion_params():
    assert flops.params(CGAFusion(128, 8)) == 33_523
    C, r = 64, 4  # DEA-Net's mix2: SA 99, CA, PA 2*49*C + C, 1x1 C^2 + C
    assert flops.params(CGAFusion(C, r)) == 99 + (C * C // r + C // r + C // r * C + C) + 99 * C + C * C + C
    assert flops.params(CGA(128, 8)) == 33_523 - (128 * 128 + 128)


def _reference_cga_maps(m, x):
    """SA, CA, PA written from cga.py's structure with functional ops (reflect padding)."""
    s = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True)[0]], 1)
    sattn = F.conv2d(F.pad(s, (3, 3, 3, 3), mode="reflect"), m.sa.sa.weight, m.sa.sa.bias)
    ca = m.ca
    cattn = F.conv2d(F.relu(F.conv2d(F.adaptive_avg_pool2d(x, 1), ca[1].weight, ca[1].bias)),
                     ca[3].weight, ca[3].bias)
    p1 = sattn + cattn
    b, c, h, w = x.shape
    inter = torch.empty(b, 2 * c, h, w)
    inter[:, 0::2], inter[:, 1::2] = x, p1  # x_0, p_0, x_1, p_1, ...
    pa = m.pa.pa2
    return torch.sigmoid(F.conv2d(F.pad(inter, (3, 3, 3, 3), mode="reflect"), pa.weight, pa.bias, groups=c))


def test_cga_matches_the_deablock_structure():
    m = CGA(16, 8).eval()
    x = torch.randn(2, 16, 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * _reference_cga_maps(m, x))


def test_pixel_attention_pairs_each_channel_with_its_own_guide():
    C = 6
    m = CGA(C).pa
    x, p = torch.randn(1, C, 5, 5), torch.randn(1, C, 5, 5)
    with torch.no_grad():
        nn.init.zeros_(m.pa2.weight)
        nn.init.zeros_(m.pa2.bias)
        m.pa2.weight[:, 0, 3, 3] = 1.0  # first input of each group: the feature channel
        torch.testing.assert_close(m(x, p), torch.sigmoid(x))
        m.pa2.weight[:, 0, 3, 3] = 0.0
        m.pa2.weight[:, 1, 3, 3] = 1.0  # second input of each group: its pattn1 channel
        torch.testing.assert_close(m(x, p), torch.sigmoid(p))


def test_cgafusion_double_sigmoid_and_output_conv():
    C = 8
    m = CGAFusion(C, 4).eval()
    x, y = torch.randn(2, C, 6, 6), torch.randn(2, C, 6, 6)
    with torch.no_grad():
        nn.init.zeros_(m.pa.pa2.weight)
        nn.init.zeros_(m.pa.pa2.bias)  # PA = sigmoid(0) = 0.5, then the fusion's own sigmoid
        m.conv.weight.copy_(torch.eye(C).view(C, C, 1, 1))
        nn.init.zeros_(m.conv.bias)
        s = torch.sigmoid(torch.tensor(0.5))
        out = m(x, y)
        torch.testing.assert_close(out, (x + y) + s * x + (1 - s) * y)
        assert not torch.allclose(out, (x + y) + 0.5 * x + 0.5 * y)  # single sigmoid would give this


def test_cgafusion_formula_with_random_weights():
    m = CGAFusion(16, 8).eval()
    x, y = torch.randn(1, 16, 7, 7), torch.randn(1, 16, 7, 7)
    with torch.no_grad():
        init = x + y
        w = torch.sigmoid(_reference_cga_maps(m, init))
        torch.testing.assert_close(m(x, y), m.conv(init + w * x + (1 - w) * y))


def test_reflect_pad_is_official_on_large_maps_and_reflects_again_on_small_ones():
    x = torch.randn(1, 2, 6, 4)
    assert torch.equal(reflect_pad(x, 3), F.pad(x, (3, 3, 3, 3), mode="reflect"))
    row = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    expect = torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0])  # 0 1 reflected, then reflected again
    out = reflect_pad(row, 3)
    assert out.shape == (1, 1, 7, 8)
    assert torch.equal(out[0, 0], expect.expand(7, 8))  # the 1-pixel side is replicated
    tri = torch.tensor([0.0, 1.0, 2.0]).view(1, 1, 1, 3).expand(1, 1, 3, 3)
    # the mirror extension of 0 1 2 (period 4): ... 1 2 1 | 0 1 2 | 1 0 1 ...
    assert torch.equal(reflect_pad(tri, 3)[0, 0, 0], torch.tensor([1.0, 2, 1, 0, 1, 2, 1, 0, 1]))


@pytest.mark.parametrize("hw", [1, 2, 3])
def test_tiny_maps_work(hw):
    x = torch.randn(1, 8, hw, hw)
    assert CGA(8)(x).shape == x.shape
    assert CGAFusion(8)(x, x).shape == x.shape
    assert space.OPS["cga"](8, 8, 2)(torch.randn(1, 8, 4, 4)).shape == (1, 8, 2, 2)


def test_registrations():
    assert space.ATTENTIONS["cga"] is CGA and space.FUSIONS["cga_fusion"] is CGAFusion
    assert {"cga", "cga_3x3"} <= set(space.OPS.names())


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("hw", [2, 9])
def test_pixel_attention_trains_through_depthwise_convs_equal_to_the_grouped_one(hw, fmt):
    """Training uses two depthwise convs (oneDNN's fast kernel) for the 2-per-group conv that
    inference keeps: same output, same gradients, the same parameters; a channels-last input
    keeps the training output channels-last (pattn1, a broadcast sum, arrives plain-contiguous)."""
    from space.ops.cga import PixelAttention
    torch.manual_seed(0)
    pa = PixelAttention(6)
    x = torch.randn(2, 6, hw, hw).contiguous(memory_format=fmt).requires_grad_()
    p = torch.randn(2, 6, hw, hw, requires_grad=True)
    grouped_calls = []
    pa.pa2.register_forward_hook(lambda m, i, o: grouped_calls.append(m.training))
    results = []
    for train in (True, False):
        pa.train(train)
        pa.zero_grad()
        x.grad = p.grad = None
        out = pa(x, p)
        assert not train or out.is_contiguous(memory_format=fmt)
        (out * torch.arange(out.numel()).view_as(out).sin()).sum().backward()
        results.append((out.detach(), x.grad.clone(), p.grad.clone(), pa.pa2.weight.grad.clone(), pa.pa2.bias.grad.clone()))
    assert grouped_calls == [False]  # the grouped conv ran in inference only
    with official_forms():
        pa.train()(x, p)
    assert grouped_calls == [False, True]
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-6)
