"""SE and DCA-SE: params, the chain through network state, DARTS costing, DCA-SE-ResNet-50."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import space
from nas import flops
from space.darts import Cell, DartsArch
from space.ops import link_state
from space.ops.base import WithState
from space.ops.dca import DCASE, SE
from resnet50 import resnet50  # tests/resnet50.py


def _se_params(C, r=16):
    h = C // r
    return C * h + h + h * C + C


@pytest.mark.parametrize("C", [32, 64, 256])
def test_se_params(C):
    assert flops.params(SE(C)) == _se_params(C)
    assert flops.params(DCASE(C)) == _se_params(C)  # stand-alone: no fusion weights
    linked = DCASE(C)
    link_state(linked)
    assert flops.params(linked) == _se_params(C) + 3 + 2 * C  # conv 2->1 with bias, LayerNorm(C)


def test_se_formula():
    m = SE(32).eval()
    x = torch.randn(2, 32, 5, 6)
    fc1, fc2 = m.fc[0], m.fc[2]
    with torch.no_grad():
        att = torch.sigmoid(F.linear(F.relu(F.linear(x.mean((2, 3)), fc1.weight, fc1.bias)), fc2.weight, fc2.bias))
        torch.testing.assert_close(m(x), x * att[:, :, None, None])


def _plain_se_like(op: DCASE) -> SE:
    se = SE(op.channels, op.reduction)
    se.fc.load_state_dict(op.fc.state_dict())
    return se.eval()


def test_standalone_dca_se_is_plain_se_on_every_call():
    op = DCASE(16).eval()
    se = _plain_se_like(op)
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(op(x), se(x))
    assert op.conv is None


class Chain(nn.Module):
    """A sequential stage of conv + dca_se blocks that owns the network state (as DartsNetwork)."""

    def __init__(self, C: int, n: int, clear: bool = True):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(C, C, 3, padding=1) for _ in range(n))
        self.atts = nn.ModuleList(DCASE(C) for _ in range(n))
        self.clear = clear
        self.state = link_state(self)

    def forward(self, x, trace=None):
        if self.clear:
            self.state.clear()
        for conv, att in zip(self.convs, self.atts):
            x = conv(x)
            if trace is not None:
                trace.append(x)
            x = att(x)
        return x


def _reference_dca(op: DCASE, x, prev):
    """CSELayer.forward written out: plain SE without prev, else the fused excitation."""
    b, c = x.shape[:2]
    gap = x.mean((2, 3))
    if prev is None:
        att = op.fc(gap)
    else:
        conv = op.conv[0]
        mixed = conv.weight[0, 0, 0, 0] * gap + conv.weight[0, 1, 0, 0] * prev + conv.bias[0]
        fuse = F.relu(F.layer_norm(mixed, (c,), op.conv[1].weight, op.conv[1].bias))
        att = op.fc(fuse)
    return x * att.view(b, c, 1, 1), gap * att


def test_chain_first_op_is_se_later_ops_read_the_previous_state():
    net = Chain(16, 3).eval()
    with torch.no_grad():
        for op in net.atts:  # non-trivial fusion: not the identity on gap
            op.conv[0].weight.copy_(torch.tensor([0.7, -1.3]).view(1, 2, 1, 1))
            op.conv[0].bias.fill_(0.2)
            op.conv[1].weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 16, 7, 7)
    pre_att = []
    with torch.no_grad():
        out = net(x, pre_att)
        prev, y = None, x  # the chain by hand, with the reference
        for conv, op in zip(net.convs, net.atts):
            y, prev = _reference_dca(op, conv(y), prev)
        torch.testing.assert_close(out, y)
        gap, att = net.state["dca"]
        torch.testing.assert_close(gap * att, prev)  # the last op's gap * att, as a pair
        first, second = net.atts[0], net.atts[1]
        net.state.clear()
        assert torch.equal(first(pre_att[0]), _plain_se_like(first)(pre_att[0]))  # first op == SE
        fused = second(pre_att[1])  # reads the state op 0 just wrote
        assert not torch.allclose(fused, _plain_se_like(second)(pre_att[1]), atol=1e-3)


def test_state_is_cleared_between_forwards():
    x = torch.randn(2, 8, 6, 6)
    net = Chain(8, 3).eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        leaky = Chain(8, 3, clear=False).eval()
        leaky.load_state_dict(net.state_dict())
        first, second = leaky(x), leaky(x)
    assert torch.equal(first, net(x))
    assert not torch.allclose(first, second)  # without clearing, op 0 would read the last op's state


def test_chain_trains_and_gradients_flow_through_the_state():
    net = Chain(8, 2).train()
    net(torch.randn(2, 8, 5, 5)).pow(2).mean().backward()
    second = net.atts[1]
    assert all(p.grad is not None for p in second.conv.parameters())
    assert second.conv[0].weight.grad[0, 1].abs() > 0  # the tap on the previous state is trained
    first = net.atts[0]
    assert first.conv[0].weight.grad is None  # the chain's first op never fuses (as DCANet's first block)
    assert net.convs[0].weight.grad.abs().sum() > 0


def test_declared_prev_channels_build_att_fc_and_shapes_are_checked():
    op = DCASE(32, prev_channels=16)
    state = link_state(op)
    h = 32 // 16
    # bottleneck att_fc: Linear 16->2, LN(2), Linear 2->32, LN(32)
    assert flops.params(op.att_fc) == 16 * h + h + 2 * h + h * 32 + 32 + 64
    x = torch.randn(2, 32, 4, 4)
    state["dca"] = (torch.randn(2, 16), torch.rand(2, 16))
    assert op(x).shape == x.shape and state["dca"][0].shape == (2, 32)
    assert [t.shape for t in op.example_state(x)] == [(2, 16), (2, 16)]
    state["dca"] = (torch.randn(2, 8), torch.rand(2, 8))
    with pytest.raises(ValueError, match="prev_channels"):
        op(x)
    linear = DCASE(32, prev_channels=16, att_fc="linear")
    link_state(linear)
    assert flops.params(linear.att_fc) == 16 * 32 + 32 + 64


def test_withstate_costs_both_forms():
    op = space.OPS["dca_se"](16, 16, 1)
    x = [(1, 16, 8, 8)]
    first, later = flops.count(WithState(op, False), x), flops.count(WithState(op, True), x)
    C = 16
    # the fusion: the previous gap * att, conv 2->1 over C positions, LayerNorm over C (fvcore:
    # 5 per element with affine)
    assert later - first == C + 2 * C + 5 * C
    assert space.OPS.meta("dca_se")["state"] == "dca" and space.OPS.meta("dca_se_3x3")["state"] == "dca"


def test_darts_network_with_dca_se_edges_costs_add_up_exactly():
    normal = Cell(edges=(("dca_se", 0), ("dca_se", 1), ("dca_se_3x3", 2), ("sep_conv_3x3", 0),
                         ("dca_se", 3), ("lka", 1), ("skip_connect", 4), ("dca_se", 2)),
                  combine=("sum", "aff", "iaff", "cga_fusion"))
    reduce = Cell(edges=(("dca_se", 0), ("max_pool_3x3", 1), ("dca_se", 2), ("ms_cam", 0),
                         ("ulsam", 3), ("cga", 1), ("dca_se", 4), ("se", 2)),
                  combine=("sum", "cga_fusion", "aff", "sum"))
    # cells 0 N | 1 R | 2 R, 3 N: the last stage's chain runs from a reduction into a normal cell
    arch = DartsArch(normal=normal, reduce=reduce, channels=8, cells=4, input_size=(3, 16, 16))
    parts = space.parts(arch)
    keys = [p.key for p in parts if p.kind == "dca_se"]
    assert any("prev=0" in k for k in keys) and any("prev=1" in k for k in keys)
    # 3 stages: each stage's first dca_se runs as plain SE
    assert sum("prev=0" in k for k in keys) == 3
    net = space.build(arch)
    assert flops.PartCounter().total(parts) == flops.count(net, [(1, 3, 16, 16)])
    net.eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


# -- DCA-SE-ResNet-50 (DCANet README: SE-ResNet-50 28.09M, DCA-SE-ResNet-50 28.65M) -------------

class ResNet50(nn.Module):
    """torchvision-style ResNet-50 with an attention after each bottleneck's last BN, one DCA
    chain through the whole network as DCANet's ResNets (state cleared only per forward)."""

    def __init__(self, att):
        super().__init__()
        self.body = resnet50(att=att)
        self.state = link_state(self)

    def forward(self, x):
        self.state.clear()
        return self.body(x)


def test_se_and_dca_se_resnet50_params():
    se = flops.params(ResNet50(lambda cin, c: SE(c)))
    assert se == 28_088_024  # README 28.09M, measured 28.088M
    # DCANet builds CSELayer(inplanes, planes*4): att_fc wherever the widths differ
    dca = ResNet50(lambda cin, c: DCASE(c, prev_channels=cin))
    assert flops.params(dca) == 28_651_736  # README 28.65M (bottleneck att_fc)
    head = ResNet50(lambda cin, c: DCASE(c, prev_channels=cin, att_fc="linear"))
    assert flops.params(head) == 30_898_696  # the HEAD resnet_se_dca.py: 30.899M
    dca.eval()
    with torch.no_grad():  # the chain crosses the stage transitions through att_fc
        assert dca(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    assert dca.state["dca"][1].shape == (1, 2048)
