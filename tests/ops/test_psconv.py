"""PSConv: block-wise dilation reference, mask behaviour, effective vs stored params and FLOPs."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import space
from nas import flops
from space.ops import deploy
from space.ops.psconv import PSConv2d, PSConv2dDeployed, adapt_parts, effective_params


# The dense-equivalent count lives with its tests: the op library imports nothing from nas/.
def effective_flops(model: nn.Module, inputs) -> int:
    """``nas.flops`` count of ``model`` on ``inputs`` minus what PSConv runs but does not need:
    the masked dense-conv MACs and the mask multiply.  For a lone PSConv this is the dense
    conv's N*C_out*H'*W'*C_in*k*k, the figure the paper's "no extra FLOPs" refers to."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, o.shape))
             for m in model.modules() if isinstance(m, PSConv2d)]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    waste = 0
    for m, (n, _, h, w) in shapes.items():
        waste += n * h * w * m.masked_weights() + (m.conv.weight.numel() if m.mask_in_forward else 0)
    return int(flops.analysis(model, inputs).total()) - waste


def _blockwise_reference(m: PSConv2d, x: torch.Tensor) -> torch.Tensor:
    """Sum over (out-block o, in-block i) of one conv each: dilation d on the diagonal, 2d on
    the shifted block i = (o + P/2) % P, 1 elsewhere, with that block's weights."""
    P, d = m.parts, m.gwconv.dilation[0]
    s = m.conv.stride[0]
    cin, cout = m.conv.in_channels, m.conv.out_channels
    bi, bo = cin // P, cout // P
    outs = []
    for o in range(P):
        acc = 0
        for i in range(P):
            xi = x[:, i * bi:(i + 1) * bi]
            if i == o:
                w, dil = m.gwconv.weight[o * bo:(o + 1) * bo], d
            elif i == (o + P // 2) % P:
                w, dil = m.gwconv_shift.weight[o * bo:(o + 1) * bo], 2 * d
            else:
                w, dil = m.conv.weight[o * bo:(o + 1) * bo, i * bi:(i + 1) * bi], 1
            acc = acc + F.conv2d(xi, w, None, s, dil, dil)
        outs.append(acc)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("cin,cout,stride,d", [(16, 16, 1, 2), (16, 24, 2, 2), (8, 16, 1, 1),
                                               (24, 8, 2, 3)])
def test_equals_blockwise_dilation_reference(cin, cout, stride, d):
    m = PSConv2d(cin, cout, 3, stride, d, parts=4)
    x = torch.randn(2, cin, 11, 11)
    with torch.no_grad():
        assert (m(x) - _blockwise_reference(m, x)).abs().max().item() < 1e-5


def test_masked_weights_cannot_leak_and_get_no_gradient():
    m = PSConv2d(16, 16, 3, 1, 2)
    x = torch.randn(2, 16, 8, 8)
    masked = ~m.keep.expand_as(m.conv.weight)
    assert m.keep.dtype == torch.bool and "keep" in m.state_dict()
    assert torch.count_nonzero(m.conv.weight[masked]) == 0  # zeroed at init, as official
    with torch.no_grad():
        ref = m(x)
        m.conv.weight[masked] = 5.0  # e.g. a later kaiming re-init, as PS-ResNet's init_weights
        assert torch.equal(m(x), ref)
    m(x).pow(2).sum().backward()
    assert torch.count_nonzero(m.conv.weight.grad[masked]) == 0
    assert torch.count_nonzero(m.conv.weight.grad[~masked]) > 0


def test_mask_blocks():
    keep = PSConv2d(8, 8, 3, parts=4).keep[:, :, 0, 0]
    blocks = keep[::2, ::2]  # one entry per (out-block, in-block), block size 2
    expect = torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(blocks, expect)  # diagonal and (j, j+2) masked for P=4


def test_effective_params_equal_a_dense_conv_stored_are_1_5x():
    C = 16
    m = PSConv2d(C, C, 3, 1, 2, parts=4)
    assert m.effective_params() == effective_params(m) == C * C * 9 == 2_304
    assert flops.params(m) == 3_456 == 2_304 * 3 // 2
    op = space.OPS["psconv_3x3"](C, C, 1)
    assert effective_params(op) == 2_304 + 2 * C  # + BN


@pytest.mark.parametrize("stride", [1, 2])
def test_flops_counted_vs_effective(stride):
    C, h, n = 16, 9, 2
    ho = (h + stride - 1) // stride
    m = PSConv2d(C, C, 3, stride, 2, parts=4).eval()
    dense = n * C * ho * ho * C * 9
    counted = dense * 3 // 2  # fvcore counts the three convs that run: (1 + 2/P) x dense
    mask_mul = C * C * 9  # the weight-side multiply, once per forward
    assert flops.count(m, [(n, C, h, h)]) == counted + mask_mul
    dep = deploy(copy.deepcopy(m))
    assert type(dep) is PSConv2dDeployed
    assert flops.count(dep, [(n, C, h, h)]) == counted
    x = torch.randn(n, C, h, h)
    assert effective_flops(m, x) == effective_flops(dep, x) == dense
    with torch.no_grad():
        assert (dep(x) - m(x)).abs().max().item() < 1e-5


def test_op_effective_flops_is_dense_conv_plus_bn():
    C, h = 16, 8
    op = space.OPS["psconv_3x3"](C, 24, 2).eval()
    assert effective_flops(op, torch.randn(1, C, h, h)) == 24 * 4 * 4 * C * 9 + 2 * 24 * 4 * 4


def test_parts_adaptation():
    assert adapt_parts(16, 16, 4) == 4
    assert adapt_parts(12, 8, 8) == 4
    assert adapt_parts(12, 20, 4) == 4
    assert adapt_parts(6, 10, 4) == 2
    assert PSConv2d(12, 8, 3, parts=8).parts == 4
    with pytest.raises(ValueError):
        adapt_parts(9, 8, 4)
    m = PSConv2d(12, 8, 3, 1, 2, parts=8)
    x = torch.randn(1, 12, 7, 7)
    with torch.no_grad():
        assert (m(x) - _blockwise_reference(m, x)).abs().max().item() < 1e-5
