"""Models: Keras-equal parameter counts, preprocessing inside the model, the study's head and L2,
saving and loading, and the `cnnlab models` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("timm")

from cnnlab.cli.main import main  # noqa: E402
from cnnlab.config import HeadConfig, ModelConfig, load_config  # noqa: E402
from cnnlab.errors import ModelError  # noqa: E402
from cnnlab.models import io as mio  # noqa: E402
from cnnlab.models.classifier import IMAGENET_MEAN, IMAGENET_STD, Head  # noqa: E402
from cnnlab.models.registry import create_model  # noqa: E402
from cnnlab.models.summary import count_parameters  # noqa: E402


CIFAR = [f"c{i}" for i in range(10)]
STUDY_HEAD = HeadConfig(pooling="max", units=512, activation="relu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def study_model():
    """The study's whole Model I: Keras MobileNet base, GlobalMaxPooling, Dense 512 relu, Dense 10."""
    torch.manual_seed(0)
    return create_model(ModelConfig(arch="mobilenetv1_100", head=STUDY_HEAD, preprocessing="keras_tf"), CIFAR)


# ------------------------------------------------------------------ parameter counts


def test_mobilenet_base_equals_keras_mobilenet(study_model):
    base = count_parameters(study_model.backbone)
    assert base["keras_total"] == 3_228_864  # Keras's "Total params" of MobileNet(include_top=False)
    assert base["trainable"] == 3_206_976
    assert base["bn_statistics"] == 21_888
    assert base["total"] == base["trainable"] + base["non_trainable"]


def test_study_whole_model_count(study_model):
    whole = count_parameters(study_model)
    # base + Dense(1024 -> 512) + Dense(512 -> 10), Keras style
    assert whole["keras_total"] == 3_758_794
    assert whole["keras_total"] - 3_228_864 == (1024 * 512 + 512) + (512 * 10 + 10)


def test_study_config_builds_the_same_model():
    model = create_model(load_config("experiments/mobilenet/II.1.yaml").model, CIFAR)
    assert count_parameters(model)["keras_total"] == 3_758_794
    assert model.spec.preprocessing == "keras_tf"
    assert model.head.pooling == "max" and model.head.l2 == pytest.approx(1e-2)
    assert isinstance(model.head.dropout, torch.nn.Dropout) and model.head.dropout.p == pytest.approx(0.4)


def test_frozen_base_moves_parameters_to_non_trainable(study_model):
    import copy

    model = copy.deepcopy(study_model)
    model.set_base_trainable(False)
    c = count_parameters(model)
    assert c["trainable"] == (1024 * 512 + 512) + (512 * 10 + 10)
    assert c["keras_total"] == 3_758_794


# ------------------------------------------------------------------ preprocessing


def test_keras_tf_preprocessing_maps_pixels_to_minus_one_one(study_model):
    x = torch.tensor([0.0, 127.5, 255.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    out = study_model.preprocess(x)
    torch.testing.assert_close(out[0, :, 0], torch.tensor([-1.0, 0.0, 1.0]).expand(3, 3), rtol=0, atol=1e-6)
    # uint8 input, as users have pixels
    u8 = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()
    torch.testing.assert_close(study_model.preprocess(u8)[0, :, 0],
                               torch.tensor([-1.0, 1.0]).expand(3, 2), rtol=0, atol=1e-6)


def test_imagenet_preprocessing_uses_mean_and_std():
    model = create_model(ModelConfig(arch="resnet10t", preprocessing="imagenet"), ["a", "b"])
    assert model.spec.preprocessing == "imagenet"
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(torch.tensor(model.spec.mean), mean)
    torch.testing.assert_close(torch.tensor(model.spec.std), std)
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    expected = (x.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(model.preprocess(x), expected, rtol=1e-5, atol=1e-5)


def test_auto_and_unit_preprocessing():
    scratch = create_model(ModelConfig(arch="resnet10t"), ["a", "b"])  # random init: Keras's [-1, 1]
    assert scratch.spec.preprocessing == "keras_tf"
    unit = create_model(ModelConfig(arch="resnet10t", preprocessing="unit"), ["a", "b"])
    x = torch.tensor([0.0, 51.0, 255.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    torch.testing.assert_close(unit.preprocess(x)[0, 0, 0], torch.tensor([0.0, 0.2, 1.0]))


def test_input_size_resizes_inside_the_model():
    model = create_model(ModelConfig(arch="resnet10t", input_size=24), ["a", "b"])
    assert model.preprocess(torch.zeros(2, 3, 16, 16)).shape == (2, 3, 24, 24)
    assert model.preprocess(torch.zeros(1, 3, 24, 24)).shape == (1, 3, 24, 24)


# ------------------------------------------------------------------ the head and L2


def test_head_l2_penalty_is_keras_kernel_regulariser():
    torch.manual_seed(0)
    head = Head(8, 3, pooling="max", units=4, l2=0.01)
    with torch.no_grad():
        head.hidden[0].weight.copy_(torch.arange(32, dtype=torch.float32).view(4, 8) / 10)
        head.hidden[0].bias.fill_(100.0)  # biases are not regularised
        head.classifier.weight.fill_(100.0)  # nor is the output layer
    expected = 0.01 * sum((i / 10) ** 2 for i in range(32))  # 0.01 * sum(w^2) = 1.0416
    assert float(head.l2_penalty().detach()) == pytest.approx(expected, rel=1e-6)
    # It is differentiable: d/dw of l2 * w^2 is 2 * l2 * w.
    head.l2_penalty().backward()
    torch.testing.assert_close(head.hidden[0].weight.grad, 2 * 0.01 * head.hidden[0].weight.detach())
    assert Head(8, 3, units=4, l2=0.0).l2_penalty() is None
    assert Head(8, 3, units=0, l2=0.1).l2_penalty() is None  # no hidden Dense to regularise


def test_head_pooling_and_shapes():
    head = Head(4, 3, pooling="max", units=0)
    feats = torch.zeros(2, 4, 3, 3)
    feats[0, :, 1, 2] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(head.pool(feats)[0], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    avg = Head(4, 3, pooling="avg")
    torch.testing.assert_close(avg.pool(feats)[0], torch.tensor([1.0, 2.0, 3.0, 4.0]) / 9)
    assert head(feats).shape == (2, 3)
    with pytest.raises(ModelError, match="pooling"):
        Head(4, 3, pooling="median")


def test_model_l2_penalty_comes_from_the_config():
    cfg = ModelConfig(arch="resnet10t", head=HeadConfig(units=16, l2=0.5))
    model = create_model(cfg, ["a", "b"])
    w = model.head.hidden[0].weight
    assert float(model.l2_penalty().detach()) == pytest.approx(0.5 * float(w.detach().pow(2).sum()), rel=1e-6)


def test_unknown_models_and_too_few_classes_are_model_errors():
    with pytest.raises(ModelError, match="mobilenetv1_100"):
        create_model(ModelConfig(arch="mobilenetv1_10O"), ["a", "b"])  # typo: a suggestion follows
    with pytest.raises(ModelError, match="two classes"):
        create_model(ModelConfig(arch="resnet10t"), ["only"])


# ------------------------------------------------------------------ saving and loading


@pytest.fixture
def trained_like_model():
    torch.manual_seed(0)
    model = create_model(ModelConfig(arch="resnet10t", head=HeadConfig(pooling="max", units=16)), ["x", "y", "z"])
    model.train()
    with torch.no_grad():  # move the BatchNorm statistics, so the buffers are part of the check
        for _ in range(2):
            model(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
    return model.eval()


def test_save_load_round_trip_gives_identical_logits(tmp_path, trained_like_model):
    model = trained_like_model
    mio.save_model(model, tmp_path, extra={"note": "hi"})
    assert (tmp_path / "model.safetensors").is_file()
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["spec"]["class_names"] == ["x", "y", "z"]
    assert card["spec"]["preprocessing"] == "keras_tf"
    assert card["parameters"]["keras_total"] == count_parameters(model)["keras_total"]
    assert card["note"] == "hi"

    loaded = mio.load_model(tmp_path)
    assert not loaded.training
    assert loaded.class_names == ["x", "y", "z"]
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


def test_corrupted_or_mismatched_weights_are_model_errors(tmp_path, trained_like_model):
    mio.save_model(trained_like_model, tmp_path)
    weights = tmp_path / "model.safetensors"
    good = weights.read_bytes()

    weights.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ModelError, match="model.safetensors"):
        mio.load_model(tmp_path)
    weights.write_bytes(b"\x00" * 64 + b"not a safetensors file")  # garbage
    with pytest.raises(ModelError, match="model.safetensors"):
        mio.load_model(tmp_path)
    weights.unlink()
    with pytest.raises(ModelError, match="not found"):
        mio.load_model(tmp_path)
    with pytest.raises(ModelError, match="best.safetensors"):
        mio.load_model(tmp_path, "best")

    # Weights of another model (4 classes instead of 3) do not fit: a ModelError, not a crash.
    other = create_model(ModelConfig(arch="resnet10t", head=HeadConfig(pooling="max", units=16)), list("abcd"))
    mio.save_weights(other, weights)
    with pytest.raises(ModelError, match="does not fit"):
        mio.load_model(tmp_path)


def test_bad_model_card_is_a_model_error(tmp_path, trained_like_model):
    with pytest.raises(ModelError, match="model.json"):
        mio.read_card(tmp_path)
    mio.save_model(trained_like_model, tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="model card"):
        mio.load_model(tmp_path)


# ------------------------------------------------------------------ cnnlab models


def test_cli_models_info_prints_the_base_parameters(capsys):
    assert main(["models", "info", "mobilenetv1_100"]) == 0
    out = capsys.readouterr().out
    assert "mobilenetv1_100" in out
    assert "3,206,976" in out  # base parameters
    assert "3,228,864" in out  # ... counted the Keras way


def test_cli_models_info_with_the_study_head(capsys):
    assert main(["models", "info", "mobilenetv1_100", "--units", "512", "--pooling", "max"]) == 0
    assert "3,758,794" in capsys.readouterr().out


def test_cli_models_list_filters(capsys):
    assert main(["models", "list", "mobilenet*"]) == 0
    lines = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert "mobilenetv1_100" in lines
    assert all(name.startswith("mobilenet") for name in lines)
    assert main(["models", "list"]) == 0
    everything = capsys.readouterr().out.split()
    assert "resnet18" in everything and "mobilenetv1_100" in everything


def test_cli_models_info_unknown_model_exits_2(capsys):
    assert main(["models", "info", "no_such_net"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_count_parameters_on_a_small_module():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    m[0].weight.requires_grad_(False)
    c = count_parameters(m)
    assert c == {"total": 3 * 4 * 9 + 4 + 8, "trainable": 4 + 8, "non_trainable": 108,
                 "bn_statistics": 8, "keras_total": 128}
    assert np.isscalar(c["total"])


def test_cnnlabs_own_architectures_are_timm_models():
    """Registered with timm's register_model: timm builds them like its own."""
    code = ("import cnnlab.models, timm; m = timm.create_model('nasnet_mobile', num_classes=7); "
            "f = timm.create_model('cifar_fastnet', num_classes=0); "
            "print(type(m).__name__, m.get_classifier().out_features, type(f).__name__, "
            "'nasnet_mobile' in timm.list_models('nasnet*'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["NASNetMobile", "7", "FastNet", "True"]


def test_a_safetensors_file_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    # Seen in a tuning test: a model file whose header was 128 + 256k bytes long was refused as a pickle.
    from safetensors.torch import save_file

    from cnnlab.models.io import _pickle_kind

    for pad in range(1, 400):
        path = tmp_path / "w.safetensors"
        save_file({"w" * pad: torch.zeros(1)}, str(path))
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert _pickle_kind(path) is None
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    assert _pickle_kind(tmp_path / "w.pt") == "a PyTorch pickle"
    (tmp_path / "raw.pkl").write_bytes(b"\x80\x02}q\x00.")
    assert _pickle_kind(tmp_path / "raw.pkl") == "a PyTorch pickle"
