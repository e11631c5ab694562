"""Checks on what a model card (or a config's ``model:`` section) may ask the model factory for.

A model card travels with a run directory, so it is untrusted input: its ``spec.kwargs`` go to
``timm.create_model``, which accepts arguments that open files or download (``checkpoint_path``
is ``torch.load``-ed, ``pretrained_cfg`` / ``pretrained_cfg_overlay`` can name a file, a URL or a
hub id), and architecture sizes that can demand any amount of memory. So:

- ``model.kwargs`` keys come from an allow-list of architecture arguments (below); any key that
  names a path, URL, file, hub or download is refused with a line saying so;
- values are JSON scalars or short lists of them, integers within bounds, strings short;
- every field of ``spec`` has its type and range checked before anything is built.

Hand-written (a dozen checks): no validation library in the dependencies covers this, and a
schema library would not know which timm arguments touch the disk.
"""

from __future__ import annotations

import math
from typing import Any

from cnnlab.errors import ModelError

#: timm / cnnlab architecture arguments a card or config may set (shapes, widths, regularisation,
#: layer choices by name). Nothing here reads a file or the network.
ALLOWED_KWARGS = frozenset({
    # cnnlab's own architectures (fastnet.py, nasnet.py)
    "widths", "depth", "whiten_kernel", "bn_momentum", "feature_scale", "activation",
    "penultimate_filters", "num_blocks", "stem_block_filters", "filter_multiplier", "skip_reduction",
    "stem_size", "num_features",
    # common timm architecture arguments
    "drop_path_rate", "drop_block_rate", "global_pool", "output_stride", "img_size", "patch_size",
    "embed_dim", "embed_dims", "num_heads", "mlp_ratio", "qkv_bias", "depths", "dims", "layers",
    "channels", "width_multiplier", "channel_multiplier", "depth_multiplier", "width_factor",
    "act_layer", "norm_layer", "stem_type", "stem_width", "block_type", "attn_layer", "se_layer",
    "class_token", "no_embed_class", "reg_tokens", "init_values", "use_conv_stem", "fix_stem",
    "bn_eps",
})

#: Substrings of argument names that mean "reads a file, a URL or the hub": refused with this reason.
_FORBIDDEN_PARTS = ("checkpoint", "pretrained", "path", "url", "file", "dir", "hub", "download", "cache")

MAX_INT = 1 << 16  # widths, depths, image sizes ... (65,536)
MAX_LIST = 64
MAX_STR = 200
MAX_CLASSES = 100_000
MAX_INPUT_SIZE = 4096
#: Tighter caps on the size-like kwargs, so a card cannot ask for, e.g., a 65,536-px ViT.
SIZE_CAPS = {"img_size": 1024, "embed_dim": 4096, "embed_dims": 4096, "dims": 4096, "channels": 4096,
             "widths": 4096, "stem_size": 4096, "stem_width": 4096, "num_features": 8192,
             "penultimate_filters": 8192, "stem_block_filters": 4096, "filter_multiplier": 16, "depth": 256, "depths": 64, "layers": 64, "num_blocks": 64,
             "num_heads": 256, "patch_size": 256}


def _check_value(key: str, value: Any, where: str) -> None:
    def bad(why: str) -> ModelError:
        return ModelError(f"{where}: model.kwargs {key!r}: {why}")

    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and len(value) > MAX_LIST:
        raise bad(f"a list of {len(value)} items (at most {MAX_LIST})")
    for v in items:
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, int):
            cap = SIZE_CAPS.get(key, MAX_INT)
            if not -cap <= v <= cap:
                raise bad(f"{v} is out of range (|value| <= {cap})")
        elif isinstance(v, float):
            if not math.isfinite(v) or abs(v) > MAX_INT:
                raise bad(f"{v} is not a finite number within +-{MAX_INT}")
        elif isinstance(v, str):
            if len(v) > MAX_STR:
                raise bad(f"a string of {len(v)} characters (at most {MAX_STR})")
        else:
            raise bad(f"must be a number, a string, true/false or a list of them, got {type(v).__name__}")


def check_model_kwargs(kwargs: Any, where: str = "model") -> dict[str, Any]:
    """``kwargs`` if every key is allowed and every value is a bounded JSON scalar or list, else ModelError."""
    if not isinstance(kwargs, dict):
        raise ModelError(f"{where}: model.kwargs must be a mapping, got {type(kwargs).__name__}")
    for key, value in kwargs.items():
        if not isinstance(key, str):
            raise ModelError(f"{where}: model.kwargs key {key!r} is not a string")
        low = key.lower()
        if any(part in low for part in _FORBIDDEN_PARTS):
            raise ModelError(f"{where}: model.kwargs {key!r} is refused: it can make the model factory open "
                             "a file or download (cnnlab loads weights only from safetensors files)")
        if key not in ALLOWED_KWARGS:
            raise ModelError(f"{where}: model.kwargs {key!r} is not an allowed architecture argument "
                             f"(allowed: {', '.join(sorted(ALLOWED_KWARGS))})")
        _check_value(key, value, where)
    return kwargs


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_spec_dict(d: Any, where: str) -> None:
    """Types and ranges of a model card's ``spec`` (ModelSpec.to_dict's output); ModelError on the first fault."""
    from cnnlab.models.classifier import ModelSpec

    def bad(field: str, why: str) -> ModelError:
        return ModelError(f"{where}: not a valid model card (spec.{field}: {why})")

    if not isinstance(d, dict):
        raise ModelError(f"{where}: not a valid model card ('spec' must be a mapping)")
    known = set(ModelSpec.__dataclass_fields__)
    unknown = sorted(set(map(str, d)) - known)
    if unknown:
        raise bad(unknown[0], "unknown field")
    for req in ("arch", "num_classes", "class_names"):
        if req not in d:
            raise bad(req, "missing")
    if not isinstance(d["arch"], str) or not 0 < len(d["arch"]) <= MAX_STR:
        raise bad("arch", f"must be a model name, got {d['arch']!r:.80}")
    n = d["num_classes"]
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_CLASSES:
        raise bad("num_classes", f"must be an integer 2..{MAX_CLASSES:,}, got {n!r:.40}")
    names = d["class_names"]
    if not isinstance(names, list) or len(names) != n or not all(isinstance(c, str) and len(c) <= 1000 for c in names):
        raise bad("class_names", f"must be a list of {n} class names (strings)")
    for key in ("mean", "std"):
        if key in d:
            v = d[key]
            if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_num(x) for x in v):
                raise bad(key, "must be a list of 3 numbers")
            if key == "std" and not all(x > 0 for x in v):
                raise bad(key, "must be positive")
    if "preprocessing" in d and d["preprocessing"] not in ("keras_tf", "imagenet", "unit", "auto"):
        raise bad("preprocessing", f"unknown mode {d['preprocessing']!r:.40}")
    if "resize_mode" in d and d["resize_mode"] not in ("nearest", "bilinear", "bicubic"):
        raise bad("resize_mode", f"unknown mode {d['resize_mode']!r:.40}")
    size = d.get("input_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_INPUT_SIZE):
        raise bad("input_size", f"must be null or an integer 1..{MAX_INPUT_SIZE}, got {size!r:.40}")
    if "drop_rate" in d and not (_num(d["drop_rate"]) and 0 <= d["drop_rate"] < 1):
        raise bad("drop_rate", "must be a number in [0, 1)")
    fs = d.get("feature_stages", 0)
    if isinstance(fs, bool) or not isinstance(fs, int) or not 0 <= fs <= 16:
        raise bad("feature_stages", "must be an integer 0..16")
    head = d.get("head", {})
    head_fields = {"pooling": str, "units": int, "activation": str, "l2": (int, float), "dropout": (int, float)}
    if not isinstance(head, dict):
        raise bad("head", "must be a mapping")
    for k, v in head.items():
        if k not in head_fields:
            raise bad(f"head.{k}", "unknown field")
        if isinstance(v, bool) or not isinstance(v, head_fields[k]):
            raise bad(f"head.{k}", f"wrong type {type(v).__name__}")
    if not 0 <= head.get("units", 0) <= MAX_INT:
        raise bad("head.units", f"must be 0..{MAX_INT}")
    check_model_kwargs(d.get("kwargs", {}), where)
