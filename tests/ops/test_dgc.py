"""DGC (Su et al., ECCV 2020): the batched op against a per-head reference written from the
official ``HeadConv`` loop, pruning gradients, the progress schedule, the lasso side loss and
dense / gated FLOP formulas."""
from typing import Iterable, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import space
from nas import flops
from space.ops import aux_loss, set_progress
from space.ops.dgc import LASSO_WEIGHT, DGCConv, DynamicMultiHeadConv, _heads_dividing


# The gated count lives with its tests: the op library imports nothing from the counting side.
def gated_macs(model: nn.Module, input_shapes: Iterable[Sequence[int]]) -> int:
    """Effective MACs of ``model`` (eval mode, batch given in the shapes): the fvcore count of
    what runs minus, for every DGC conv, the work on its pruned input channels."""
    input_shapes = [tuple(s) for s in input_shapes]
    dense = flops.count(model, input_shapes)
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append((mod, args[0].shape)))
             for m in model.modules() if isinstance(m, DynamicMultiHeadConv)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*(torch.zeros(*s) for s in input_shapes))
    finally:
        model.train(was_training)
        for hk in hooks:
            hk.remove()
    return dense - sum(shape[0] * m.pruned_macs(shape[2], shape[3]) for m, shape in seen)


def _pre(m, x):
    """Pre-activation as the module runs it (eval: running statistics)."""
    return F.relu(m.norm(x))


def _head_gates(m, xr):
    """Head-by-head saliencies, each head's FC1/FC2 taken as separate linear layers."""
    s = xr.mean((2, 3))
    w1 = m.fc1.weight.flatten(1)
    w2, b2 = m.fc2.weight.flatten(1), m.fc2.bias
    gates = []
    for h in range(m.heads):
        rows1 = slice(h * m.hidden, (h + 1) * m.hidden)
        rows2 = slice(h * m.C_in, (h + 1) * m.C_in)
        y = F.relu(F.linear(s, w1[rows1]))
        gates.append(F.relu(F.linear(y, w2[rows2], b2[rows2])))
    return gates


def _zero_smallest(g, k):
    """The official pruning: every entry <= the k-th smallest of its row becomes 0 (so ties
    with the k-th smallest go too, as the official ``le`` mask does)."""
    if k == 0:
        return g
    kth = g.detach().sort(dim=1).values[:, k - 1:k]
    return g * (g.detach() > kth)


def _reference(m, x):
    """Per head: conv(x * g_h, W_h); output channel j*heads + h is head h's channel j."""
    xr = _pre(m, x)
    per_head = m.C_out // m.heads
    outs = []
    for h, g in enumerate(_head_gates(m, xr)):
        g = _zero_smallest(g, m.inactive_channels)
        w_h = m.weight[h * per_head:(h + 1) * per_head]
        outs.append(F.conv2d(xr * g[:, :, None, None], w_h, None, m.stride, m.padding))
    b, _, ho, wo = outs[0].shape
    out = x.new_empty(b, m.C_out, ho, wo)
    for h in range(m.heads):
        for j in range(per_head):
            out[:, j * m.heads + h] = outs[h][:, j]
    return out


def _randomise_bn(bn):
    bn.running_mean.uniform_(-0.3, 0.3)
    bn.running_var.uniform_(0.5, 1.5)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("c_in,c_out,heads,inactive,stride", [
    (12, 24, 4, 0, 1), (12, 24, 4, 5, 2), (16, 16, 4, 9, 1), (16, 16, 4, 5, 2), (16, 24, 3, 9, 1),
    (16, 24, 3, 0, 2)])
def test_grouped_conv_equals_per_head_loop(c_in, c_out, heads, inactive, stride):
    m = DynamicMultiHeadConv(c_in, c_out, 3, stride, heads=heads).eval()
    _randomise_bn(m.norm)
    m.inactive.fill_(inactive)
    x = torch.randn(3, c_in, 9, 9)
    with torch.no_grad():
        y, ref = m(x), _reference(m, x)
    assert y.shape == (3, c_out, (9 + stride - 1) // stride, (9 + stride - 1) // stride)
    assert (y - ref).abs().max() < 1e-5
    if inactive:  # the interleave matters: head-major order would differ
        per_head = c_out // m.heads
        head_major = torch.cat([ref[:, h::m.heads] for h in range(m.heads)], 1)
        assert per_head == 1 or (y - head_major).abs().max() > 1e-3


@pytest.mark.parametrize("c_in,c_out,heads,inactive,stride", [
    (12, 24, 4, 0, 1), (12, 24, 4, 5, 2), (16, 16, 4, 9, 1), (16, 24, 3, 9, 1)])
def test_channels_last_training_keeps_the_official_values_and_interleave(c_in, c_out, heads, inactive, stride):
    torch.manual_seed(0)
    m = DynamicMultiHeadConv(c_in, c_out, 3, stride, heads=heads).train()
    m.inactive.fill_(inactive)  # progress 0: training forwards leave the buffer as set
    x = torch.randn(3, c_in, 9, 9)

    def run(fmt):
        m.zero_grad(set_to_none=True)
        xi = x.contiguous(memory_format=fmt).requires_grad_()
        y = m(xi)
        y.backward(torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape).sin())
        return y.detach(), [xi.grad, m.weight.grad, m.fc1.weight.grad]

    (y_cl, g_cl), (y, g) = run(torch.channels_last), run(torch.contiguous_format)
    assert y_cl.is_contiguous(memory_format=torch.channels_last) and not y_cl.is_contiguous()
    torch.testing.assert_close(y_cl, y)
    for a, b in zip(g_cl, g):  # float rounding only: the conv sums in another order
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_ties_with_the_kth_smallest_gate_are_dropped_as_officially():
    # hidden=1 and a dead FC1 unit: every gate is relu(bias) = 1 (the init), all tied
    m = DynamicMultiHeadConv(8, 8).eval()
    assert m.hidden == 1
    g = torch.ones(2, m.heads, 8)
    assert torch.equal(m.prune(g, 3), torch.zeros_like(g))
    g[..., :4] = 0.5
    assert torch.equal((m.prune(g, 3) == 0).sum(-1), torch.full((2, m.heads), 4))


def test_pruning_keeps_the_scheduled_number_per_head():
    m = DynamicMultiHeadConv(16, 16).eval()
    m.inactive.fill_(6)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        g = m.prune(m.saliency(_pre(m, x)), 6)
    # at least 6 zero gates per head and sample (more only where ReLU already gave 0)
    assert ((g == 0).sum(-1) >= 6).all()
    with torch.no_grad():
        raw = m.saliency(_pre(m, x))
    kept = raw.sort(-1).values[..., 6:]
    assert torch.equal(g.sort(-1).values[..., 6:], kept)


def test_pruned_channels_get_zero_weight_gradient():
    m = DynamicMultiHeadConv(16, 24, 3, 1)
    set_progress(m, 1.0)
    m.train()
    x = torch.randn(1, 16, 7, 7)
    m(x).pow(2).sum().backward()
    k = m.inactive_channels
    assert k == round(16 * 0.75)
    with torch.no_grad():  # the same batch statistics as the training forward
        g = m.prune(m.saliency(F.relu(m.norm(x))), k)[0]  # heads, C_in
    per_head = 24 // m.heads
    for h in range(m.heads):
        grad = m.weight.grad[h * per_head:(h + 1) * per_head]  # (per_head, C_in, 3, 3)
        norms = grad.abs().sum((0, 2, 3))
        assert (g[h] == 0).sum() >= k
        assert torch.all(norms[g[h] == 0] == 0)
        assert torch.all(norms[g[h] > 0] > 0)
    # the kept gates are trained by the task loss itself (not only by the lasso)
    assert m.fc1.weight.grad.abs().sum() > 0 and m.fc2.weight.grad.abs().sum() > 0


def test_dropped_gates_get_zero_gradient_kept_gates_their_own():
    g = torch.rand(2, 4, 10, requires_grad=True)
    DynamicMultiHeadConv.prune(g, 4).mul(torch.arange(1.0, 11.0)).sum().backward()
    smallest = g.detach().argsort(-1)[..., :4]
    expected = torch.arange(1.0, 11.0).expand(2, 4, 10).scatter(-1, smallest, 0.0)
    assert torch.equal(g.grad, expected)


def test_schedule_follows_the_official_ramp():
    m = DynamicMultiHeadConv(16, 16)  # gate_factor 0.25: up to round(16*0.75) = 12
    points = [0.0, 1 / 12, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0]
    # 12 * 3/2 * (p - 1/12): 0.3 -> 0, 3.0 -> 3, 7.5 -> 8 (Python's round), 9.3 -> 9
    assert [m.inactive_at(p) for p in points] == [0, 0, 0, 3, 8, 9, 12, 12, 12]
    m2 = DynamicMultiHeadConv(64, 32, gate_factor=0.5)  # up to 32
    assert [m2.inactive_at(p) for p in (0.25, 0.5, 0.75)] == [8, 20, 32]


def test_only_training_forwards_move_the_buffer_and_eval_uses_it():
    op = DGCConv(16, 16, 1)
    m = op[0]
    x = torch.randn(2, 16, 6, 6)
    set_progress(op, 0.5)
    op.eval()
    with torch.no_grad():
        op(x)
    assert m.inactive_channels == 0  # as officially: eval never updates the schedule
    op.train()
    op(x)
    assert m.inactive_channels == 8
    # the buffer travels with the weights: a loaded model prunes the same in eval mode
    fresh = DGCConv(16, 16, 1)
    fresh.load_state_dict(op.state_dict())
    assert fresh[0].inactive_channels == 8
    op.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(op(x), fresh(x))


def test_fresh_model_in_eval_prunes_nothing():
    m = DynamicMultiHeadConv(12, 16).eval()
    _randomise_bn(m.norm)
    set_progress(m, 1.0)  # no training forward yet: nothing pruned
    x = torch.randn(2, 12, 7, 7)
    assert m.inactive_channels == 0
    xr = _pre(m, x)
    gates = _head_gates(m, xr)
    with torch.no_grad():
        y = m(x)
        dense = torch.cat([F.conv2d(xr * g[:, :, None, None], m.weight[h * 4:(h + 1) * 4], None, 1, 1)
                           for h, g in enumerate(gates)], 1)
    interleaved = torch.stack([dense[:, h * 4:(h + 1) * 4] for h in range(4)], 2).flatten(1, 2)
    assert (y - interleaved).abs().max() < 1e-5


def test_lasso_reaches_the_loss_through_aux_loss():
    op = space.OPS["dgc_3x3"](12, 16, 1)
    m = op[0]
    x = torch.randn(2, 12, 6, 6)
    op.train()
    op(x)
    with torch.no_grad():
        gates = _head_gates(m, F.relu(F.batch_norm(x, None, None, m.norm.weight, m.norm.bias, True)))
    expected = LASSO_WEIGHT * sum(g.mean() for g in gates)
    loss = aux_loss(op)
    assert loss is not None and torch.allclose(loss, expected, rtol=1e-5, atol=0)
    assert aux_loss(op) is None  # collected once
    loss.backward()  # the lasso alone trains the gate FCs
    assert m.fc1.weight.grad.abs().sum() > 0 and m.fc2.bias.grad.abs().sum() > 0
    assert m.weight.grad is None
    op.eval()
    with torch.no_grad():
        op(x)
    assert aux_loss(op) is None  # no side loss from eval forwards


def test_heads_adapt_to_the_output_channels():
    assert _heads_dividing(24, 4) == 4
    assert _heads_dividing(20, 3) == 2
    assert _heads_dividing(28, 8) == 7
    assert DynamicMultiHeadConv(16, 20, heads=3).heads == 2
    assert DynamicMultiHeadConv(16, 20, heads=3)(torch.randn(1, 16, 5, 5)).shape == (1, 20, 5, 5)


def test_squeeze_rate_is_halved_below_80_channels():
    assert DynamicMultiHeadConv(64, 16).hidden == 64 // 8
    assert DynamicMultiHeadConv(96, 16).hidden == 96 // 16
    assert DynamicMultiHeadConv(8, 8).hidden == 1


def _hand_dense(c_in, c_out, h, w, stride, heads, hidden, k=0, batch=1):
    ho, wo = (h + stride - 1) // stride, (w + stride - 1) // stride
    n = (2 * c_in * h * w          # BN (eval, affine)
         + c_in * h * w            # GAP
         + c_in * heads * hidden   # FC1 of every head
         + heads * hidden * c_in   # FC2 of every head
         + heads * c_in * h * w    # x * g_h
         + c_out * c_in * 9 * ho * wo  # dense grouped conv
         + 2 * c_out * ho * wo)    # the edge's BN
    if k:
        n += heads * c_in + heads * k  # topk over each head's gates, max over the k found
    return batch * n


def _hand_gated(c_in, c_out, h, w, stride, heads, hidden, k, batch=1):
    ho, wo = (h + stride - 1) // stride, (w + stride - 1) // stride
    kept = c_in - k
    n = (3 * c_in * h * w + 2 * c_in * heads * hidden + heads * c_in + heads * k
         + heads * kept * h * w + c_out * kept * 9 * ho * wo + 2 * c_out * ho * wo)
    return batch * n


@pytest.mark.parametrize("stride", [1, 2])
def test_dense_flops_equal_fvcore_and_hand_formula(stride):
    op = space.OPS["dgc_3x3"](16, 32, stride).eval()
    m = op[0]
    shape = (1, 16, 9, 9)
    hand = _hand_dense(16, 32, 9, 9, stride, m.heads, m.hidden)
    assert flops.count(op, [shape]) == hand
    with torch.no_grad():
        assert flops.analysis(op, torch.zeros(shape)).total() == hand
    assert gated_macs(op, [shape]) == hand  # nothing pruned yet


@pytest.mark.parametrize("stride", [1, 2])
def test_gated_flops_remove_the_pruned_channels(stride):
    op = space.OPS["dgc_3x3"](16, 32, stride)
    set_progress(op, 0.75)
    op.train()
    op(torch.randn(2, 16, 9, 9))
    m = op[0]
    k = m.inactive_channels
    assert k == 12
    shape = (2, 16, 9, 9)
    dense = _hand_dense(16, 32, 9, 9, stride, m.heads, m.hidden, k, batch=2)
    gated = _hand_gated(16, 32, 9, 9, stride, m.heads, m.hidden, k, batch=2)
    assert flops.count(op, [shape]) == dense
    assert gated_macs(op, [shape]) == gated
    ho = (9 + stride - 1) // stride
    assert dense - gated == 2 * k * (32 * 9 * ho * ho + m.heads * 81)
    # a network of several DGC convs: every one's pruned work is removed
    net = torch.nn.Sequential(op, space.OPS["dgc_3x3"](32, 32, 1))
    assert gated_macs(net, [shape]) == gated + _hand_dense(32, 32, ho, ho, 1, 4, 4, batch=2)


def test_topk_is_counted_per_the_flops_table():
    op = space.OPS["dgc_3x3"](16, 16, 1).eval()
    op[0].inactive.fill_(5)
    with torch.no_grad():
        by_op = flops.analysis(op, torch.zeros(1, 16, 8, 8)).by_operator()
    assert by_op["topk"] == 4 * 16  # one per gate read, as the table counts topk
    assert by_op["max"] == 4 * 5
    assert by_op["mul"] == 4 * 16 * 8 * 8
