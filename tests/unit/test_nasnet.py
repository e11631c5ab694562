"""Tests for cnnlab.models.nasnet (NASNet-A Mobile, equal to Keras's NASNetMobile)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.errors import ModelError
from cnnlab.models.nasnet import (
    BN_EPS,
    BN_MOMENTUM,
    NASNetMobile,
    _keras_to_torch,
    load_keras_h5,
    nasnet_mobile,
)

# Keras `NASNetMobile(include_top=False).summary()`:
#   Total params: 4,269,716 = trainable 4,232,978 + non-trainable 36,738.
# Trainable = conv kernels + BatchNorm gamma/beta, i.e. exactly the torch parameters.
# Non-trainable = BatchNorm moving mean + moving variance: 2 x 18,369 BN channels,
# i.e. the torch BN running_mean/running_var buffers (num_batches_tracked not counted).
# Both numbers were also checked against a Keras 3 build of the same network.
KERAS_TOTAL = 4_269_716
KERAS_TRAINABLE = 4_232_978
KERAS_WEIGHT_LAYERS = 388  # Keras layers with weights in NASNetMobile(include_top=False)


@pytest.fixture(scope="module")
def base() -> NASNetMobile:
    torch.manual_seed(0)
    return NASNetMobile(num_classes=0).eval()


def _bn_stats(model: nn.Module) -> int:
    return sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    )


def test_param_counts_match_keras(base: NASNetMobile) -> None:
    params = sum(p.numel() for p in base.parameters())
    trainable = sum(p.numel() for p in base.parameters() if p.requires_grad)
    assert params + _bn_stats(base) == KERAS_TOTAL
    assert trainable == params == KERAS_TRAINABLE
    assert _bn_stats(base) == KERAS_TOTAL - KERAS_TRAINABLE == 2 * 18_369
    assert base.num_features == 1056
    assert base.num_classes == 0
    assert isinstance(base.get_classifier(), nn.Identity)
    # with a head: + 1056 * 1000 + 1000 = Keras's NASNetMobile() 5,326,716
    head = NASNetMobile(num_classes=1000)
    assert sum(p.numel() for p in head.parameters()) + _bn_stats(head) == 5_326_716


def test_layer_settings_match_keras(base: NASNetMobile) -> None:
    bns = [m for m in base.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == BN_EPS == 1e-3 for m in bns)
    assert all(m.momentum == pytest.approx(0.0003) for m in bns)
    assert BN_MOMENTUM == pytest.approx(1 - 0.9997)
    assert all(m.affine for m in bns)
    assert all(m.bias is None for m in base.modules() if isinstance(m, nn.Conv2d))
    stem = base.stem.conv
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding) == (
        3, 32, (3, 3), (2, 2), (0, 0),
    )
    names = [name for name, _, _ in base.keras_layers()]
    assert len(names) == len(set(names)) == KERAS_WEIGHT_LAYERS
    for expected in (
        "stem_conv1",
        "stem_bn1",
        "reduction_conv_1_stem_1",
        "separable_conv_1_reduction_right1_stem_1",
        "adjust_conv_1_stem_2",
        "adjust_conv_2_0",
        "adjust_conv_projection_1",
        "normal_bn_1_3",
        "separable_conv_2_bn_reduction_left4_reduce_4",
        "adjust_bn_5",
        "reduction_conv_1_reduce_8",
        "separable_conv_2_normal_left5_12",
    ):
        assert expected in names


@torch.no_grad()
def test_output_shapes(base: NASNetMobile) -> None:
    assert tuple(base.forward_features(torch.zeros(1, 3, 224, 224)).shape) == (1, 1056, 7, 7)
    # Keras (input_shape=(32, 32, 3), its minimum) gives 1x1: 32->15->8->4->4->2->1.
    assert tuple(base.forward_features(torch.zeros(1, 3, 32, 32)).shape) == (1, 1056, 1, 1)
    # odd / non-square sizes: every reduction gives ceil(size / 2), as in Keras
    assert tuple(base.forward_features(torch.zeros(1, 3, 97, 130)).shape) == (1, 1056, 3, 4)
    assert tuple(base(torch.zeros(2, 3, 32, 32)).shape) == (2, 1056)  # no classifier
    model = nasnet_mobile(num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    assert tuple(model(x).shape) == (3, 10)
    feats = model.forward_features(x)
    assert (feats >= 0).all()  # final ReLU
    assert tuple(model.forward_head(feats, pre_logits=True).shape) == (3, 1056)
    assert torch.allclose(model.forward_head(feats), model(x), atol=1e-5)


def test_in_chans_and_reset_classifier() -> None:
    model = NASNetMobile(num_classes=5, in_chans=1, drop_rate=0.2)
    assert model.stem.conv.in_channels == 1
    assert isinstance(model.get_classifier(), nn.Linear)
    assert model.get_classifier().out_features == 5
    model.reset_classifier(7)
    assert model.num_classes == 7 and model.get_classifier().out_features == 7
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)
    with torch.no_grad():
        assert tuple(model.eval()(torch.zeros(2, 1, 32, 32)).shape) == (2, 1056)


def test_backward_step_changes_weights() -> None:
    torch.manual_seed(0)
    model = NASNetMobile(num_classes=10).train()
    watched = {
        "stem": model.stem.conv.weight,
        "first_cell": model.cells[0].left1.dw1.weight,
        "adjust": model.cells[2].adjust.conv1.weight,
        "last_cell": model.cells[-1].left5.pw2.weight,
        "last_bn": model.cells[-1].left5.bn2.weight,
        "head": model.classifier.weight,
    }
    before = {k: v.detach().clone() for k, v in watched.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    for key, param in watched.items():
        assert not torch.equal(param.detach(), before[key]), key


def test_feature_blocks_partition_forward_features(base: NASNetMobile) -> None:
    blocks = base.feature_blocks()
    assert len(blocks) == 17  # stem + 2 stem cells + 3 x 4 normal + 2 reduction cells
    assert blocks[0] is base.stem and blocks[-1] is base.cells[-1]
    owner: dict[int, int] = {}
    for i, block in enumerate(blocks):
        params = list(block.parameters())
        assert params, f"block {i} has no parameters"
        for p in params:
            assert id(p) not in owner, f"parameter in blocks {owner[id(p)]} and {i}"
            owner[id(p)] = i
    head_ids = {id(p) for p in base.get_classifier().parameters()}
    features = [p for p in base.parameters() if id(p) not in head_ids]
    assert {id(p) for p in features} == set(owner)
    # with a classifier the blocks still cover exactly the backbone
    model = NASNetMobile(num_classes=3)
    ids = {id(p) for b in model.feature_blocks() for p in b.parameters()}
    assert ids.isdisjoint({id(p) for p in model.get_classifier().parameters()})
    assert len(ids) == len(list(model.parameters())) - 2


def test_pretrained_and_bad_config_raise_model_error() -> None:
    with pytest.raises(ModelError, match="safetensors"):
        nasnet_mobile(pretrained=True)
    with pytest.raises(ModelError, match="penultimate_filters"):
        NASNetMobile(penultimate_filters=1000)
    with pytest.raises(ModelError, match="num_classes"):
        NASNetMobile(num_classes=-1)
    with pytest.raises(ModelError, match="drop_rate"):
        NASNetMobile(drop_rate=1.5)


# --------------------------------------------------------------- Keras equivalence
def _keras_arrays(name: str, kind: str, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Deterministic weights in Keras layouts, seeded by the Keras layer name.

    The same function filled a Keras 3 NASNetMobile(include_top=False) to produce the
    golden values below, so equal outputs mean equal networks (structure, channel
    order, padding, pooling and layouts).
    """
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if kind == "bn":
        n = shapes[0]
        return [
            rng.uniform(0.5, 1.5, n).astype(np.float32),
            rng.normal(0.0, 0.1, n).astype(np.float32),
            rng.normal(0.0, 0.1, n).astype(np.float32),
            rng.uniform(0.5, 2.0, n).astype(np.float32),
        ]
    out = []
    for i, shape in enumerate(shapes):
        fan_in = shape[0] * shape[1] if (kind == "sep" and i == 0) else int(np.prod(shape[:-1]))
        out.append((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32))
    return out


def _keras_shapes(kind: str, modules: tuple[nn.Module, ...]) -> list[tuple[int, ...]]:
    if kind == "bn":
        return [(modules[0].num_features,)] * 4
    if kind == "dense":
        return [tuple(modules[0].weight.shape[::-1]), tuple(modules[0].bias.shape)]
    if kind == "sep":  # depthwise torch (c, 1, kh, kw) -> Keras (kh, kw, c, 1)
        dw, pw = modules
        return [
            tuple(dw.weight.permute(2, 3, 0, 1).shape),
            tuple(pw.weight.permute(2, 3, 1, 0).shape),
        ]
    # torch (out, in, kh, kw) -> Keras (kh, kw, in, out)
    return [tuple(modules[0].weight.permute(2, 3, 1, 0).shape)]


_KIND_KEYS = {
    "conv": ("kernel",),
    "sep": ("depthwise_kernel", "pointwise_kernel"),
    "bn": ("gamma", "beta", "moving_mean", "moving_variance"),
    "dense": ("kernel", "bias"),
}


def _fill_like_keras(model: NASNetMobile) -> None:
    with torch.no_grad():
        for name, kind, modules in model.keras_layers():
            arrays = _keras_arrays(name, kind, _keras_shapes(kind, modules))
            tensors = _keras_to_torch(kind, dict(zip(_KIND_KEYS[kind], arrays)))
            if kind == "bn":
                bn = modules[0]
                targets = [bn.weight, bn.bias, bn.running_mean, bn.running_var]
            elif kind == "sep":
                targets = [modules[0].weight, modules[1].weight]
            else:
                targets = [m.weight for m in modules]
            for dst, src in zip(targets, tensors):
                assert dst.shape == src.shape, name
                dst.copy_(src)


def _checksums(y: np.ndarray) -> tuple[float, float, float]:
    """(mean, mean |y|, cosine-weighted sum) of an NCHW array; the last one changes
    if channels or positions are permuted."""
    flat = y.astype(np.float64).ravel()
    weights = np.cos(0.37 * np.arange(flat.size))
    return float(flat.mean()), float(np.abs(flat).mean()), float((flat * weights).sum())


# Keras 3.15 NASNetMobile(include_top=False, weights=None, input_shape=(H, W, 3)) filled
# with _keras_arrays, inference mode, input rng(0).uniform(-1, 1, (2, H, W, 3)).
KERAS_GOLDEN = {
    (32, 32): (38.4404934904001, 38.4404934904001, 1333.521995176948),
    (97, 130): (1446.8493069590097, 1446.8493069590097, -78151.95986321988),
}


@pytest.mark.parametrize("size", list(KERAS_GOLDEN))
@torch.no_grad()
def test_outputs_equal_keras_golden_values(size: tuple[int, int]) -> None:
    golden = KERAS_GOLDEN[size]
    model = NASNetMobile(num_classes=0).eval()
    _fill_like_keras(model)
    x = np.random.default_rng(0).uniform(-1, 1, (2, *size, 3)).astype(np.float32)
    y = model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    mean, abs_mean, weighted = _checksums(y)
    assert mean == pytest.approx(golden[0], rel=1e-4)
    assert abs_mean == pytest.approx(golden[1], rel=1e-4)
    assert weighted == pytest.approx(golden[2], rel=1e-4, abs=1e-6 * abs_mean * y.size)


# ------------------------------------------------------------------ Keras .h5 import
def _write_keras_h5(h5py, path, model: NASNetMobile, extra: dict | None = None) -> None:
    """Write a legacy Keras HDF5 weight file (layer_names / weight_names attributes)."""
    with h5py.File(path, "w") as f:
        names = []
        for name, kind, modules in model.keras_layers():
            arrays = _keras_arrays(name, kind, _keras_shapes(kind, modules))
            group = f.create_group(name)
            wnames = [f"{name}/{key}:0" for key in _KIND_KEYS[kind]]
            group.attrs["weight_names"] = [w.encode() for w in wnames]
            for wname, arr in zip(wnames, arrays):
                group.create_dataset(wname, data=arr)
            names.append(name)
        for name, arrays in (extra or {}).items():
            group = f.create_group(name)
            group.attrs["weight_names"] = [f"{name}/kernel:0".encode()]
            group.create_dataset(f"{name}/kernel:0", data=arrays)
            names.append(name)
        f.attrs["layer_names"] = [n.encode() for n in names]
        f.attrs["backend"] = b"tensorflow"


@pytest.fixture(scope="module")
def small_config() -> dict:
    return {"penultimate_filters": 192, "num_blocks": 1, "stem_block_filters": 8}


def test_load_keras_h5_maps_layers_and_layouts(tmp_path, small_config) -> None:
    h5py = pytest.importorskip("h5py")
    src = NASNetMobile(num_classes=4, **small_config)
    path = tmp_path / "nasnet.h5"
    _write_keras_h5(h5py, path, src, extra={"some_unrelated_layer": np.zeros((2, 2), "f4")})

    model = NASNetMobile(num_classes=4, **small_config).eval()
    report = load_keras_h5(model, path)
    assert len(report["loaded"]) == len(list(model.keras_layers()))
    assert report["missing"] == []
    assert report["skipped"] == ["some_unrelated_layer"]

    with h5py.File(path, "r") as f:
        kernel = f["stem_conv1"]["stem_conv1/kernel:0"][()]  # (kh, kw, in, out)
        assert torch.equal(model.stem.conv.weight[5, 2], torch.from_numpy(kernel[:, :, 2, 5]))
        sep = "separable_conv_1_reduction_right1_stem_1"
        dw = f[sep][f"{sep}/depthwise_kernel:0"][()]  # (kh, kw, c, 1)
        pw = f[sep][f"{sep}/pointwise_kernel:0"][()]  # (1, 1, in, out)
        stack = model.cells[0].right1
        assert torch.equal(stack.dw1.weight[3, 0], torch.from_numpy(dw[:, :, 3, 0]))
        assert torch.equal(stack.pw1.weight[:, :, 0, 0], torch.from_numpy(pw[0, 0].T))
        bn = model.cells[1].adjust.bn  # adjust_bn_stem_2
        var = f["adjust_bn_stem_2"]["adjust_bn_stem_2/moving_variance:0"][()]
        assert torch.equal(bn.running_var, torch.from_numpy(var))
        dense = f["predictions"]["predictions/kernel:0"][()]
        assert torch.equal(model.classifier.weight, torch.from_numpy(dense.T))

    # same file into a differently initialised model -> identical outputs
    other = NASNetMobile(num_classes=4, **small_config).eval()
    load_keras_h5(other, path)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))

    # a model with another head keeps its head, loads the backbone
    no_head = NASNetMobile(num_classes=9, **small_config)
    report = load_keras_h5(no_head, path)
    assert "predictions" in report["skipped"]


def test_load_keras_h5_errors(tmp_path, small_config) -> None:
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "small.h5"
    _write_keras_h5(h5py, path, NASNetMobile(num_classes=0, **small_config))

    with pytest.raises(ModelError, match="small.h5.*shapes"):  # other configuration
        other = NASNetMobile(
            num_classes=0, penultimate_filters=384, num_blocks=1, stem_block_filters=8
        )
        load_keras_h5(other, path)
    with h5py.File(path, "a") as f:  # drop one layer
        del f["normal_bn_1_0"]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]
        f.attrs["layer_names"] = [n.encode() for n in names if n != "normal_bn_1_0"]
    with pytest.raises(ModelError, match="small.h5: 1 NASNet layers are missing.*normal_bn_1_0"):
        load_keras_h5(NASNetMobile(num_classes=0, **small_config), path)
    report = load_keras_h5(NASNetMobile(num_classes=0, **small_config), path, strict=False)
    assert report["missing"] == ["normal_bn_1_0"]
    with pytest.raises(ModelError, match="not found"):
        load_keras_h5(NASNetMobile(num_classes=0, **small_config), tmp_path / "absent.h5")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(ModelError, match="junk.h5"):
        load_keras_h5(NASNetMobile(num_classes=0, **small_config), junk)
    keras3 = tmp_path / "model.weights.h5"
    with h5py.File(keras3, "w") as f:
        f.create_group("layers").create_group("conv2d").create_group("vars")
        f.create_group("vars")
    with pytest.raises(ModelError, match="Keras 3"):
        load_keras_h5(NASNetMobile(num_classes=0, **small_config), keras3)
