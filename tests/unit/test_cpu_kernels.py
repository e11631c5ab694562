"""cpu_kernels.optimize_for_cpu: the swapped layers compute what the original layers compute."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

timm = pytest.importorskip("timm")

from cnnlab.models.cpu_kernels import GuardedConv2d, FP32DepthwiseConv2d, PointwiseConv2d, optimize_for_cpu  # noqa: E402


# (architecture, pointwise, depthwise and guarded layers swapped)
ARCHS = [("mobilenetv1_100", 13, 13, 1), ("resnet10t", 3, 0, 11)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(arch: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module, dict[str, int]]:
    torch.manual_seed(0)
    ref = timm.create_model(arch, pretrained=False, num_classes=3).to(dtype)
    # Move BatchNorm statistics away from (0, 1), so eval mode is not an identity.
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    fast = copy.deepcopy(ref)
    counts = optimize_for_cpu(fast)
    return ref, fast, counts


def _forward_backward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_(True)
    out = model(xi)
    # A loss whose gradient differs per logit, so every path gets a distinct signal.
    weights = torch.linspace(-1.0, 2.0, out.shape[1], dtype=out.dtype)
    (out * weights).square().sum().backward()
    return out.detach(), xi.grad.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch, n_pointwise, n_depthwise, n_guarded", ARCHS)
def test_swaps_the_expected_layers_and_keeps_the_state_dict(arch, n_pointwise, n_depthwise, n_guarded):
    ref, fast, counts = _pair(arch)
    assert counts == {"pointwise": n_pointwise, "depthwise": n_depthwise, "guarded": n_guarded}
    assert sum(type(m) is PointwiseConv2d for m in fast.modules()) == n_pointwise
    assert sum(type(m) is FP32DepthwiseConv2d for m in fast.modules()) == n_depthwise
    # Names, shapes and values of every parameter and buffer are unchanged.
    a, b = ref.state_dict(), fast.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A second pass finds nothing left to swap.
    assert optimize_for_cpu(fast) == {"pointwise": 0, "depthwise": 0, "guarded": 0}


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("arch", [a[0] for a in ARCHS])
def test_fp32_forward_and_gradients_match(arch, channels_last):
    ref, fast, _ = _pair(arch)
    ref.eval()
    fast.eval()
    torch.manual_seed(1)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    if channels_last:
        ref.to(memory_format=torch.channels_last)
        fast.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    out_r, gx_r, g_r = _forward_backward(ref, x)
    out_f, gx_f, g_f = _forward_backward(fast, x)
    assert out_r.abs().max() > 1e-3  # not a degenerate all-zero comparison
    torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-5 * float(out_r.abs().max()))
    torch.testing.assert_close(gx_f, gx_r, rtol=1e-5, atol=1e-5 * float(gx_r.abs().max()))
    assert list(g_r) == list(g_f)
    for name in g_r:
        scale = float(g_r[name].abs().max())
        torch.testing.assert_close(g_f[name], g_r[name], rtol=1e-5, atol=1e-5 * scale + 1e-12,
                                   msg=lambda m, n=name: f"{arch} {n}: {m}")


@pytest.mark.parametrize("arch", [a[0] for a in ARCHS])
def test_training_mode_matches_in_float64(arch):
    # Training-mode BatchNorm over a tiny batch amplifies fp32 rounding chaotically; float64
    # shows the swapped layers are the same function, batch statistics included.
    ref, fast, _ = _pair(arch, torch.float64)
    ref.train()
    fast.train()
    torch.manual_seed(2)
    x = (torch.rand(4, 3, 24, 24, dtype=torch.float64) * 2 - 1).contiguous(memory_format=torch.channels_last)
    ref.to(memory_format=torch.channels_last)
    fast.to(memory_format=torch.channels_last)
    out_r, gx_r, g_r = _forward_backward(ref, x)
    out_f, gx_f, g_f = _forward_backward(fast, x)
    torch.testing.assert_close(out_f, out_r, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gx_f, gx_r, rtol=1e-8, atol=1e-8 * float(gx_r.abs().max()))
    for name in g_r:
        torch.testing.assert_close(g_f[name], g_r[name], rtol=1e-8, atol=1e-8 * float(g_r[name].abs().max()) + 1e-15)
    # Running statistics were updated identically too.
    for (k, a), (_, b) in zip(ref.state_dict().items(), fast.state_dict().items()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")


def test_only_plain_pointwise_and_depthwise_convolutions_are_swapped():
    from timm.layers import Conv2dSame

    model = nn.Sequential(
        nn.Conv2d(8, 8, 1),  # pointwise with bias: swapped
        nn.Conv2d(8, 8, 1, stride=2),  # strided 1x1: not a plain matrix product
        nn.Conv2d(8, 8, 1, padding=1),  # padded 1x1
        nn.Conv2d(8, 8, 1, padding_mode="reflect"),
        nn.Conv2d(8, 8, 1, dilation=2),  # dilation has no effect on a 1x1, but is left alone
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: swapped
        nn.Conv2d(8, 16, 3, padding=1, groups=8),  # depthwise with a channel multiplier: swapped
        nn.Conv2d(16, 16, 3, padding=1, groups=4),  # grouped, not depthwise: guarded
        nn.Conv2d(16, 16, 3, padding=1),  # ordinary 3x3: guarded
        Conv2dSame(16, 16, 1),  # a subclass keeps its own forward
    )
    types_before = [type(m) for m in model]
    counts = optimize_for_cpu(model)
    assert counts == {"pointwise": 1, "depthwise": 2, "guarded": 2}
    assert [type(m) for m in model] == [PointwiseConv2d, *types_before[1:5], FP32DepthwiseConv2d,
                                        FP32DepthwiseConv2d, GuardedConv2d, GuardedConv2d,
                                        *types_before[9:]]


def test_guarded_conv_gives_finite_bf16_gradients_on_inputs_smaller_than_the_kernel():
    """oneDNN's bf16 weight gradient of a 3x3 stride-2 conv on a 1x1 map was sometimes NaN."""
    torch.manual_seed(0)
    conv = nn.Conv2d(192, 96, 3, stride=2, padding=1, bias=False)
    optimize_for_cpu(nn.Sequential(conv))
    assert type(conv) is GuardedConv2d
    for _ in range(30):
        x = torch.randn(16, 192, 1, 1).contiguous(memory_format=torch.channels_last)
        conv.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x)
        assert out.dtype == torch.float32  # ran in fp32
        out.float().square().sum().backward()
        assert torch.isfinite(conv.weight.grad).all()
    # A large input keeps bf16 (the fast path).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(2, 192, 8, 8)).dtype == torch.bfloat16


@pytest.mark.parametrize("channels_last", [True, False])
def test_pointwise_with_bias_equals_conv(channels_last):
    torch.manual_seed(3)
    conv = nn.Conv2d(6, 5, 1, bias=True)
    fast = copy.deepcopy(conv)
    optimize_for_cpu(fast)
    x = torch.randn(2, 6, 7, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = fast(x)
    assert y.shape == (2, 5, 7, 9)
    torch.testing.assert_close(y, conv(x), rtol=1e-6, atol=1e-6)


def test_depthwise_stays_fp32_under_bf16_autocast():
    torch.manual_seed(4)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    fast = copy.deepcopy(conv)
    optimize_for_cpu(fast)
    x = torch.randn(2, 8, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_plain = conv(x)
        y_fast = fast(x)
        y_fast_bf16_in = fast(x.bfloat16())
    assert y_plain.dtype == torch.bfloat16  # what autocast does to a plain convolution
    assert y_fast.dtype == torch.float32
    torch.testing.assert_close(y_fast, conv(x), rtol=1e-6, atol=1e-6)
    assert y_fast_bf16_in.dtype == torch.float32
    # Pointwise layers do take the bf16 path under autocast (the point of the swap).
    pw = nn.Conv2d(8, 4, 1)
    optimize_for_cpu(pw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pw(x).dtype == torch.bfloat16
