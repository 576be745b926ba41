"""Training keeps a channels-last input channels-last into every convolution, forward and backward.

Networks train channels-last (1.3x on this CPU, bench/train_speed.py).  A plain-contiguous tensor
reaching a conv there (a broadcast, a reshape in NCHW order, a slice's gradient) makes oneDNN
reorder it, forward and backward, and the ops after it mix layouts: CGAFusion ran 1.3x slower at
16 channels for one such map.  Convs are watched through ``torch.nn.functional.conv2d``, which
``nn.Conv2d`` and the ops' functional convs call, and a hook on each conv's output sees the
gradient its backward receives.
"""
import pytest
import torch
import torch.nn.functional as F

from space.registry import FUSIONS, OPS

CL = torch.channels_last

# Ops whose training form still hands a conv plain-contiguous maps, and why they are left:
KNOWN = {
    # WeightNet's per-sample kernels run as one grouped conv over the batch folded into the
    # channels, in NCHW order; 2.6% of the DARTS supernet's step (step_time_darts_cpu.txt).
    "weightnet_3x3",
}


def _plain(t: torch.Tensor) -> bool:
    """A map in NCHW order (1-channel and 1x1 maps are both layouts at once).  A channel slice
    of a channels-last tensor (a concatenation's gradient) keeps channels-last order and passes."""
    return t.dim() == 4 and t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1 and t.stride(1) != 1


@pytest.fixture
def watch(monkeypatch):
    seen = []
    real = F.conv2d

    def conv2d(x, w, *a, **kw):
        if _plain(x):
            seen.append(("input", tuple(x.shape), x.stride()))
        y = real(x, w, *a, **kw)
        if y.requires_grad:
            y.register_hook(grad_hook)
        return y

    def grad_hook(g):  # returns None: the gradient itself is left as it is
        if _plain(g):
            seen.append(("gradient", tuple(g.shape), g.stride()))

    monkeypatch.setattr(F, "conv2d", conv2d)
    return seen


def _run(module, inputs):
    module = module.to(memory_format=CL).train()
    xs = [torch.randn(*s).contiguous(memory_format=CL).requires_grad_() for s in inputs]
    y = module(*xs)
    if y.requires_grad:  # ``none`` has no gradient
        y.backward(torch.randn_like(y))  # channels-last, as the gradient a next conv hands back


def _mark(name):
    if name not in KNOWN:
        return name
    return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason="known, see KNOWN"))


@pytest.mark.parametrize("name", [_mark(n) for n in OPS])
@pytest.mark.parametrize("c_in,c_out,stride", [(16, 16, 1), (8, 16, 2)])
def test_every_op_trains_channels_last_into_its_convs(name, c_in, c_out, stride, watch):
    torch.manual_seed(0)
    _run(OPS[name](c_in, c_out, stride), [(4, c_in, 12, 12)])
    assert not watch, f"{name}: plain-contiguous maps reach its convs: {watch[:3]}"


@pytest.mark.parametrize("name", list(FUSIONS))
def test_every_fusion_trains_channels_last_into_its_convs(name, watch):
    torch.manual_seed(0)
    _run(FUSIONS[name](16), [(4, 16, 12, 12), (4, 16, 12, 12)])
    assert not watch, f"{name}: plain-contiguous maps reach its convs: {watch[:3]}"
