"""The fast recipe's model (models/fastnet.py) and optimiser (training/recipes/muon.py)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from cnnlab.config import HeadConfig, ModelConfig
from cnnlab.errors import ModelError
from cnnlab.models.fastnet import (
    FastBatchNorm,
    FastConv2d,
    FastNet,
    _Conv3x3GemmWgrad,
    init_whitening,
    set_thread_updates_bn_stats,
)
from cnnlab.models.io import load_model, save_model
from cnnlab.models.registry import create_model, own_models
from cnnlab.training.recipes.muon import Muon, orthogonalize

pytestmark = pytest.mark.usefixtures("one_thread")


def _classifier(**kwargs):
    cfg = ModelConfig(arch="cifar_fastnet", head=HeadConfig(pooling="max"), kwargs=kwargs)
    return create_model(cfg, [f"c{i}" for i in range(10)])


def test_registered_and_shapes():
    assert "cifar_fastnet" in own_models()
    model = _classifier(widths=[16, 32, 48], depth=2)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    feats = model.forward_features(x)
    assert feats.shape == (4, 48, 3, 3)  # 32 -> whiten 31 -> pools 15, 7, 3
    assert model.num_features == 48
    assert model(x).shape == (4, 10)


@pytest.mark.parametrize("kwargs", [{"widths": []}, {"depth": 0}, {"activation": "tanh"}, {"bogus": 1}])
def test_bad_kwargs_are_model_errors(kwargs):
    with pytest.raises(ModelError):
        _classifier(**kwargs)


def test_convolutions_start_as_identity():
    conv = FastConv2d(8, 12)
    x = torch.randn(2, 8, 5, 5)
    y = conv(x)
    assert torch.equal(y[:, :8], x)  # the first min(c_in, c_out) filters pass their channel through
    assert y[:, 8:].abs().sum() > 0  # the others are random


def test_whitening_decorrelates_patches():
    torch.manual_seed(0)
    net = FastNet(widths=[8], depth=1)
    # Correlated pixels: a smooth random field plus a little noise, as uint8.
    base = torch.rand(200, 3, 8, 8)
    imgs = F.interpolate(base, size=(32, 32), mode="bilinear", align_corners=False)
    imgs = ((imgs + 0.05 * torch.rand(200, 3, 32, 32)) * 200).clamp(0, 255).to(torch.uint8)
    init_whitening(net, imgs, eps=1e-6)
    out = F.conv2d(imgs.float() / 255.0, net.whiten.weight, net.whiten.bias)
    half = out[:, :12].permute(1, 0, 2, 3).reshape(12, -1)  # the 12 eigen-filters (the rest are negatives)
    cov = torch.cov(half)
    assert torch.allclose(cov, torch.eye(12), atol=0.05)
    assert half.mean(1).abs().max() < 1e-3
    assert torch.equal(out[:, 12:], -out[:, :12])
    assert net.whitened and not net.whiten.weight.requires_grad


def test_whitening_through_the_classifier_takes_nhwc_images():
    model = _classifier(widths=[8, 8, 8])
    imgs = torch.randint(0, 256, (50, 32, 32, 3), dtype=torch.uint8)  # (N, H, W, 3)
    init_whitening(model, imgs)
    assert model.backbone.whitened
    with pytest.raises(ModelError):
        init_whitening(torch.nn.Linear(2, 2), imgs)


@pytest.mark.parametrize("hw", [3, 4, 8])
def test_matrix_product_weight_gradient_matches_convolution(hw):
    torch.manual_seed(0)
    x = torch.randn(6, 16, hw, hw, dtype=torch.float64).requires_grad_()
    w = torch.randn(24, 16, 3, 3, dtype=torch.float64).requires_grad_()
    g = torch.randn(6, 24, hw, hw, dtype=torch.float64)
    y = _Conv3x3GemmWgrad.apply(x, w)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    y2 = F.conv2d(x, w, padding=1)
    gx2, gw2 = torch.autograd.grad(y2, (x, w), g)
    assert torch.allclose(y, y2)
    assert torch.allclose(gx, gx2)
    assert torch.allclose(gw, gw2)


def test_fast_conv_module_uses_the_same_gradients_under_bf16_autocast():
    torch.manual_seed(0)
    conv = FastConv2d(32, 32).to(memory_format=torch.channels_last)
    x = torch.randn(8, 32, 4, 4).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert y.dtype == torch.bfloat16
    (gw,) = torch.autograd.grad(y.float().square().sum(), conv.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y2 = F.conv2d(x, conv.weight, padding=1)
    (gw2,) = torch.autograd.grad(y2.float().square().sum(), conv.weight)
    assert gw.dtype == torch.float32
    assert torch.allclose(gw, gw2, rtol=0.05, atol=0.05 * gw2.abs().max().item())


def test_batchnorm_statistics_move_only_in_threads_that_may():
    bn = FastBatchNorm(4)
    assert not bn.weight.requires_grad and bn.bias.requires_grad
    x = torch.randn(16, 4, 3, 3) + 5

    def other_thread():
        set_thread_updates_bn_stats(False)
        bn(x)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert torch.equal(bn.running_mean, torch.zeros(4))
    bn(x)  # this thread still updates them
    assert bn.running_mean.min() > 1.0


def test_save_and_load_round_trip(tmp_path):
    model = _classifier(widths=[8, 16, 16])
    init_whitening(model, torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8))
    model.eval()
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    before = model(x)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert torch.allclose(loaded(x), before, atol=1e-5)


def test_orthogonalize_gives_unit_singular_values():
    torch.manual_seed(0)
    for shape in [(32, 96), (96, 32)]:
        s = torch.linalg.svdvals(orthogonalize(torch.randn(*shape)).float())
        assert s.min() > 0.5 and s.max() < 1.3  # the quintic iteration lands near 1, not on it


def test_muon_steps_against_the_gradient_and_keeps_the_norm():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 4, 3, 3))
    norm = w.norm().item()
    target = torch.randn(8, 4, 3, 3)
    opt = Muon([w], lr=0.05, momentum=0.5)
    losses = []
    for _ in range(20):
        loss = (w - target).square().sum()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert w.norm().item() == pytest.approx(norm, rel=1e-4)
    assert losses[-1] < losses[0]


def test_muon_parallel_map_gives_the_same_update():
    torch.manual_seed(0)
    ws = [torch.nn.Parameter(torch.randn(c, 3, 3, 3)) for c in (4, 8, 16)]
    ws2 = [torch.nn.Parameter(w.detach().clone()) for w in ws]
    calls = []

    def pmap(fn, items):
        calls.append(len(items))
        return [fn(*it) for it in items]

    for params, kw in ((ws, {}), (ws2, {"parallel_map": pmap, "chunks": 2})):
        opt = Muon(params, lr=0.1, **kw)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    assert calls == [2]
    for a, b in zip(ws, ws2):
        assert torch.equal(a, b)
