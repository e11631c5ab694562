"""Saving and loading a trained model: weights as safetensors (no pickle) + a JSON model card.

The card records the architecture, preprocessing, class names and parameter counts, so the
folder alone is enough to rebuild the model and predict (AutoGluon's habit).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cnnlab.errors import ModelError
from cnnlab.models.card_check import check_spec_dict
from cnnlab.models.classifier import ImageClassifier, ModelSpec
from cnnlab.utils.io import atomic_path, atomic_write_json

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model.json"
CARD_FORMAT = "cnnlab-model/1"  # the card's "format": read_card refuses any other


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage: give it private contiguous copies.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        save_file(state_dict_for_saving(model), str(tmp))


def _pickle_kind(path: Path) -> str | None:
    """"a PyTorch pickle" when the file starts like ``torch.save``'s output (a zip, or a raw pickle:
    PROTO opcode 0x80 and a protocol number 2-5).

    A safetensors file starts with its JSON header's length (8 bytes, little-endian), whose first
    byte may be 0x80 too (a header of 8,576 bytes), then ``{``: that is never taken for a pickle."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        size = path.stat().st_size
    except OSError:
        return None
    # A safetensors file starts with its JSON header's length (8 bytes, little-endian), then "{":
    # a length whose first byte is 0x80 (one in 256) must not be taken for a pickle's opcode.
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "a PyTorch pickle"
    return None


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    kind = _pickle_kind(path)
    if kind:  # loading a pickle can run arbitrary code: cnnlab reads safetensors only
        raise ModelError(f"{path}: this is {kind}, refused (cnnlab loads only safetensors weights)")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same names, other shapes (e.g. another number of classes)
        first = str(exc).strip().splitlines()[1:2] or [str(exc)]
        raise ModelError(f"{path}: does not fit the model ({first[0].strip()})") from None
    if missing or unexpected:
        raise ModelError(
            f"{path}: does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def model_card(model: ImageClassifier, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from cnnlab import __version__
    from cnnlab.models.summary import count_parameters

    card = {
        "format": CARD_FORMAT,
        "cnnlab_version": __version__,
        "spec": model.spec.to_dict(),
        "parameters": count_parameters(model),
    }
    card.update(extra or {})
    return card


def save_model(model: ImageClassifier, folder: str | Path, extra: dict[str, Any] | None = None,
               weights_name: str = WEIGHTS_NAME) -> Path:
    folder = Path(folder)
    save_weights(model, folder / weights_name)
    atomic_write_json(folder / CARD_NAME, model_card(model, extra))
    return folder


def read_card(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CARD_NAME
    if not Path(folder).is_dir():
        raise ModelError(f"{folder}: no such folder" if not Path(folder).exists()
                         else f"{folder}: not a folder; expected a cnnlab run directory")
    if not path.is_file():
        raise ModelError(f"{folder}: no {CARD_NAME} here; is this a cnnlab run directory?")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(card["spec"], dict) or not isinstance(card["spec"]["arch"], str):
            raise TypeError("'spec' must be a mapping with an 'arch' name")
    except UnicodeDecodeError:
        raise ModelError(f"{path}: not a valid model card (not UTF-8 text)") from None
    except (ValueError, KeyError, TypeError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise ModelError(f"{path}: not a valid model card ({what})") from None
    if card.get("format") != CARD_FORMAT:
        raise ModelError(f"{path}: unknown model card format {card.get('format')!r} "
                         f"(this cnnlab reads {CARD_FORMAT!r})")
    # The card is untrusted: its spec (above all spec.kwargs, passed to timm) is checked before use.
    check_spec_dict(card["spec"], str(path))
    return card


def update_card(folder: str | Path, changes: dict[str, Any]) -> dict[str, Any]:
    """Write ``changes`` into a saved model card (atomically); returns the new card."""
    card = {**read_card(folder), **changes}
    atomic_write_json(Path(folder) / CARD_NAME, card)
    return card


def load_model(folder: str | Path, weights: str = "final") -> ImageClassifier:
    """Load a saved model. ``weights``: "final" (model.safetensors) or "best" (best.safetensors)."""
    from cnnlab.models.registry import model_from_spec

    folder = Path(folder)
    card = read_card(folder)
    try:
        spec = ModelSpec.from_dict(card["spec"])
    except (TypeError, KeyError, ValueError) as exc:
        raise ModelError(f"{folder / CARD_NAME}: not a valid model card ({exc})") from None
    model = model_from_spec(spec)
    name = {"final": WEIGHTS_NAME, "last": WEIGHTS_NAME, "best": "best.safetensors"}.get(weights, weights)
    load_weights(model, folder / name)
    model.eval()
    if not torch.cuda.is_available():
        from cnnlab.models.cpu_kernels import optimize_for_cpu

        optimize_for_cpu(model)
        model.to(memory_format=torch.channels_last)
    return model
