"""MS-CAM / AFF / iAFF: params, the w = 0.5 special case, iAFF's separate second stage, and the
AFF-/iAFF-ResNet-50 parameter counts of the open-aff README."""
import pytest
import torch
from torch import nn

import space
from nas import flops
from space.ops.mscam_aff import AFF, IAFF, MSCAM
from resnet50 import resnet50  # tests/resnet50.py


def _silence(cam: MSCAM) -> None:
    """Zero the last BN of both branches: local + global = 0, so w = sigmoid(0) = 0.5."""
    for branch in (cam.local_att, cam.global_att):
        nn.init.zeros_(branch[-1].weight)
        nn.init.zeros_(branch[-1].bias)


def test_params():
    assert flops.params(MSCAM(64, 4)) == 4576  # AFF is one MS-CAM (two branches)
    assert flops.params(AFF(64, 4)) == 4576
    assert flops.params(IAFF(64, 4)) == 9152
    C, r = 256, 16  # formula of modules.md: 2 * (2C^2/r + 3C/r + 3C)
    assert flops.params(MSCAM(C, r)) == 2 * (2 * C * C // r + 3 * C // r + 3 * C)


@pytest.mark.parametrize("train", [False, True])
def test_aff_with_half_weights_is_exactly_x_plus_y(train):
    m = AFF(32, 4).train(train)
    _silence(m.cam)
    x, y = torch.randn(2, 32, 7, 7), torch.randn(2, 32, 7, 7)
    with torch.no_grad():
        assert torch.equal(m.cam.weights(x + y), torch.full_like(x, 0.5))
        assert torch.equal(m(x, y), x + y)


def test_aff_is_the_official_expression():
    m = AFF(16, 4).eval()
    x, y = torch.randn(2, 16, 6, 6), torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        w = torch.sigmoid(m.cam.local_att(x + y) + m.cam.global_att(x + y))
        torch.testing.assert_close(m(x, y), 2 * x * w + 2 * y * (1 - w))


def test_mscam_local_varies_per_pixel_global_per_channel():
    m = MSCAM(16, 4).eval()
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        g = m.global_att(x)
        assert g.shape == (2, 16, 1, 1)
        torch.testing.assert_close(m(x), x * torch.sigmoid(m.local_att(x) + g))
        nn.init.zeros_(m.local_att[-1].weight)
        nn.init.zeros_(m.local_att[-1].bias)
        w = m.weights(x)  # only the global (SE-like) part left: constant over H, W
        assert torch.equal(w, w[:, :, :1, :1].expand_as(w))


def test_iaff_second_stage_has_its_own_local_and_global_branches():
    m = IAFF(16, 4).train()
    first = {id(p) for p in m.cam1.parameters()}
    assert not first & {id(p) for p in m.cam2.parameters()}
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    y = torch.randn(2, 16, 6, 6, requires_grad=True)
    m(x, y).pow(2).mean().backward()
    for branch in (m.cam2.local_att, m.cam2.global_att, m.cam1.local_att, m.cam1.global_att):
        grads = [p.grad for p in branch.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    # the output depends on the second global branch (the PyTorch port's bug leaves it dead)
    m.eval()
    with torch.no_grad():
        before = m(x, y)
        m.cam2.global_att[-1].bias.add_(1.0)
        assert not torch.allclose(m(x, y), before)


def test_iaff_formula():
    m = IAFF(16, 4).eval()
    x, y = torch.randn(1, 16, 5, 5), torch.randn(1, 16, 5, 5)
    with torch.no_grad():
        w1 = m.cam1.weights(x + y)
        xi = x * w1 + y * (1 - w1)
        w2 = torch.sigmoid(m.cam2.local_att(xi) + m.cam2.global_att(xi))
        torch.testing.assert_close(m(x, y), x * w2 + y * (1 - w2))
        _silence(m.cam1)
        _silence(m.cam2)
        torch.testing.assert_close(m(x, y), (x + y) / 2)  # no factor 2 in iAFF


def test_fvcore_flops_of_aff():
    C, r, H = 16, 4, 6
    n, i = H * H, C // r
    local = C * i * n + 2 * i * n + i * C * n + 2 * C * n  # convs + eval BNs (2 per element)
    glob = C * n + C * i + 2 * i + i * C + 2 * C  # GAP reads every element, then 1x1 maps
    blend = 3 * C * n  # x*w, y*(1-w), *2
    assert flops.count(AFF(C, r), [(1, C, H, H), (1, C, H, H)]) == local + glob + blend


def test_registrations():
    assert space.ATTENTIONS["ms_cam"] is MSCAM
    assert space.FUSIONS["aff"] is AFF and space.FUSIONS["iaff"] is IAFF
    assert {"ms_cam", "ms_cam_3x3"} <= set(space.OPS.names())


# -- AFF-/iAFF-ResNet-50 (open-aff README: 30.3M / 35.1M) -------------------------------------

def test_aff_and_iaff_resnet50_params():
    """Recipe [M] of modules.md: r = 16, AFF/iAFF in stages 3-4 only (MXNet --start-layer 3)."""
    plain = space.FUSIONS["sum"]
    assert flops.params(resnet50(fuse_for_stage=lambda i: plain)) == 25_557_032  # torchvision resnet50

    def with_fusion(cls):
        return lambda i: (lambda C: cls(C, r=16)) if i >= 2 else plain

    aff = flops.params(resnet50(fuse_for_stage=with_fusion(AFF)))
    iaff = flops.params(resnet50(fuse_for_stage=with_fusion(IAFF)))
    assert aff == 30_353_960 and iaff == 35_150_888
    assert abs(aff / 30.354e6 - 1) < 0.001 and abs(iaff / 35.151e6 - 1) < 0.001
    assert (aff // 100_000, iaff // 100_000) == (303, 351)  # the README's 30.3M / 35.1M
