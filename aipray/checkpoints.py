"""Reading network weights, the one reader behind the extractor's weights and the LPIPS backbone:
torchvision's ImageNet weights through torch's hub cache (downloaded there only when allowed),
and the state dict inside a local checkpoint's common wrappers.

Plain torch, no aipray import: the models and the metrics both build on it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

log = logging.getLogger(__name__)


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither in torch's hub cache nor downloadable (offline machine)."""


def hub_file(weights: Any) -> Path:
    """Where torch's hub cache keeps torchvision ``weights`` (a weights enum value):
    ``torch.hub.get_dir()/checkpoints/<file name of its URL>`` (``TORCH_HOME`` moves it)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def hub_state_dict(
    weights: Any, arch: str, *, download: bool, key: str, instead: str
) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of torchvision ``weights`` of network ``arch`` and its file in torch's hub
    cache, downloaded there first when ``download`` allows it.

    Raises:
        WeightsUnavailableError: one line naming the file, the cache, why it could not be had,
            where to copy it and, ``instead``, what the sweep section ``key`` could name
            instead.
    """
    file = hub_file(weights)
    if file.is_file():
        log.info("%s: loading ImageNet weights of %s from %s", key, arch, file)
        return torch.load(file, map_location="cpu", weights_only=True), file
    how, cause = f"downloading is disabled ({key}.download: false)", None
    if download:
        log.info("%s: downloading ImageNet weights of %s from %s", key, arch, weights.url)
        try:
            state = torch.hub.load_state_dict_from_url(
                weights.url,
                model_dir=str(file.parent),
                map_location="cpu",
                progress=False,
                check_hash=True,
                weights_only=True,
            )
            return state, file
        except Exception as err:  # no network, proxy, hash mismatch, full disk ...
            how = f"downloading it failed ({type(err).__name__}: {err})".replace("\n", " ")
            cause = err
    raise WeightsUnavailableError(
        f"{key}: ImageNet weights of {arch} ({type(weights).__name__}.{weights.name}) are not "
        f"available: {file.name} is not in torch's hub cache {file.parent} and {how}. Download "
        f"{weights.url} on a machine with internet access and copy it to {file} (TORCH_HOME "
        f"moves the cache), or {instead}."
    ) from cause


def state_container(obj: Any) -> Any:
    """What ``{"state_dict"|"model_state_dict"|"model": ...}`` nesting wraps (Free-AT's
    ``model_best.pth.tar`` keeps its net under ``state_dict``, the robustness library's
    ``imagenet_linf_4.pt`` under ``model``, next to ``optimizer``, ``epoch`` ...)."""
    for name in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(name), dict):
            obj = obj[name]
    return obj


def unwrap_state_dict(obj: Any, head_key: str) -> tuple[dict[str, torch.Tensor], str] | None:
    """``(state dict, key prefix)`` of the torchvision network inside common checkpoint
    wrappers, or ``None``.

    Handles ``{"state_dict"|"model_state_dict"|"model": ...}`` nesting and any key prefix before
    the network's own names (``module.`` of DataParallel, as Free-AT's ``model_best.pth.tar``;
    ``module.model.`` of the robustness library's ``imagenet_linf_4.pt``, whose other entries,
    its normaliser and the attacker's copy ``module.attacker.model.``, are dropped): the
    shortest prefix before ``head_key``, a name the network's state dict holds.
    """
    obj = state_container(obj)
    if not isinstance(obj, dict):
        return None
    prefixes = [k[: -len(head_key)] for k in obj if isinstance(k, str) and k.endswith(head_key)]
    if not prefixes:
        return None
    prefix = min(prefixes, key=len)
    state = {
        k[len(prefix) :]: v
        for k, v in obj.items()
        if k.startswith(prefix) and isinstance(v, torch.Tensor)
    }
    return state, prefix
