"""Any timm backbone with weights at hand can be auto-fit's pretrained candidate: here timm's tiny
``test_resnet`` with its weights saved to a local file (offline, no hub)."""

from __future__ import annotations

import json

import pytest

from cnnlab.errors import ConfigError
from cnnlab.predictor import ImagePredictor


@pytest.fixture
def weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_a_local_weights_file_makes_any_timm_backbone_a_candidate(make_tree, weights_file, tmp_path, monkeypatch):
    from cnnlab.autofit import fewshot

    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fewshot, "FEW_SHOT_MAX", 0)  # 12 images a class: the planner's candidates
    data = make_tree(tmp_path / "data", per_class=12)
    pred = ImagePredictor(label="label", path=tmp_path / "fit").fit(
        str(data), time_limit=20, backbone="test_resnet", backbone_weights=str(weights_file), log=lambda s: None)
    info = pred.fit_summary()
    assert info["best"] in ("frozen", "finetune")  # a few images a class: a pretrained candidate
    card = json.loads((tmp_path / "fit" / "models" / info["best"] / "model.json").read_text())
    config = (tmp_path / "fit" / "models" / info["best"] / "config.yaml").read_text()
    assert "test_resnet" in json.dumps(card) and str(weights_file) in config
    state = json.loads((tmp_path / "fit" / "state.json").read_text())
    assert state["backbone"] == "test_resnet" and state["backbone_weights"] == str(weights_file)


def test_a_backbone_that_is_not_there_is_refused_before_anything_runs(tmp_path, tiny_tree):
    with pytest.raises(ConfigError, match="backbone: 'no_such_net' is not a timm model"):
        ImagePredictor(path=tmp_path / "a").fit(str(tiny_tree), time_limit=60, backbone="no_such_net")
    with pytest.raises(ConfigError, match="backbone_weights: 'missing.pth' is neither offline, hub nor a weights"):
        ImagePredictor(path=tmp_path / "b").fit(str(tiny_tree), time_limit=60, backbone="resnet18",
                                                backbone_weights="missing.pth")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
