"""ONNX export with its parity check, and the torch / onnxruntime backends (predict, evaluate)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from cnnlab import api  # noqa: E402
from cnnlab.cli.main import main  # noqa: E402
from cnnlab.config import ModelConfig  # noqa: E402
from cnnlab.errors import CnnlabError, ConfigError, DataError, ModelError  # noqa: E402
from cnnlab.export import create_backend  # noqa: E402
from cnnlab.export.onnx import export_onnx, synthetic_images  # noqa: E402
from cnnlab.export.runtime import OnnxRuntimeBackend  # noqa: E402
from cnnlab.inference import InferenceModel  # noqa: E402
from cnnlab.predictor import ImagePredictor  # noqa: E402
from cnnlab.models.io import save_model  # noqa: E402
from cnnlab.models.registry import create_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_FASTNET = {"widths": [8, 16, 16], "depth": 1}
TRAIN_CFG = {
    "name": "export-test", "seed": 0, "data": {"validation_split": 0.25},
    "model": {"arch": "cifar_fastnet", "kwargs": TINY_FASTNET, "head": {"pooling": "max"}},
    "train": {"epochs": 4, "batch_size": 16, "precision": "fp32", "optimizer": {"name": "adam", "lr": 1e-2}},
}


def untrained_run(folder: Path, arch: str, size: int = 32, **kwargs) -> Path:
    """A run directory (card + weights) of an untrained model whose BatchNorm statistics have
    been set on a few batches (so activations have a realistic scale)."""
    model = create_model(ModelConfig(arch=arch, kwargs=kwargs), ["cat", "dog", "frog"])
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(torch.from_numpy(synthetic_images(8, size, seed)).permute(0, 3, 1, 2))
    save_model(model.eval(), folder, {"data_image_size": size})
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny cifar_fastnet trained for a few seconds on three colour classes (16 px)."""
    from conftest import _write_tree

    root = tmp_path_factory.mktemp("export")
    tree = _write_tree(root / "tree")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(root / "home"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        run = api.train(TRAIN_CFG, data=str(tree), run_dir=root / "run", progress=False, log=lambda s: None)
        torch.set_num_threads(threads)
    return {"run": run.run_dir, "tree": tree}


# ------------------------------------------------------------------ every trained architecture

ARCHS = [
    pytest.param("cifar_fastnet", TINY_FASTNET, id="cifar_fastnet"),
    pytest.param("mobilenetv1_100", {}, id="mobilenetv1_100", marks=pytest.mark.slow),
    pytest.param("efficientnet_lite0", {}, id="efficientnet_lite0", marks=pytest.mark.slow),
    pytest.param("efficientnet_lite1", {}, id="efficientnet_lite1", marks=pytest.mark.slow),
    pytest.param("efficientnet_lite2", {}, id="efficientnet_lite2", marks=pytest.mark.slow),
    pytest.param("nasnet_mobile", {}, id="nasnet_mobile", marks=pytest.mark.slow),
    pytest.param("resnet18", {}, id="resnet18", marks=pytest.mark.slow),
]


def fp32_export(run, *args, **kwargs):
    """Export with the parity check against the torch path run in fp32 (whatever this CPU has)."""
    return ImagePredictor.load(run, precision="fp32").export_onnx(*args, **kwargs)


def test_parity_check_runs_in_the_precision_the_torch_path_serves_in(tmp_path, monkeypatch):
    """With bf16 forced (what a Sapphire Rapids serves in), the check compares against the bf16 torch
    path and holds it to the bf16 tolerance; in fp32, to the fp32 one (and a bf16 reference fails that)."""
    from cnnlab.export.onnx import PARITY_TOLERANCE
    from cnnlab.utils import hardware

    run = untrained_run(tmp_path / "run", "cifar_fastnet", **TINY_FASTNET)
    monkeypatch.setenv(hardware.BF16_ENV, "force")
    bf16 = ImagePredictor.load(run).export_onnx(parity_count=64)["parity"]
    assert bf16["torch_precision"] == "bf16" and bf16["within_tolerance"], bf16
    assert bf16["tolerance"]["max_abs_diff"] == PARITY_TOLERANCE["bf16"][0]
    monkeypatch.setenv(hardware.BF16_ENV, "0")
    fp32 = ImagePredictor.load(run).export_onnx(parity_count=64)["parity"]
    assert fp32["torch_precision"] == "fp32" and fp32["within_tolerance"] and fp32["max_abs_diff"] < 1e-3, fp32
    assert bf16["max_abs_diff"] > 10 * fp32["max_abs_diff"]  # bf16 really ran on the torch side


@pytest.mark.parametrize("arch,kwargs", ARCHS)
def test_every_architecture_exports_with_fp32_parity(tmp_path, arch, kwargs):
    run = untrained_run(tmp_path / arch, arch, **kwargs)
    # nasnet's dynamo export takes over a minute on 2 cores; the TorchScript exporter is the fallback path
    exporter = "torchscript" if arch == "nasnet_mobile" else "auto"
    result = fp32_export(run, parity_count=1000, exporter=exporter)
    p = result["parity"]
    assert p["count"] == 1000
    assert p["top1_agreement"] >= 0.999, p
    assert p["max_abs_diff"] < 1e-3, p
    assert result["input"]["shape"] == ["batch", 32, 32, 3]
    # dynamic batch axis: batch 1 and 7 both run
    ort = OnnxRuntimeBackend(result["path"])
    assert ort.predict_logits(synthetic_images(1, 32)).shape == (1, 3)
    assert ort.predict_logits(synthetic_images(7, 32)).shape == (7, 3)


def test_export_resizes_inside_the_graph_to_the_model_input_size(tmp_path):
    model = create_model(ModelConfig(arch="cifar_fastnet", kwargs=TINY_FASTNET, input_size=24), ["a", "b"])
    save_model(model.eval(), tmp_path / "run", {"data_image_size": 16})
    result = fp32_export(tmp_path / "run", parity_count=200)
    assert result["input"]["shape"] == ["batch", 16, 16, 3]
    assert result["parity"]["top1_agreement"] >= 0.999 and result["parity"]["max_abs_diff"] < 1e-4


def test_export_failure_is_one_clear_line(tmp_path, monkeypatch):
    run = untrained_run(tmp_path / "run", "cifar_fastnet", **TINY_FASTNET)
    import cnnlab.export.onnx as onnx_mod

    def broken(*a, **k):
        raise RuntimeError("Unsupported operator aten::weird\nlong traceback text")

    monkeypatch.setattr(onnx_mod, "_torch_export", broken)
    with pytest.raises(ModelError) as info:
        export_onnx(run)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("cifar_fastnet: ONNX export failed")
    assert "aten::weird" in msg and "dynamo" in msg and "torchscript" in msg
    assert not list((tmp_path / "run").glob("*.onnx")) and not list((tmp_path / "run").glob(".*tmp"))


# ------------------------------------------------------------------ int8, real images, opsets


def test_int8_quantization_states_its_agreement(trained, capsys):
    result = fp32_export(trained["run"], quantize="int8", data=str(trained["tree"]), log=print)
    out = capsys.readouterr().out
    assert result["path"].endswith("model.int8.onnx") and Path(result["path"]).is_file()
    assert result["parity"]["count"] == 72  # all of the 72 real images
    assert result["parity_fp32"]["top1_agreement"] == 1.0
    # int8 on this tiny model: stated, and required to stay a usable classifier
    print(f"int8 top-1 agreement {result['parity']['top1_agreement']:.4f}, max diff {result['parity']['max_abs_diff']:.4f}")
    assert result["parity"]["top1_agreement"] >= 0.9
    assert "parity (fp32 graph) vs PyTorch" in out and "parity vs PyTorch (fp32) on 72 images" in out


def test_old_opset_uses_the_torchscript_exporter(trained, tmp_path):
    result = fp32_export(trained["run"], tmp_path / "m13.onnx", opset=13, parity_count=100)
    assert result["exporter"] == "torchscript" and result["opset"] == 13
    assert result["parity"]["top1_agreement"] == 1.0


# ------------------------------------------------------------------ the command


def test_export_command_json_and_atomic_write(trained, tmp_path, capsys):
    out = tmp_path / "sub" / "net.onnx"
    assert main(["export", str(trained["run"]), "--out", str(out), "--json", "--parity-images", "300"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["path"] == str(out) and out.is_file()
    assert result["parity"]["count"] == 300 and result["parity"]["top1_agreement"] == 1.0
    assert [p.name for p in out.parent.iterdir()] == ["net.onnx"]  # no temporary file left
    meta = OnnxRuntimeBackend(out)
    assert meta.class_names == ["blue", "green", "red"] and meta.image_size == 16


def test_export_command_prints_the_parity_check(trained, capsys):
    assert main(["export", str(trained["run"]), "--parity-images", "50"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "max |logit diff|" in out and "top-1 agreement 100.00%" in out
    assert (trained["run"] / "model.onnx").is_file()


@pytest.mark.parametrize("argv,needle", [
    (["export", "/no/such/run"], "no such folder"),
    (["export", "RUN", "--opset", "99"], "--opset must be between 7 and 23"),
    (["export", "RUN", "--weights", "best"], "no best weights"),
    (["export", "RUN", "--data", "/no/such/folder"], "/no/such/folder"),
])
def test_export_command_bad_input_is_one_line_exit_2(trained, capsys, argv, needle):
    argv = [str(trained["run"]) if a == "RUN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnlab: error:") and needle in err and "\n" not in err


# ------------------------------------------------------------------ backends


def test_backends_agree_and_ort_threads_do_not_spin(trained):
    from cnnlab.utils.cores import threads_per_process

    x = synthetic_images(64, 16, seed=3)
    ort_b = create_backend("onnxruntime", trained["run"])
    for tta in ("none", "flip", "flip_translate"):
        torch_path = InferenceModel.load(trained["run"], tta=tta, precision="fp32")
        np.testing.assert_allclose(ort_b.predict_logits(x, tta=tta), torch_path.raw_logits(x).numpy(), atol=1e-4)
    opts = ort_b.session.get_session_options()
    assert opts.intra_op_num_threads == threads_per_process(1)  # the one formula: OMP_NUM_THREADS, else the cores
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    ort_b.predict_logits(synthetic_images(256, 16))
    before = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - before < 0.1  # no thread keeps spinning on a core after the call
    with pytest.raises(DataError, match="must be 16x16"):
        ort_b.predict_logits(synthetic_images(2, 20))
    with pytest.raises(ConfigError, match="backend must be one of"):
        create_backend("tensorrt", trained["run"])


def _png(folder: Path, name: str, colour) -> Path:
    rng = np.random.default_rng(len(name))
    px = np.clip(np.array(colour) + rng.integers(-20, 21, (20, 24, 3)), 0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(px).save(folder / name)
    return folder / name


def test_predict_command_same_results_with_both_backends(trained, tmp_path, capsys):
    imgs = [_png(tmp_path, "r.png", (215, 35, 30)), _png(tmp_path, "g.png", (35, 200, 45))]
    results = {}
    for backend in ("torch", "onnxruntime"):
        assert main(["predict", str(trained["run"]), *map(str, imgs), "--format", "json", "--backend", backend]) == 0
        results[backend] = json.loads(capsys.readouterr().out)
    for a, b in zip(results["torch"], results["onnxruntime"]):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        np.testing.assert_allclose([t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]],
                                   atol=1e-5)


def test_evaluate_command_same_results_with_both_backends(trained, capsys):
    reports = {}
    for backend in ("torch", "onnxruntime"):
        assert main(["evaluate", str(trained["run"]), "--json", "--backend", backend]) == 0
        reports[backend] = json.loads(capsys.readouterr().out)
    t, o = reports["torch"], reports["onnxruntime"]
    assert o["backend"] == "onnxruntime" and o["count"] == t["count"] == 72
    assert o["accuracy"] == t["accuracy"] and o["confusion_matrix"] == t["confusion_matrix"]
    assert abs(o["loss"] - t["loss"]) < 1e-5


def test_onnx_backend_refuses_foreign_files(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(CnnlabError, match="cannot load it"):
        OnnxRuntimeBackend(bad)
    with pytest.raises(ModelError, match="no such ONNX file"):
        OnnxRuntimeBackend(tmp_path / "missing.onnx")


def test_the_predictor_exports_and_predicts_through_onnxruntime(trained, tmp_path):
    from cnnlab import ImagePredictor

    out = tmp_path / "p.onnx"
    result = ImagePredictor.load(trained["run"]).export_onnx(out, data=str(trained["tree"]))
    assert out.is_file() and result["parity"]["top1_agreement"] >= 0.999
    torch_p = ImagePredictor.load(trained["run"]).predict_proba(str(trained["tree"]))
    ort_p = ImagePredictor.load(trained["run"], backend="onnxruntime").predict_proba(str(trained["tree"]))
    assert list(ort_p.columns) == list(torch_p.columns)
    assert (ort_p.to_numpy().argmax(1) == torch_p.to_numpy().argmax(1)).mean() >= 0.999
    assert abs(ort_p.to_numpy() - torch_p.to_numpy()).max() < 1e-3


def test_the_onnx_backend_reads_pixels_on_disk_a_chunk_at_a_time(trained, monkeypatch):
    """Joined splits (or a memory map) reach ONNX Runtime a chunk of whole batches at a time, with
    the logits of the same images given as one in-memory array (issue 23)."""
    from cnnlab.data import rows
    from cnnlab.inference import model as model_mod

    inf = model_mod.InferenceModel.load(trained["run"], backend="onnxruntime", tta="flip")
    x = synthetic_images(40, inf.decode_size, 3)
    runtime = inf._onnx()
    monkeypatch.setattr(runtime, "batch_size", 8)
    monkeypatch.setattr(model_mod, "ONNX_CHUNK", 16)
    calls = []
    real = runtime.predict_logits
    monkeypatch.setattr(runtime, "predict_logits", lambda a, tta="none": calls.append(len(a)) or real(a, tta))
    joined = inf.raw_logits(rows.JoinedRows([x[:25], x[25:]]))
    assert calls == [16, 16, 8]
    whole = inf.raw_logits(x)
    assert calls[3:] == [40]
    assert torch.equal(joined, whole)
