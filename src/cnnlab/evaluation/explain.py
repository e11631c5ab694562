"""Class-activation heatmaps: where a trained classifier looks when it predicts a class.

:func:`heatmaps` turns uint8 images (N, H, W, 3) and one target class per image into
heatmaps (N, H, W) float32 in [0, 1] at the images' own (decoded) size, by one of:

- ``"gradcam"``: Grad-CAM (Selvaraju et al. 2017) on a feature layer: the layer's activations
  weighted by the spatial mean of the target score's gradient, summed over channels, ReLU'd and
  upsampled bilinearly. One forward and one backward pass per batch.
- ``"occlusion"``: gradient-free (Zeiler & Fergus 2014): a square patch (1/8 of the image side,
  sliding by half its size) is filled with the image's mean colour, and the drop in the target
  class's score is the patch's importance. For when gradients mislead (saturated or frozen
  parts of a net); it costs one forward pass per patch position (225 at any size).

Both come from Captum (the PyTorch organisation's interpretability library: pure Python, no
native or OpenCV dependency, kept in step with PyTorch releases) rather than hand-written hooks.

Heatmaps are always computed in fp32 with autocast off, whatever the run's precision: they
need gradients (Grad-CAM) or small score differences (occlusion), which bf16 blurs. The
probabilities and labels they are shown with come from the predictor's own path (its precision
and TTA); :meth:`cnnlab.predictor.ImagePredictor.explain` passes them in.

The layer Grad-CAM uses is found by :func:`find_layer`: the last stage or block of the backbone
(a module at most two levels below it, in the order modules finish during a forward pass) whose
output is a feature map larger than 1 x 1;
for a timm ResNet at 224 px that is ``backbone.layer4``, at 32 px (where layer4 is 1 x 1)
``backbone.layer3``; any module can be named instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from cnnlab.errors import ConfigError, ModelError

METHODS = ("gradcam", "occlusion")
#: Occlusion's patch side as a fraction of the image side, and its stride as a fraction of the patch.
OCCLUSION_PATCH_FRACTION = 1 / 8
OCCLUSION_STRIDE_FRACTION = 1 / 2
#: Occluded copies evaluated per forward pass: about this many pixels in one batch.
OCCLUSION_PIXELS_PER_EVAL = 16 * 224 * 224 * 4
#: Images explained per forward/backward pass (:func:`heatmaps`); callers that explain files a
#: chunk at a time use whole multiples of it, so their heatmaps are those of one call.
HEATMAP_BATCH = 16


@dataclass
class Explanation:
    """Heatmaps with what they explain: one entry per image, in input order."""

    names: list[str]
    images: np.ndarray  # (N, H, W, 3) uint8, as decoded
    heatmaps: np.ndarray  # (N, H, W) float32 in [0, 1]
    targets: list[int]  # the class index each heatmap is for
    labels: list[str]  # its name
    probabilities: list[float]  # the predictor's probability of that class
    method: str = "gradcam"
    layer: str | None = None  # Grad-CAM's layer (None for occlusion)
    predicted: list[str] = field(default_factory=list)  # the predictor's top-1 label per image

    def peaks(self) -> list[tuple[int, int]]:
        """(x, y) of each heatmap's maximum, in decoded pixels."""
        return [peak(h) for h in self.heatmaps]


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(x, y) of the heatmap's maximum (the first one in row-major order on ties)."""
    from cnnlab.evaluation.overlay import peak_xy

    return peak_xy(heatmap)


def resolve_targets(target: int | str | Sequence[int | str] | None, predicted: np.ndarray,
                    class_names: Sequence[str]) -> list[int]:
    """Class indices, one per image: the predicted class (target None), one class for all, or a list."""
    n = len(predicted)
    if target is None:
        return [int(i) for i in predicted]
    items = [target] * n if isinstance(target, (int, str, np.integer)) else list(target)
    if len(items) != n:
        raise ConfigError(f"explain: target has {len(items)} entries for {n} images")
    out = []
    for t in items:
        if isinstance(t, str) and t in class_names:
            out.append(list(class_names).index(t))
        elif isinstance(t, (int, np.integer)) and not isinstance(t, bool) and 0 <= int(t) < len(class_names):
            out.append(int(t))
        else:
            raise ConfigError(f"explain: target {t!r} is not a class of this model "
                              f"(classes: {', '.join(class_names)}; or an index 0..{len(class_names) - 1})")
    return out


def _feature_maps(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, module, output shape) of the backbone's modules that output one 4-D tensor and run
    once per forward pass, in the order they finish."""
    root = getattr(model, "backbone", model)
    prefix = "backbone." if root is not model else ""
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    calls: dict[str, int] = {}
    handles = []

    def hook(name: str, module: nn.Module):
        def record(_m: nn.Module, _inp: object, out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                seen.append((name, module, tuple(out.shape)))
        return record

    for name, module in root.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(prefix + name, module)))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    return [s for s in seen if calls[s[0]] == 1]


def find_layer(model: nn.Module, probe: torch.Tensor, name: str | None = None) -> tuple[str, nn.Module]:
    """Grad-CAM's layer: ``name`` (relative to the model or to its backbone), else the last feature
    map larger than 1 x 1. ``probe``: one float image (1, 3, H, W) at the size to be explained."""
    maps = _feature_maps(model, probe)
    if name is not None:
        modules = dict(model.named_modules())
        key = name if name in modules else f"backbone.{name}"
        if key not in modules:
            hint = ", ".join(n for n, _, _ in maps[-5:])
            raise ModelError(f"explain: no layer named {name!r} in this model (the last feature maps: {hint or 'none'})")
        shape = next((s for n, _, s in maps if n == key), None)
        if shape is None:
            raise ModelError(f"explain: layer {name!r} does not output one feature map (N, C, H, W) per forward pass")
        return key, modules[key]
    # Whole stages and blocks only (at most two levels below the backbone: "layer4", "blocks.4"), so
    # the map is a block's output, never a half-computed one inside a block (an expansion layer).
    usable = [(n, m) for n, m, s in maps if s[2] > 1 and s[3] > 1 and n.removeprefix("backbone.").count(".") <= 1]
    if not usable:
        arch = getattr(getattr(model, "spec", None), "arch", type(model).__name__)
        raise ModelError(f"explain: {arch} has no feature map larger than 1x1 at {probe.shape[-1]} px "
                         "for Grad-CAM; use method='occlusion'")
    return usable[-1]


def _normalise(heat: torch.Tensor) -> np.ndarray:
    """(N, H, W) scores -> [0, 1] per image: negative evidence is clipped, the maximum becomes 1."""
    heat = heat.clamp(min=0)
    top = heat.flatten(1).amax(1).view(-1, 1, 1)
    return torch.where(top > 0, heat / top.clamp(min=1e-12), torch.zeros_like(heat)).numpy().astype(np.float32)


def heatmaps(model: nn.Module, images: np.ndarray, targets: Sequence[int], *, method: str = "gradcam",
             layer: str | None = None, batch_size: int = HEATMAP_BATCH) -> tuple[np.ndarray, str | None]:
    """(heatmaps (N, H, W) float32 in [0, 1], Grad-CAM's layer name or None) for uint8 ``images``."""
    from captum.attr import LayerAttribution, LayerGradCam, Occlusion

    from cnnlab.evaluation.predict import as_nchw

    if method not in METHODS:
        raise ConfigError(f"explain: method must be one of {', '.join(METHODS)}, got {method!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = as_nchw(images)
    h, w = x.shape[-2:]
    out, layer_name = [], None
    try:
        # fp32 and gradients on, whatever the caller's context (inference mode, autocast).
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            if method == "gradcam":
                layer_name, module = find_layer(model, x[:1].to(device).float(), layer)
                explainer = LayerGradCam(model, module)
            else:
                occlusion = Occlusion(model)
                side = max(2, round(min(h, w) * OCCLUSION_PATCH_FRACTION))
                stride = max(1, round(side * OCCLUSION_STRIDE_FRACTION))
                per_eval = max(1, min(64, OCCLUSION_PIXELS_PER_EVAL // (h * w * batch_size)))
            for i in range(0, x.shape[0], batch_size):
                xb = x[i : i + batch_size].to(device).float().contiguous()
                tb = torch.as_tensor(list(targets[i : i + batch_size]), device=device)
                if method == "gradcam":
                    attr = explainer.attribute(xb, target=tb, relu_attributions=True)
                    attr = LayerAttribution.interpolate(attr.detach(), (h, w), interpolate_mode="bilinear")[:, 0]
                else:
                    baseline = xb.mean(dim=(2, 3), keepdim=True).expand_as(xb).contiguous()
                    with torch.no_grad():
                        attr = occlusion.attribute(xb, target=tb, sliding_window_shapes=(3, side, side),
                                                   strides=(3, stride, stride), baselines=baseline,
                                                   perturbations_per_eval=per_eval).sum(1)
                out.append(_normalise(attr.float().cpu()))
    finally:
        model.train(was_training)
    return np.concatenate(out), layer_name


def explain_images(model: nn.Module, images: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                   names: Sequence[str], *, target: int | str | Sequence[int | str] | None = None,
                   method: str = "gradcam", layer: str | None = None) -> Explanation:
    """Heatmaps for ``images`` with the probabilities ``probs`` (N, classes) a predictor gave them."""
    predicted = probs.argmax(1)
    targets = resolve_targets(target, predicted, class_names)
    maps, layer_name = heatmaps(model, images, targets, method=method, layer=layer)
    return Explanation(names=list(names), images=images, heatmaps=maps, targets=targets,
                       labels=[class_names[t] for t in targets],
                       probabilities=[float(p[t]) for p, t in zip(probs, targets)], method=method,
                       layer=layer_name, predicted=[class_names[int(i)] for i in predicted])


def join_explanations(parts: Sequence[Explanation]) -> Explanation:
    """Explanations of consecutive chunks of images (same method and layer) as one, in order."""
    first = parts[0]
    return Explanation(names=[n for p in parts for n in p.names],
                       images=np.concatenate([p.images for p in parts]),
                       heatmaps=np.concatenate([p.heatmaps for p in parts]),
                       targets=[t for p in parts for t in p.targets], labels=[t for p in parts for t in p.labels],
                       probabilities=[t for p in parts for t in p.probabilities], method=first.method,
                       layer=first.layer, predicted=[t for p in parts for t in p.predicted])


__all__ = ["HEATMAP_BATCH", "METHODS", "Explanation", "explain_images", "find_layer", "heatmaps", "join_explanations",
           "peak", "resolve_targets"]
