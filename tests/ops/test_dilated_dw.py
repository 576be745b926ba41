"""DilatedDWConv: trains through an undilated form equal to the dilated depthwise conv."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import space.ops.common as common
from space.ops.common import DilatedDWConv, official_forms
from space.registry import OPS

CL = torch.channels_last


def _grads(conv, x, g):
    x = x.detach().clone().requires_grad_()
    conv.zero_grad(set_to_none=True)
    y = conv(x)
    y.backward(g)
    return y, x.grad, conv.weight.grad, None if conv.bias is None else conv.bias.grad


@pytest.mark.parametrize("k,d,stride", [(3, 2, 1), (5, 2, 1), (7, 3, 1), (3, 2, 2), (5, 2, 2), (7, 3, 3),
                                        (7, 3, 2)])
@pytest.mark.parametrize("size", [3, 4, 8, 13, 16, 32])
@pytest.mark.parametrize("fmt", [CL, torch.contiguous_format])
def test_training_form_equals_the_dilated_conv(k, d, stride, size, fmt):
    torch.manual_seed(0)
    C = 6
    fast = DilatedDWConv(C, C, k, stride, d * (k // 2), dilation=d, groups=C, bias=stride != 2)
    ref = nn.Conv2d(C, C, k, stride, d * (k // 2), dilation=d, groups=C, bias=stride != 2)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(3, C, size, size + 1).contiguous(memory_format=fmt)
    g = torch.randn_like(ref(x))
    got, want = _grads(fast.train(), x, g), _grads(ref.train(), x, g)
    assert got[0].shape == want[0].shape and got[0].is_contiguous(memory_format=fmt)
    for a, b in zip(got, want):
        if b is not None:
            # float rounding only: a weight's gradient sums over every pixel in another order
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.detach().abs().max()))


def test_the_fold_runs_in_training_and_the_official_conv_in_eval(monkeypatch):
    calls = []
    real = common._dilated_as_undilated
    monkeypatch.setattr(common, "_dilated_as_undilated", lambda *a: calls.append(1) or real(*a))
    conv = DilatedDWConv(4, 4, 7, padding=9, dilation=3, groups=4)
    x = torch.randn(2, 4, 32, 32)
    conv.train()(x)
    assert calls == [1]
    conv.eval()(x)
    with official_forms():
        conv.train()(x)
    conv.train()(torch.randn(2, 4, 8, 8))  # 3 pixels per sub-grid side: a 7x7 kernel runs plain
    assert calls == [1]


def test_state_dict_is_that_of_a_conv():
    conv = DilatedDWConv(4, 4, 5, padding=4, dilation=2, groups=4, bias=False)
    assert isinstance(conv, nn.Conv2d) and list(conv.state_dict()) == ["weight"]


@pytest.mark.parametrize("name", list(OPS))
def test_every_dilated_depthwise_conv_of_an_op_trains_fast(name):
    # a plain dilated depthwise nn.Conv2d trains 1.5-5.7x slower on CPU (bench/dilated_conv.py)
    op = OPS[name](8, 8, 1)
    slow = [m for m in op.modules() if type(m) is nn.Conv2d and m.dilation[0] > 1
            and m.groups == m.in_channels == m.out_channels]
    assert not slow, f"{name}: use DilatedDWConv for {slow}"
