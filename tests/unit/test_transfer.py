"""Transfer-learning techniques: freezing, partial unfreezing, feature caching, two stages, embed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab import api
from cnnlab.config import HeadConfig, ModelConfig
from cnnlab.models.registry import create_model

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 230)]


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CNNLAB_CIFAR10", raising=False)
    return tmp_path / "home"


@pytest.fixture()
def colour_tree(tmp_path):
    """3 learnable classes x 16 images of 16x16: a class colour plus noise."""
    rng = np.random.default_rng(0)
    root = tmp_path / "colours"
    for c, rgb in enumerate(COLOURS):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(16):
            img = np.clip(np.array(rgb) + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"class{c}" / f"{i}.png")
    return root


def _config(**model):
    return {
        "name": "t",
        "data": {"validation_split": 0.25},
        "model": {"arch": "resnet10t", "head": {"pooling": "avg", "units": 16, "dropout": 0.0}, **model},
        "train": {"epochs": 2, "batch_size": 8, "optimizer": {"name": "adam", "lr": 1e-2}},
    }


def test_frozen_base_keeps_weights_and_batchnorm_statistics(colour_tree, home, tmp_path):
    cfg = _config(freeze_base=True)
    cfg["train"]["cache_features"] = "off"  # train through the frozen base, not on cached features
    cfg["train"]["augment"] = {"flip": True}
    run = api.train(cfg, data=str(colour_tree), run_dir=tmp_path / "run", progress=False, log=lambda s: None)
    after = run.fit.model
    # api.train seeds torch with cfg.seed (0) before building the model: rebuild the same start.
    torch.manual_seed(0)
    fresh = create_model(api.resolve_config(cfg).model, ["class0", "class1", "class2"])
    for (k, a), (_, b) in zip(fresh.backbone.state_dict().items(), after.backbone.state_dict().items()):
        assert torch.equal(a.cpu(), b.cpu()), f"frozen tensor {k} changed during training"
    assert not any(p.requires_grad for p in after.backbone.parameters())
    assert not torch.equal(fresh.head.classifier.weight, after.head.classifier.weight.cpu())  # the head trained


def test_unfreeze_last_blocks_trains_only_those(colour_tree, home):
    cfg = api.resolve_config(_config(unfreeze_last=2))
    model = create_model(cfg.model, ["a", "b", "c"])
    model.set_base_trainable(True, 2)
    from cnnlab.models.blocks import backbone_blocks

    blocks = backbone_blocks(model.backbone)
    trainable_ids = {id(p) for b in blocks[-2:] for p in b.parameters()}
    for p in model.backbone.parameters():
        assert p.requires_grad == (id(p) in trainable_ids)
    model.train()
    frozen_bn = [m for m in blocks[0].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    live_bn = [m for m in blocks[-1].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert frozen_bn and not any(m.training for m in frozen_bn)
    assert live_bn and all(m.training for m in live_bn)
    with pytest.raises(Exception, match="blocks"):
        model.set_base_trainable(True, len(blocks) + 5)


def test_feature_cache_is_reused_by_a_second_run(colour_tree, home, tmp_path):
    cfg = _config(freeze_base=True)
    logs: list[str] = []
    first = api.train(cfg, data=str(colour_tree), run_dir=tmp_path / "r1", progress=False, log=logs.append)
    assert first.metrics["feature_cache"] == "miss"
    cached = list((home / "features").glob("*.npy"))
    assert len(cached) >= 2  # train and validation features (and test/val of the evaluation)
    second = api.train(cfg, data=str(colour_tree), run_dir=tmp_path / "r2", progress=False, log=logs.append)
    assert second.metrics["feature_cache"] == "hit"
    assert any("reused cached features" in line for line in logs)
    # Same features, same seed: the two runs' heads learn the same thing.
    assert first.metrics["val"]["accuracy"] == pytest.approx(second.metrics["val"]["accuracy"])
    # The saved model still takes raw images (the base is part of it).
    probs, _ = api.predict_proba(tmp_path / "r2", [str(colour_tree / "class0")])
    assert probs.shape == (16, 3)


def test_two_stage_finetune_continues_history_and_unfreezes(colour_tree, home, tmp_path):
    cfg = _config(freeze_base=True)
    cfg["train"]["finetune"] = {"epochs": 2, "lr": 1e-4}
    run = api.train(cfg, data=str(colour_tree), run_dir=tmp_path / "ft", progress=False, log=lambda s: None)
    hist = (tmp_path / "ft" / "history.csv").read_text().splitlines()
    assert len(hist) == 1 + 4  # header + 2 frozen epochs + 2 fine-tuning epochs
    assert hist[-1].split(",")[0] == "4"
    assert all(p.requires_grad for p in run.fit.model.backbone.parameters())
    assert run.metrics["epochs_run"] == 4


def test_resize_inside_the_model(home):
    cfg = ModelConfig(arch="resnet10t", input_size=40, resize_mode="bilinear", head=HeadConfig())
    model = create_model(cfg, ["a", "b"])
    x = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    assert model.preprocess(x).shape == (2, 3, 40, 40)


def test_embed_writes_npy_and_parquet(colour_tree, home, tmp_path):
    info = api.embed("resnet10t", str(colour_tree), tmp_path / "f.npy", pretrained=None, progress=False)
    feats = np.load(tmp_path / "f.npy")
    assert feats.shape == (48, info["shape"][1]) and np.isfinite(feats).all()
    labels = (tmp_path / "f.labels.csv").read_text().splitlines()
    assert labels[0] == "path,label" and len(labels) == 49
    pytest.importorskip("pyarrow")
    api.embed("resnet10t", str(colour_tree), tmp_path / "f.parquet", pretrained=None, progress=False)
    import pandas as pd

    df = pd.read_parquet(tmp_path / "f.parquet")
    assert list(df.columns[:2]) == ["path", "label"] and len(df) == 48


def _tiny_resnet():
    torch.manual_seed(0)
    return create_model(ModelConfig(arch="resnet10t", head=HeadConfig(pooling="avg")), ["a", "b"])


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler (g++ or c++); none on PATH")
def test_compiled_feature_extraction_matches_eager_and_follows_weight_changes(home, monkeypatch):
    from cnnlab.training import features

    # The caller's own compiled function must survive (no torch.compiler.reset()).
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(1)
        return gm.forward

    users_fn = torch.compile(lambda t: t * 2 + 1, backend=counting_backend)
    users_fn(torch.ones(3))
    monkeypatch.setattr(torch.compiler, "reset", lambda: pytest.fail("torch.compiler.reset() was called"))
    model = _tiny_resnet()
    x = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    run = dict(batch_size=4, progress=False, log=lambda s: None)  # 4 + 4 + 2: the last batch is padded
    eager = features.extract_features(model, x, compile=False, **run)
    compiled = features.extract_features(model, x, compile=True, **run)
    assert compiled.shape == eager.shape == (10, model.num_features)
    np.testing.assert_allclose(compiled, eager, rtol=1e-3, atol=1e-4)
    first = features._LAST[1]
    with torch.no_grad():
        model.head.classifier.weight.add_(1.0)  # the head is not part of the features
    features.extract_features(model, x[:5], compile=True, **run)
    assert features._LAST[1] is first  # same model, same backbone weights: the compiled extractor is reused
    with torch.no_grad():  # weights frozen into the compiled graph must not go stale
        model.backbone.conv1[0].weight.mul_(-1.0)
    changed_eager = features.extract_features(model, x, compile=False, **run)
    changed = features.extract_features(model, x, compile=True, **run)
    assert features._LAST[1] is not first
    assert not np.allclose(changed_eager, eager)
    np.testing.assert_allclose(changed, changed_eager, rtol=1e-3, atol=1e-4)
    # Compiled under bf16 autocast: the same features to bf16 precision.
    low = features.extract_features(model, x, compile=True, dtype=torch.bfloat16, **run)
    assert features._LAST[1].compiled_ok
    assert np.linalg.norm(low - changed_eager) / np.linalg.norm(changed_eager) < 0.03
    users_fn(torch.ones(3))
    assert len(compiles) == 1  # still the caller's first compiled graph


def test_feature_extraction_falls_back_to_eager_when_compiling_fails(home, monkeypatch):
    from cnnlab.training import features

    model = _tiny_resnet()
    x = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    eager = features.extract_features(model, x, compile=False, progress=False)

    def broken_compile(fn, **kwargs):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    logs: list[str] = []
    out = features.extract_features(model, x, compile=True, progress=False, log=logs.append)
    np.testing.assert_allclose(out, eager, rtol=1e-5, atol=1e-6)
    assert any("could not compile" in s and "no C++ compiler" in s for s in logs)


def test_feature_stages_pool_intermediate_maps_beside_the_final_features(home):
    base = create_model(ModelConfig(arch="resnet10t", head=HeadConfig(pooling="avg")), ["a", "b"])
    model = create_model(ModelConfig(arch="resnet10t", feature_stages=2, head=HeadConfig(pooling="avg")), ["a", "b"])
    model.backbone.load_state_dict(base.backbone.state_dict())
    model.eval(), base.eval()
    assert model.stage_channels == [256, 512]  # resnet10t's last two stages
    assert model.num_features == base.num_features + 256 + 512
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        emb = model.embed(x)
        assert emb.shape == (3, model.num_features)
        # The final features are the plain model's; the stage-3 block is the mean of its output map.
        torch.testing.assert_close(emb[:, -base.num_features:], base.embed(x))
        stage3 = model.backbone.layer3(model.backbone.layer2(model.backbone.layer1(
            model.backbone.maxpool(model.backbone.act1(model.backbone.bn1(model.backbone.conv1(model.preprocess(x))))))))
        torch.testing.assert_close(emb[:, :256], stage3.mean((2, 3)))
        assert model(x).shape == (3, 2)
    with pytest.raises(Exception, match="feature stages"):
        create_model(ModelConfig(arch="resnet10t", feature_stages=9), ["a", "b"])


def test_feature_stages_change_the_feature_cache_key(colour_tree, home, tmp_path):
    cfg = _config(freeze_base=True, feature_stages=1)
    run = api.train(cfg, data=str(colour_tree), run_dir=tmp_path / "fs", progress=False, log=lambda s: None)
    assert run.metrics["feature_cache"] == "miss"
    plain = api.train(_config(freeze_base=True), data=str(colour_tree), run_dir=tmp_path / "plain",
                      progress=False, log=lambda s: None)
    assert plain.metrics["feature_cache"] == "miss"  # different features: not served from the other run's cache
    probs, _ = api.predict_proba(tmp_path / "fs", [str(colour_tree / "class0")])  # reloads with its stages
    assert probs.shape == (16, 3)
