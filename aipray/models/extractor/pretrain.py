"""In-process pretraining (``extractor.weights: pretrain``): the extractor's classifier is trained
on the catalog's item categories, standing in for ImageNet pretraining, with cross-entropy on
clean images (``training: standard``) or adversarially (``adversarial``, ``free``: see
:mod:`~aipray.models.extractor.robust`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from aipray.models.extractor.config import ExtractorConfig, make_spec
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
    if images is None or categories is None:
        raise ValueError("extractor.weights: pretrain needs images and their categories")
    categories = np.asarray(categories)
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != categories.shape[0]:
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
    if config.arch == "resnet50":
        # Batch norm cannot train on a last batch of one image: drop an image if that would happen.
        keep = keep[: _size_without_single_batch(keep.size, config.batch_size)]
        labels = labels[: keep.size]
    h, w = int(images.shape[2]), int(images.shape[3])
    names = None
    if category_names is not None:
        names = [str(c) for c in category_names] + [
            f"class {i}" for i in range(len(category_names), n_classes)
        ]
    spec = make_spec(
        config.arch,
        n_classes,
        layout="aipray" if config.arch == "alexnet" else "torchvision",
        input_size=config.input_size or (h, w),
        preprocess=config.preprocess,
        image_size=config.input_size or min(h, w),
        width=config.width,
        labels="categories",
        class_names=names,
    )
    torch.manual_seed(seed)
    extractor = build_extractor(spec).to(device)
    if config.training == "standard":
        result = fit_classifier(
            extractor,
            images[keep],
            labels,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            device=device,
            seed=seed,
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
        )
    counts = np.bincount(labels, minlength=n_classes)
    info: dict[str, Any] = {
        "source": "pretrain",
        "training": config.training,
        "holdout_accuracy": float(result.best_score),
        "chance_accuracy": float(counts.max() / counts.sum()),
        "best_epoch": int(result.best_epoch),
        "history": result.history,
        "seconds": float(result.seconds),
        "n_images": int(keep.size),
    }
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
        "extractor pretrained (%s) on %d images, %d categories: held-out accuracy %.3f (%.0fs)",
        config.training,
        keep.size,
        n_classes,
        result.best_score,
        result.seconds,
    )
    return extractor, info


def _size_without_single_batch(n: int, batch_size: int) -> int:
    """Largest ``m <= n`` whose training split in ``fit_classifier`` (``m`` minus a 10 % holdout)
    does not end in a batch of one image."""
    for m in range(n, 0, -1):
        if (m - max(1, int(0.1 * m))) % batch_size != 1:
            return m
    return n
