"""Where an extractor's weights come from, and :func:`make_extractor`, which builds the extractor
the config asks for with them.

Where the weights come from (``ExtractorConfig.weights``):

- ``pretrain`` (default, used on synthetic data): trained in-process on the catalog's item
  categories, standing in for ImageNet pretraining. ``arch: alexnet`` is the project's small
  width-scaled :class:`~aipray.models.nets.AlexNetClassifier`, adapted to the image size;
  ``arch: resnet50`` is torchvision's ResNet50 with one output per category.
- ``imagenet``: torchvision's ``IMAGENET1K_V1`` weights, read from torch's hub cache
  (``torch.hub.get_dir()/checkpoints``) and downloaded there only if ``download`` is true.
- a path: a torchvision state dict of ``arch`` (any number of classes), a ``model.pt`` written by
  :func:`save_extractor`, or the folder :func:`save_extractor` wrote (e.g. an adversarially
  trained extractor).

This module reads ImageNet weights from torch's hub cache (downloading them there if allowed) and
local checkpoints, unwrapping common checkpoint wrappers; in-process pretraining lives in
:mod:`aipray.models.extractor.pretrain`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from aipray.models.extractor.config import CHECKPOINT_FORMAT, MODEL_FILE, ExtractorConfig, make_spec
from aipray.models.extractor.network import _IMAGENET_WEIGHTS, Extractor, build_extractor
from aipray.models.extractor.pretrain import _pretrain
from aipray.store import file_sha256

log = logging.getLogger(__package__)  # "aipray.models.extractor", as before the split

# Name of the classifier head's weight in a torchvision state dict of each architecture.
_TORCHVISION_HEAD = {"alexnet": "classifier.6.weight", "resnet50": "fc.weight"}


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither in torch's hub cache nor downloadable (offline machine)."""


def imagenet_weights_file(arch: str) -> Path:
    """Where torch's hub cache keeps ``arch``'s ImageNet weights:
    ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>`` (``TORCH_HOME`` moves it)."""
    url = _IMAGENET_WEIGHTS[arch].url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _imagenet_state_dict(arch: str, download: bool) -> tuple[dict[str, torch.Tensor], Path]:
    weights = _IMAGENET_WEIGHTS[arch]
    file = imagenet_weights_file(arch)
    if file.is_file():
        log.info("loading ImageNet weights of %s from %s", arch, file)
        return torch.load(file, map_location="cpu", weights_only=True), file
    how = "downloading is disabled (extractor.download: false)"
    if download:
        log.info("downloading ImageNet weights of %s from %s", arch, weights.url)
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
            cause: Exception | None = err
    else:
        cause = None
    raise WeightsUnavailableError(
        f"ImageNet weights of {arch} ({type(weights).__name__}.{weights.name}) are not available: "
        f"{file.name} is not in torch's hub cache {file.parent} and {how}. Download {weights.url} "
        f"on a machine with internet access and copy it to {file} (TORCH_HOME moves the cache), "
        "or set extractor.weights to the path of a local checkpoint."
    ) from cause


def _unwrap_state_dict(obj: Any, head_key: str) -> dict[str, torch.Tensor] | None:
    """The torchvision state dict inside common checkpoint wrappers, or ``None``.

    Handles ``{"state_dict"|"model_state_dict"|"model": ...}`` nesting and any key prefix before
    the network's own names (``module.`` of DataParallel, ``module.model.`` of the robustness
    library, whose other entries such as its normaliser and attacker copy are dropped).
    """
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        return None
    prefixes = [k[: -len(head_key)] for k in obj if isinstance(k, str) and k.endswith(head_key)]
    if not prefixes:
        return None
    prefix = min(prefixes, key=len)
    return {
        k[len(prefix) :]: v
        for k, v in obj.items()
        if k.startswith(prefix) and isinstance(v, torch.Tensor)
    }


def _load_checkpoint(config: ExtractorConfig) -> tuple[Extractor, dict[str, Any]]:
    path = config.weights_path
    assert path is not None
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"extractor.weights: {path} is not a checkpoint file or folder")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"extractor.weights: cannot read {file} with torch.load(weights_only=True) "
            f"({type(err).__name__}); save the bare state dict with torch.save(model.state_dict())"
        ) from err
    info: dict[str, Any] = {"source": "checkpoint", "path": str(file), "sha256": file_sha256(file)}
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        extractor = build_extractor(obj["spec"])
        extractor.load_state_dict(obj["state_dict"])
        if extractor.arch != config.arch:
            raise ValueError(
                f"extractor.weights: {file} holds a {extractor.arch} extractor but extractor.arch "
                f"is {config.arch!r}"
            )
        if config.input_size and extractor.input_size != (config.input_size,) * 2:
            log.warning(
                "extractor.input_size %d ignored: %s was saved with input size %s",
                config.input_size,
                file,
                extractor.input_size,
            )
        info["checkpoint"] = CHECKPOINT_FORMAT
        return extractor, info
    head_key = _TORCHVISION_HEAD[config.arch]
    state = _unwrap_state_dict(obj, head_key)
    if state is None:
        raise ValueError(
            f"extractor.weights: {file} is neither a torchvision {config.arch} state dict (no "
            f"{head_key!r}) nor a checkpoint written by save_extractor"
        )
    n_classes = int(state[head_key].shape[0])
    spec = make_spec(
        config.arch,
        n_classes,
        input_size=config.input_size or 224,
        preprocess=config.preprocess,
        labels="imagenet1k" if n_classes == 1000 else "unknown",
    )
    extractor = build_extractor(spec)
    missing, unexpected = extractor.net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"extractor.weights: {file} does not fit torchvision's {config.arch}: "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    info["checkpoint"] = "torchvision"
    return extractor, info


def make_extractor(
    config: ExtractorConfig,
    images: np.ndarray | None,
    categories: np.ndarray | None,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    category_names: Sequence[str] | None = None,
) -> tuple[Extractor, dict[str, Any]]:
    """Build the extractor ``config`` asks for, with its weights, in eval mode and frozen.

    Args:
        config: the sweep's extractor settings.
        images: uint8 ``[N, 3, H, W]`` images to pretrain on (the catalog's warm items); only
            used by ``weights: pretrain``.
        categories: ``[N]`` category per image, ``-1`` where unknown (those are skipped).
        device: where to train and where the result lives.
        seed: seed of initialisation, held-out split and batch order.
        category_names: names of the categories (class names of a pretrained extractor).

    Returns:
        ``(extractor, info)``: ``info`` is JSON-able and records where the weights came from
        (``source``: ``pretrain`` | ``imagenet`` | ``checkpoint``, with file, URL, path or SHA-256)
        and, for pretraining, ``holdout_accuracy``, ``best_epoch``, ``history``, ``seconds``,
        ``n_images`` and ``chance_accuracy``.

    Raises:
        WeightsUnavailableError: ImageNet weights neither cached nor downloadable.
    """
    device = torch.device(device)
    if config.weights == "pretrain":
        extractor, info = _pretrain(config, images, categories, device, seed, category_names)
    elif config.weights == "imagenet":
        state, file = _imagenet_state_dict(config.arch, config.download)
        spec = make_spec(
            config.arch,
            1000,
            input_size=config.input_size or 224,
            preprocess=config.preprocess,
            labels="imagenet1k",
        )
        extractor = build_extractor(spec)
        extractor.net.load_state_dict(state)
        weights = _IMAGENET_WEIGHTS[config.arch]
        info = {
            "source": "imagenet",
            "weights": f"{type(weights).__name__}.{weights.name}",
            "url": weights.url,
            "file": str(file),
        }
    else:
        extractor, info = _load_checkpoint(config)
    info["spec"] = extractor.spec
    extractor.to(device).eval().requires_grad_(False)
    log.info(
        "extractor %s (%s): %d-d features, %d classes",
        extractor.arch,
        info["source"],
        extractor.feature_dim,
        extractor.num_classes,
    )
    return extractor, info
