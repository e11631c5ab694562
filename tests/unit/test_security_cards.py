"""Model cards are untrusted: a card cannot make cnnlab open a pickle, a path or a URL, nor ask for huge models."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from cnnlab.cli.main import main
from cnnlab.config import ModelConfig
from cnnlab.errors import ModelError
from cnnlab.models.io import CARD_FORMAT, load_model, read_card, save_model
from cnnlab.models.registry import create_model

TINY = {"widths": [8, 16, 16], "depth": 1}


class _Boom:
    """Unpickling this writes a marker file (what an attacker's pickle would do, harmlessly)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def _malicious_card(folder: Path, key: str = "checkpoint_path") -> Path:
    folder.mkdir(parents=True)
    marker = folder / "MARKER"
    (folder / "evil.pth").write_bytes(pickle.dumps(_Boom(str(marker))))
    value = str(folder / "evil.pth") if key == "checkpoint_path" else {"file": str(folder / "evil.pth")}
    card = {"format": CARD_FORMAT, "spec": {"arch": "resnet18", "num_classes": 2, "class_names": ["a", "b"],
                                            "kwargs": {key: value}}}
    (folder / "model.json").write_text(json.dumps(card))
    return marker


@pytest.mark.parametrize("key", ["checkpoint_path", "pretrained_cfg_overlay", "pretrained_cfg"])
def test_a_card_asking_timm_to_open_a_file_is_refused_before_anything_is_opened(tmp_path, monkeypatch, key, capsys):
    marker = _malicious_card(tmp_path / "run", key)
    opened = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a) or real_load(*a, **k))
    with pytest.raises(ModelError, match=repr(key)):
        load_model(tmp_path / "run")
    from cnnlab import ImagePredictor

    with pytest.raises(ModelError, match=repr(key)):
        ImagePredictor.load(tmp_path / "run")
    assert opened == [] and not marker.exists()
    # the CLI: one line, exit 2, and still nothing ran
    img = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (8, 8)).save(img)
    assert main(["predict", str(tmp_path / "run"), str(img)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and "Traceback" not in err[0]
    assert opened == [] and not marker.exists()


@pytest.mark.parametrize("kwargs,needle", [
    ({"cache_dir": "/tmp"}, "refused"),
    ({"hf_hub_id": "x/y"}, "refused"),
    ({"bogus_arg": 1}, "not an allowed"),
    ({"img_size": 1_000_000}, "out of range"),
    ({"embed_dim": 10 ** 9}, "out of range"),
    ({"depth": {"nested": 1}}, "must be a number"),
    ({"widths": list(range(1000))}, "list of 1000"),
])
def test_card_kwargs_outside_the_allow_list_or_bounds_are_model_errors(tmp_path, kwargs, needle):
    run = save_model(create_model(ModelConfig(arch="cifar_fastnet", kwargs=TINY), ["a", "b"]), tmp_path / "run")
    card = json.loads((run / "model.json").read_text())
    card["spec"]["kwargs"] = kwargs
    (run / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=needle):
        read_card(run)


@pytest.mark.parametrize("field,value,needle", [
    ("num_classes", 10 ** 9, "num_classes"),
    ("num_classes", "3", "num_classes"),
    ("class_names", ["a"], "class_names"),
    ("input_size", 10 ** 6, "input_size"),
    ("mean", [0, 0], "mean"),
    ("std", [0, 1, 1], "std"),
    ("head", {"units": 10 ** 9}, "head.units"),
    ("head", {"evil": 1}, "head.evil"),
    ("surprise", 1, "surprise"),
])
def test_card_fields_have_their_types_and_ranges_checked(tmp_path, field, value, needle):
    run = save_model(create_model(ModelConfig(arch="cifar_fastnet", kwargs=TINY), ["a", "b"]), tmp_path / "run")
    card = json.loads((run / "model.json").read_text())
    card["spec"][field] = value
    (run / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=needle):
        load_model(run)


def test_config_kwargs_go_through_the_same_check():
    with pytest.raises(ModelError, match="checkpoint_path"):
        create_model(ModelConfig(arch="resnet18", kwargs={"checkpoint_path": "/etc/passwd"}), ["a", "b"])


def test_a_good_card_still_loads(tmp_path):
    run = save_model(create_model(ModelConfig(arch="cifar_fastnet", kwargs=TINY), ["a", "b"]), tmp_path / "run")
    assert load_model(run).spec.kwargs == TINY
