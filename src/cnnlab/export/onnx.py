"""Export a trained run to ONNX, with the preprocessing inside the graph and a parity check.

The exported graph takes what a user has: ``images``, an ``(N, H, W, 3)`` uint8 RGB batch (NHWC,
0..255, N dynamic, H = W = the run's image size, see runtime.run_image_size) and returns
``logits`` ``(N, classes)`` in float32. Inside the graph: NHWC -> NCHW, the scaling and
normalisation of the model's preprocessing, and the resize to the model's input size when the
run has one. The model card travels in the file's metadata (``cnnlab_card``), so the file alone
is enough to serve it (class names included).

After every export the file is loaded in ONNX Runtime and compared with the torch inference path
(``reference``: cnnlab.inference's, in the precision it serves in, passed by the predictor) on up
to 1,000 images (real ones from ``data`` when given, else seeded synthetic ones): the largest
absolute logit difference and the top-1 agreement are returned, printed by the CLI and held to
:data:`PARITY_TOLERANCE` for that precision (``within_tolerance``).

``quantize="int8"`` adds ONNX Runtime's static quantization (QDQ, per-channel int8 weights,
uint8 activations with reduce_range for AVX2 CPUs without VNNI), calibrated on the same images.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cnnlab.errors import ConfigError, DataError, ModelError
from cnnlab.export.runtime import (
    INPUT_LAYOUT,
    META_CARD,
    META_IMAGE_SIZE,
    META_LAYOUT,
    OnnxRuntimeBackend,
    load_torch_model,
    run_image_size,
)
from cnnlab.models.io import read_card
from cnnlab.utils.io import atomic_path

DEFAULT_OPSET = 18
QUANTIZE_MODES = ("int8",)
CALIBRATION_IMAGES = 256
#: The parity check's tolerance against the torch path, by the precision that path serves in:
#: (largest |logit difference|, lowest top-1 agreement). fp32 against fp32 differs by rounding
#: alone; bf16 keeps 8 bits of mantissa, so logits differ by up to a few hundredths and an image
#: whose top two classes are that close may swap.
PARITY_TOLERANCE = {"fp32": (1e-3, 0.999), "bf16": (0.5, 0.98), "fp16": (0.1, 0.99)}


class UInt8NHWC(nn.Module):
    """uint8 NHWC images -> the classifier (whose first module scales and resizes them)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.permute(0, 3, 1, 2))


def default_path(run_dir: str | Path, weights: str = "final", quantize: str | None = None) -> Path:
    stem = "best" if weights == "best" else "model"
    return Path(run_dir) / (f"{stem}.int8.onnx" if quantize else f"{stem}.onnx")


def _torch_export(wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int, exporter: str) -> None:
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=65536)
            program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=opset,
                                        input_names=["images"], output_names=["logits"],
                                        dynamic_shapes={"images": {0: batch}}, verbose=False)
            program.save(str(path))
        else:
            torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _write_metadata(path: Path, card: dict[str, Any], size: int) -> None:
    import json

    import onnx

    model = onnx.load(str(path))
    for key, value in ((META_CARD, json.dumps(card)), (META_IMAGE_SIZE, str(size)), (META_LAYOUT, INPUT_LAYOUT)):
        entry = next((p for p in model.metadata_props if p.key == key), None) or model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = (f"cnnlab {card['spec']['arch']}: images uint8 (N, {size}, {size}, 3) RGB -> "
                        f"logits (N, {card['spec']['num_classes']})")
    onnx.save(model, str(path))


def export_graph(run_dir: str | Path, path: Path, *, weights: str = "final", opset: int = DEFAULT_OPSET,
                 exporter: str = "auto") -> str:
    """Write the fp32 graph of a run to ``path`` (not atomically); returns the exporter used."""
    card = read_card(run_dir)
    size = run_image_size(run_dir, card)
    if size is None:
        raise ModelError(f"{run_dir}: the run records no image size (data_image_size or model.input_size); "
                         "cannot fix the exported input's height and width")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ConfigError(f"exporter must be auto, dynamo or torchscript, got {exporter!r}")
    if not 7 <= opset <= 23:
        raise ConfigError(f"--opset must be between 7 and 23, got {opset}")
    model = load_torch_model(run_dir, weights)
    wrapper = UInt8NHWC(model).eval()
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    # The dynamo exporter writes opset 18 and later; older opsets need the TorchScript exporter.
    order = ["torchscript"] if opset < 18 else (["dynamo", "torchscript"] if exporter == "auto" else [exporter])
    if exporter == "torchscript":
        order = ["torchscript"]
    errors = []
    for name in order:
        try:
            _torch_export(wrapper, example, path, opset, name)
            _write_metadata(path, card, size)
            return name
        except Exception as exc:  # the exporters raise many types; report the first line of each
            errors.append(f"{name}: {_first_line(exc)}")
    raise ModelError(f"{card['spec']['arch']}: ONNX export failed ({'; '.join(errors)})")


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Seeded image-like uint8 pictures: smooth random colour fields plus a little noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 4, 4, 3)).astype(np.float32)
    t = torch.from_numpy(coarse).permute(0, 3, 1, 2)
    smooth = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    x = smooth.permute(0, 2, 3, 1).numpy() + rng.normal(0, 12, (n, size, size, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def parity_images(data: Any, size: int, n: int = 1000, seed: int = 0) -> tuple[np.ndarray, str]:
    """Up to ``n`` images from a data source (its test split when it has one), else synthetic ones."""
    if data is None:
        return synthetic_images(n, size, seed), f"{n} synthetic images (seed {seed})"
    from cnnlab.data.sources import load_source

    bundle = load_source(data, image_size=size)
    split = bundle.test if bundle.test is not None else bundle.all_images()
    idx = np.random.default_rng(seed).permutation(len(split.x))[:n]
    return np.ascontiguousarray(split.x[np.sort(idx)]), f"{len(idx)} images of {data}"


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Max |logit difference| and top-1 agreement of two logit arrays."""
    if reference.shape != other.shape:
        raise ModelError(f"parity check: logits of shape {other.shape}, expected {reference.shape}")
    if not len(reference):
        return {"max_abs_diff": 0.0, "top1_agreement": 1.0}
    return {"max_abs_diff": float(np.abs(reference - other).max()),
            "top1_agreement": float((reference.argmax(1) == other.argmax(1)).mean())}


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": calibration[i : i + 32]} for i in range(0, len(calibration), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"])


def export_onnx(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    weights: str = "final",
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    data: Any = None,
    parity_count: int = 1000,
    exporter: str = "auto",
    log: Callable[[str], None] | None = None,
    reference: Callable[[np.ndarray], np.ndarray] | None = None,
    reference_precision: str = "fp32",
) -> dict[str, Any]:
    """Export a run to ONNX (atomically), run the parity check, return what happened.

    ``reference``: the torch path's logits of uint8 images (``ImagePredictor.export_onnx`` passes its
    inference path's, without TTA), in ``reference_precision``; without it no parity check runs."""
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
    if parity_count < 0:
        raise ConfigError(f"parity images must be >= 0, got {parity_count}")
    run_dir = Path(run_dir)
    card = read_card(run_dir)
    if not (run_dir / ("best.safetensors" if weights == "best" else "model.safetensors")).is_file():
        raise ModelError(f"{run_dir}: no {weights} weights to export")
    out = Path(out) if out is not None else default_path(run_dir, weights, quantize)
    if out.exists() and out.is_dir():
        raise DataError(f"--out {out}: is a folder; give a file name such as model.onnx")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        used = export_graph(run_dir, fp32, weights=weights, opset=opset, exporter=exporter)
        size = run_image_size(run_dir, card)
        assert size is not None  # export_graph refused runs without one
        images, described = np.zeros((0, size, size, 3), np.uint8), "no images"
        n = max(parity_count, CALIBRATION_IMAGES if quantize else 0)
        if n:
            images, described = parity_images(data, size, n)
        final = fp32
        if quantize:
            final = Path(tmp) / "model.int8.onnx"
            quantize_int8(fp32, final, images[:CALIBRATION_IMAGES])
            _write_metadata(final, card, size)
        with atomic_path(out) as tmp_out:
            tmp_out.write_bytes(final.read_bytes())
        seconds = time.perf_counter() - t0
        check = images[:parity_count]
        result: dict[str, Any] = {
            "path": str(out), "arch": card["spec"]["arch"], "format": "onnx", "opset": opset, "exporter": used,
            "quantize": quantize, "input": {"name": "images", "dtype": "uint8", "layout": "NHWC",
                                            "shape": ["batch", size, size, 3]},
            "output": {"name": "logits", "shape": ["batch", int(card["spec"]["num_classes"])]},
            "bytes": out.stat().st_size, "export_seconds": round(seconds, 2),
        }
        if len(check) and reference is not None:
            ref = np.asarray(reference(check), np.float32)
            max_diff, min_top1 = PARITY_TOLERANCE.get(reference_precision, PARITY_TOLERANCE["fp32"])
            got = compare(ref, OnnxRuntimeBackend(out).predict_logits(check))
            result["parity"] = {"images": described if len(check) == len(images) else
                                f"{len(check)} of {described}", "count": len(check), **got,
                                "torch_precision": reference_precision,
                                "tolerance": {"max_abs_diff": max_diff, "top1_agreement": min_top1},
                                "within_tolerance": got["max_abs_diff"] <= max_diff
                                and got["top1_agreement"] >= min_top1}
            if quantize:  # the fp32 graph's parity too, so the int8 cost is visible
                result["parity_fp32"] = compare(ref, OnnxRuntimeBackend(fp32).predict_logits(check))
    if log is not None:
        log(format_result(result))
    return result


def format_result(r: dict[str, Any]) -> str:
    lines = [f"wrote {r['path']} ({r['bytes'] / 1e6:.2f} MB, {r['arch']}, opset {r['opset']}, "
             f"{r['exporter']} exporter{', int8' if r['quantize'] else ''}, {r['export_seconds']:.1f}s)",
             f"input: images uint8 {tuple(r['input']['shape'])} NHWC RGB 0..255 (scaling and resize inside the graph)"]
    for key, label in (("parity_fp32", "parity (fp32 graph)"), ("parity", "parity")):
        if key in r:
            p = r[key]
            what = f" on {p['images']}" if "images" in p else ""
            torch_side = f" ({p['torch_precision']})" if "torch_precision" in p else ""
            verdict = ("" if "within_tolerance" not in p else
                       "; within tolerance" if p["within_tolerance"] else "; OUTSIDE the tolerance")
            lines.append(f"{label} vs PyTorch{torch_side}{what}: max |logit diff| {p['max_abs_diff']:.3g}, "
                         f"top-1 agreement {100 * p['top1_agreement']:.2f}%{verdict}")
    return "\n".join(lines)
