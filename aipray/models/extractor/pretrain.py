"""In-process pretraining: the extractor's classifier is trained on the catalog's item categories
(``extractor.weights: pretrain``) or on the surrogate "ImageNet" of many fine classes
(``surrogate``, :mod:`aipray.data.surrogate`: knows nothing of the marketplace's users and
items), standing in for ImageNet pretraining; or, ``clip``, the image network and a text tower
learn together from the surrogate images and their titles (:mod:`~aipray.models.extractor.clip`),
standing in for CLIP's pretraining on image–caption pairs. Classifiers are trained with
cross-entropy on clean images (``training: standard``) or adversarially (``adversarial``,
``free``: see :mod:`~aipray.models.extractor.robust`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from aipray.data.surrogate import SurrogateConfig, make_surrogate, surrogate_titles
from aipray.data.titles import VOCABULARY, canonical_title
from aipray.models.extractor.clip import fit_clip
from aipray.models.extractor.config import ON_SURROGATE, ExtractorConfig, make_spec
from aipray.models.extractor.network import Extractor, build_extractor
from aipray.models.extractor.robust import fit_robust_classifier
from aipray.models.train import fit_classifier

log = logging.getLogger(__package__)  # "aipray.models.extractor", as before the split


def _pretrain(
    config: ExtractorConfig,
    images: np.ndarray | None,
    categories: np.ndarray | None,
    device: torch.device,
    seed: int,
    category_names: Sequence[str] | None,
) -> tuple[Extractor, dict[str, Any]]:
    if images is None or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"extractor.weights: {config.weights} needs the catalog's uint8 images [N, 3, H, W]"
        )
    h, w = int(images.shape[2]), int(images.shape[3])
    factors: tuple[int, ...] | None = None
    text: dict[str, Any] | None = None
    if config.weights in ON_SURROGATE:
        surrogate = SurrogateConfig(
            per_class=config.surrogate_per_class,
            image_size=config.input_size or min(h, w),
            clutter=config.surrogate_clutter,
        )
        start = time.perf_counter()
        images, labels = make_surrogate(surrogate)
        keep = np.arange(labels.size)
        n_classes, names, kind = surrogate.n_classes, list(surrogate.class_names()), "surrogate"
        factors = surrogate.factors
        h = w = surrogate.image_size
        if config.weights == "clip":
            titles = surrogate_titles(surrogate, labels, drop=config.title_drop)
            text = {
                "vocab": VOCABULARY,
                "width": config.text_width,
                "dim": config.text_dim,
                "max_len": 4,  # a filler word and three attribute words
                "class_titles": [canonical_title(*_attributes(c)) for c in range(n_classes)],
            }
        log.info(
            "surrogate pretraining set: %d images of %d classes (%.0fs)",
            labels.size,
            n_classes,
            time.perf_counter() - start,
        )
    else:
        keep, labels, n_classes, names = _category_labels(images, categories, category_names)
        kind = "categories"
    if config.arch == "resnet50":
        # Batch norm cannot train on a last batch of one image: drop an image if that would happen.
        keep = keep[: _size_without_single_batch(keep.size, config.batch_size)]
        labels = labels[: keep.size]
    spec = in_process_spec(
        config, n_classes, (h, w), labels=kind, names=names, factors=factors, text=text
    )
    torch.manual_seed(seed)
    extractor = build_extractor(spec).to(device)
    if text is not None:
        result = fit_clip(
            extractor,
            images[keep],
            titles,
            labels,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            device=device,
            seed=seed,
        )
    elif config.training == "standard":
        result = fit_classifier(
            extractor,
            images[keep],
            labels,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            device=device,
            seed=seed,
            weight_decay=config.weight_decay,
            warmup=config.warmup,
        )
    else:
        result = fit_robust_classifier(
            extractor,
            images[keep],
            labels,
            method=config.training,
            eps=config.adv_eps,
            steps=config.adv_steps,
            step_size=config.adv_step(),
            replays=config.free_replays,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            device=device,
            seed=seed,
            weight_decay=config.weight_decay,
            warmup=config.warmup,
        )
    counts = np.bincount(labels, minlength=n_classes)
    info: dict[str, Any] = {
        "source": config.weights,
        "training": config.training,
        "holdout_accuracy": float(result.best_score),
        "chance_accuracy": float(counts.max() / counts.sum()),
        "best_epoch": int(result.best_epoch),
        "history": result.history,
        "seconds": float(result.seconds),
        "n_images": int(keep.size),
    }
    if text is not None:
        best = result.history[result.best_epoch - 1]
        info["holdout_retrieval"] = float(best["holdout_retrieval"])
        info["temperature"] = float(best["scale"])
    if config.training != "standard":
        best = result.history[result.best_epoch - 1]
        info["robust_holdout_accuracy"] = float(best["robust_holdout_accuracy"])
        info["adv_eps"] = config.adv_eps
        info["adv_steps"] = config.adv_steps
        info["adv_step_size"] = config.adv_step()
        info["epochs_run"] = len(result.history)
        if config.training == "free":
            info["free_replays"] = config.free_replays
    log.info(
        "extractor pretrained (%s) on %d images, %d classes: held-out accuracy %.3f (%.0fs)",
        config.training,
        keep.size,
        n_classes,
        result.best_score,
        result.seconds,
    )
    return extractor, info


def in_process_spec(
    config: ExtractorConfig,
    n_classes: int,
    size: tuple[int, int],
    *,
    labels: str = "unknown",
    names: Sequence[str] | None = None,
    factors: Sequence[int] | None = None,
    text: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The spec of the network ``config`` trains in-process on ``size`` ``(H, W)`` images:
    the ``aipray`` layout (width-scaled AlexNet, small ViT) with the factorised head if
    ``factors``, or with ``text`` a CLIP head (``weights: clip``), or torchvision's ResNet50
    with a linear head."""
    h, w = size
    side = config.input_size or min(h, w)
    if config.arch == "vit" and not config.input_size and h != w:
        raise ValueError(f"extractor.arch: vit needs square images or an input_size, got {h}×{w}")
    own = config.arch != "resnet50"
    return make_spec(
        config.arch,
        n_classes,
        layout="aipray" if own else "torchvision",
        input_size=config.input_size or (h, w),
        preprocess=config.preprocess,
        image_size=side,
        width=config.width,
        labels=labels,
        class_names=names,
        factors=factors if own and text is None else None,
        patch_size=config.vit_patch,
        depth=config.vit_depth,
        text=text,
    )


def _attributes(label: int) -> tuple[int, int, int]:
    """``(shape, colour family, texture)`` of a surrogate class (row-major over its factors)."""
    n_families, n_textures = SurrogateConfig().factors[1:]
    return (
        label // (n_families * n_textures),
        (label // n_textures) % n_families,
        label % n_textures,
    )


def _category_labels(
    images: np.ndarray, categories: np.ndarray | None, category_names: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, int, list[str] | None]:
    """``(kept image rows, their labels, number of classes, class names)`` for pretraining on
    the catalog's categories (images of category ``-1`` are skipped)."""
    if categories is None:
        raise ValueError("extractor.weights: pretrain needs images and their categories")
    categories = np.asarray(categories)
    if images.shape[0] != categories.shape[0]:
        raise ValueError(
            f"expected uint8 images [N, 3, H, W] and categories [N], got {images.shape} and "
            f"{categories.shape}"
        )
    keep = np.flatnonzero(categories >= 0)
    labels = categories[keep].astype(np.int64)
    n_classes = int(labels.max()) + 1 if labels.size else 0
    if category_names is not None:
        n_classes = max(n_classes, len(category_names))
    if np.unique(labels).size < 2:
        raise ValueError("extractor.weights: pretrain needs items of at least two categories")
    names = None
    if category_names is not None:
        names = [str(c) for c in category_names] + [
            f"class {i}" for i in range(len(category_names), n_classes)
        ]
    return keep, labels, n_classes, names


def _size_without_single_batch(n: int, batch_size: int) -> int:
    """Largest ``m <= n`` whose training split in ``fit_classifier`` (``m`` minus a 10 % holdout)
    does not end in a batch of one image."""
    for m in range(n, 0, -1):
        if (m - max(1, int(0.1 * m))) % batch_size != 1:
            return m
    return n
