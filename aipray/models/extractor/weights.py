"""Where an extractor's weights come from, and :func:`make_extractor`, which builds the extractor
the config asks for with them.

Where the weights come from (``ExtractorConfig.weights``):

- ``pretrain`` (default, used on synthetic data): trained in-process on the catalog's item
  categories, standing in for ImageNet pretraining. ``arch: alexnet`` is the project's small
  width-scaled :class:`~aipray.models.nets.AlexNetClassifier`, adapted to the image size;
  ``arch: resnet50`` is torchvision's ResNet50 with one output per category; ``arch: vit`` a
  small torchvision ``VisionTransformer`` of the catalog's image size (``width``, ``vit_patch``,
  ``vit_depth``).
- ``surrogate`` (the synthetic sweeps): trained in-process on the surrogate "ImageNet" of
  :mod:`aipray.data.surrogate` (192 fine classes of shape × colour family × texture, drawn in
  clutter, knowing nothing of the marketplace), with a factorised classifier head; the catalog's
  images only give the input size.
- ``imagenet``: torchvision's ``IMAGENET1K_V1`` weights (``vit``: ``vit_b_16``'s), read from
  torch's hub cache (``torch.hub.get_dir()/checkpoints``) and downloaded there only if
  ``download`` is true.
- a path: a torchvision state dict of ``arch`` (any number of classes), a ``model.pt`` written by
  :func:`save_extractor`, or the folder :func:`save_extractor` wrote (e.g. an adversarially
  trained extractor). The published robust ResNet50s of Perceptual-Rec's defences load as they
  are: MadryLab's ``robustness`` release (``imagenet_linf_4.pt``: ``{"model": state dict under
  module.model., with module.attacker.model.* copies and module.normalizer.*, "optimizer",
  "schedule", "epoch"}``) and Free-AT's ``model_best.pth.tar`` (``{"epoch", "arch",
  "state_dict": state dict under module., "best_prec1", "optimizer"}``); ``extractor.training``
  declares how a checkpoint was trained and is recorded.

This module reads ImageNet weights from torch's hub cache (downloading them there if allowed) and
local checkpoints, unwrapping common checkpoint wrappers; in-process pretraining lives in
:mod:`aipray.models.extractor.pretrain`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aipray.checkpoints import (
    hub_file,
    hub_state_dict,
    state_container,
    unwrap_state_dict,
)
from aipray.models.extractor.checkpoint import extractor_from, is_saved_extractor
from aipray.models.extractor.config import (
    CHECKPOINT_FORMAT,
    IN_PROCESS,
    META_FILE,
    MODEL_FILE,
    ExtractorConfig,
    make_spec,
)
from aipray.models.extractor.network import Extractor, build_extractor, imagenet_weights
from aipray.models.extractor.pretrain import _pretrain
from aipray.models.nets import IMAGENET_MEAN, IMAGENET_STD
from aipray.store import file_sha256

log = logging.getLogger(__package__)  # "aipray.models.extractor", as before the split

# Name of the classifier head's weight in a torchvision state dict of each architecture.
_TORCHVISION_HEAD = {
    "alexnet": "classifier.6.weight",
    "resnet50": "fc.weight",
    "vit": "heads.head.weight",
}


def imagenet_weights_file(arch: str) -> Path:
    """Where torch's hub cache keeps ``arch``'s ImageNet weights:
    ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>`` (``TORCH_HOME`` moves it)."""
    return hub_file(imagenet_weights(arch))


def _found(obj: Any) -> str:
    """A short description of what a checkpoint file holds, for error messages."""
    inner = state_container(obj)
    if not isinstance(inner, dict):
        return f"a {type(obj).__name__}"
    keys = [str(k) for k in inner]
    shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
    n_tensors = sum(isinstance(v, torch.Tensor) for v in inner.values())
    return f"a dict of {len(keys)} entries ({n_tensors} tensors): {shown}"


def _some(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(sorted(keys)[:n]) + (", ..." if len(keys) > n else "")


def _check_fit(
    file: Path, arch: str, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    """ONE ``ValueError`` naming ``file``, what ``arch`` expects and what was found, unless every
    tensor of the network is there with its shape and nothing else is."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: expected {tuple(v.shape)}, found {tuple(state[k].shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_some(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape ({'; '.join(shapes[:2])})")
    raise ValueError(
        f"extractor.weights: {file} does not fit torchvision's {arch}: expected its "
        f"{len(expected)} tensors, found {len(state)}: {', '.join(parts)}; is it a {arch} "
        "checkpoint (extractor.arch)?"
    )


def _check_normalizer(file: Path, obj: Any) -> None:
    """The robustness library stores its input normaliser (``normalizer.new_mean``/``new_std``)
    next to the net; aipray's Extractor normalises with ImageNet's statistics: say so if the
    checkpoint's differ."""
    inner = state_container(obj)
    if not isinstance(inner, dict):
        return
    for suffix, stats in (
        ("normalizer.new_mean", IMAGENET_MEAN),
        ("normalizer.new_std", IMAGENET_STD),
    ):
        for key, value in inner.items():
            if isinstance(key, str) and key.endswith(suffix) and isinstance(value, torch.Tensor):
                if value.numel() != 3 or not torch.allclose(
                    value.flatten().float(), torch.tensor(stats), atol=1e-3
                ):
                    log.warning(
                        "%s: %s is %s, not ImageNet's %s, which the extractor normalises with",
                        file,
                        key,
                        value.flatten().tolist(),
                        list(stats),
                    )


def _checkpoint_meta(obj: Any) -> dict[str, Any]:
    """JSON-able scalars a training checkpoint keeps beside the weights (``epoch``, ``arch``,
    Free-AT's ``best_prec1``), as ``checkpoint_<key>``."""
    meta: dict[str, Any] = {}
    if not isinstance(obj, dict):
        return meta
    for key in ("epoch", "arch", "best_prec1"):
        value = obj.get(key)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool | int | float | str):
            meta[f"checkpoint_{key}"] = value
    return meta


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def _load_checkpoint(config: ExtractorConfig) -> tuple[Extractor, dict[str, Any]]:
    path = config.weights_path
    assert path is not None
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"extractor.weights: {path} is not a checkpoint file or a folder holding {MODEL_FILE}"
        )
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"extractor.weights: cannot read {file} with torch.load(weights_only=True) "
            f"({_first_line(err)}); is the file complete? Else save the bare state "
            "dict with torch.save(model.state_dict())"
        ) from err
    info: dict[str, Any] = {"source": "checkpoint", "path": str(file), "sha256": file_sha256(file)}
    if is_saved_extractor(obj):
        try:
            extractor = extractor_from(obj)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"extractor.weights: {file} claims to be written by save_extractor but its spec "
                f"and weights do not fit ({_first_line(err)})"
            ) from err
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
        _warn_training_mismatch(config, file)
        info["checkpoint"] = CHECKPOINT_FORMAT
        return extractor, info
    head_key = _TORCHVISION_HEAD[config.arch]
    unwrapped = unwrap_state_dict(obj, head_key)
    if unwrapped is None:
        raise ValueError(
            f"extractor.weights: {file} is neither a torchvision {config.arch} state dict "
            f"(expected a {head_key!r} entry, possibly under a prefix such as 'module.') nor a "
            f"checkpoint written by save_extractor; found {_found(obj)}"
        )
    state, prefix = unwrapped
    head = state[head_key]
    if head.ndim != 2:
        raise ValueError(
            f"extractor.weights: {file}: {prefix}{head_key} should be a [classes, features] "
            f"matrix, found shape {tuple(head.shape)}"
        )
    n_classes = int(head.shape[0])
    spec = make_spec(
        config.arch,
        n_classes,
        input_size=config.input_size or 224,
        preprocess=config.preprocess,
        labels="imagenet1k" if n_classes == 1000 else "unknown",
    )
    extractor = build_extractor(spec)
    _check_fit(file, config.arch, state, extractor.net.state_dict())
    extractor.net.load_state_dict(state)
    _check_normalizer(file, obj)
    info["checkpoint"] = "torchvision"
    info["key_prefix"] = prefix
    info.update(_checkpoint_meta(obj))
    return extractor, info


def _warn_training_mismatch(config: ExtractorConfig, file: Path) -> None:
    """An extractor folder records how it was trained: say so when ``training`` disagrees."""
    meta = file.parent / META_FILE
    if not meta.is_file():
        return
    try:
        recorded = json.loads(meta.read_text()).get("info", {}).get("training")
    except (OSError, ValueError, AttributeError):
        return
    if recorded is not None and recorded != config.training:
        log.warning(
            "extractor.training is %r but %s records training %r",
            config.training,
            meta,
            recorded,
        )


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
            used by ``weights: pretrain`` (``surrogate`` takes only their size).
        categories: ``[N]`` category per image, ``-1`` where unknown (those are skipped).
        device: where to train and where the result lives.
        seed: seed of initialisation, held-out split and batch order.
        category_names: names of the categories (class names of a pretrained extractor).

    Returns:
        ``(extractor, info)``: ``info`` is JSON-able and records where the weights came from
        (``source``: ``pretrain`` | ``imagenet`` | ``checkpoint``, with file, URL, path or SHA-256;
        for a torchvision-style checkpoint the ``key_prefix`` it was found under and the
        ``checkpoint_epoch``/``_arch``/``_best_prec1`` it records), ``training``
        (``config.training``: how the weights were trained, here or as declared for a
        checkpoint) and, for pretraining, ``holdout_accuracy``, ``best_epoch``, ``history``,
        ``seconds``, ``n_images`` and ``chance_accuracy`` (robust training adds
        ``robust_holdout_accuracy``, ``adv_eps``, ``adv_steps``, ``adv_step_size``,
        ``epochs_run`` and for ``free`` ``free_replays``).

    Raises:
        WeightsUnavailableError: ImageNet weights neither cached nor downloadable.
        FileNotFoundError: the checkpoint ``weights`` names does not exist.
        ValueError: the checkpoint cannot be read or does not fit ``arch`` (one message naming
            the file, what was expected and what was found).
    """
    device = torch.device(device)
    if config.weights in IN_PROCESS:
        extractor, info = _pretrain(config, images, categories, device, seed, category_names)
    elif config.weights == "imagenet":
        state, file = hub_state_dict(
            imagenet_weights(config.arch),
            config.arch,
            download=config.download,
            key="extractor",
            instead="set extractor.weights to the path of a local checkpoint",
        )
        spec = make_spec(
            config.arch,
            1000,
            input_size=config.input_size or 224,
            preprocess=config.preprocess,
            labels="imagenet1k",
        )
        extractor = build_extractor(spec)
        extractor.net.load_state_dict(state)
        weights = imagenet_weights(config.arch)
        info = {
            "source": "imagenet",
            "weights": f"{type(weights).__name__}.{weights.name}",
            "url": weights.url,
            "file": str(file),
        }
    else:
        extractor, info = _load_checkpoint(config)
    info["training"] = config.training
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
