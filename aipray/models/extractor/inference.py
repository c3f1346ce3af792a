"""Batched inference on uint8 images: features (:func:`extract_features`), predicted classes
(:func:`predict_classes`) and TAaMR's target class (:func:`popular_class`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from aipray.models.extractor.network import Extractor
from aipray.pixels import to_float


def _batches(
    images: np.ndarray | torch.Tensor,
    batch_size: int,
    device: torch.device,
    items: np.ndarray | None = None,
) -> Iterator[torch.Tensor]:
    """Float ``[b, 3, H, W]`` batches in ``[0, 1]`` on ``device`` of all rows, or of the rows
    ``items``; a (read-only, memory-mapped) uint8 array is copied one batch at a time, never
    whole."""
    n = images.shape[0] if items is None else len(items)
    for i in range(0, n, batch_size):
        rows = slice(i, i + batch_size) if items is None else items[i : i + batch_size]
        yield to_float(images[rows], device)


def _device_of(extractor: Extractor, device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else next(extractor.parameters()).device


@torch.no_grad()
def extract_features(
    extractor: Extractor,
    images: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    items: np.ndarray | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``Φ_f`` of uint8 images ``[N, 3, H, W]`` (array, memmap or tensor), or of the rows
    ``items``, in batches → float ``[N or len(items), feature_dim]`` on ``device`` (default: the
    extractor's). ``transform`` (e.g. an input defence) is applied to each float batch first."""
    device = _device_of(extractor, device)
    batches = _batches(images, batch_size, device, items)
    out = [extractor.features(x if transform is None else transform(x)) for x in batches]
    return torch.cat(out) if out else torch.zeros(0, extractor.feature_dim, device=device)


@torch.no_grad()
def predict_classes(
    extractor: Extractor,
    images: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    items: np.ndarray | None = None,
) -> np.ndarray:
    """Predicted class ``[N]`` (int64) of uint8 images ``[N, 3, H, W]`` (or of the rows
    ``items``)."""
    device = _device_of(extractor, device)
    preds = [extractor(x).argmax(1).cpu() for x in _batches(images, batch_size, device, items)]
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


def popular_class(
    extractor: Extractor,
    images: np.ndarray | torch.Tensor,
    weights: np.ndarray | None = None,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    items: np.ndarray | None = None,
) -> int:
    """TAaMR's target: the class the extractor assigns most often to ``images`` (or the rows
    ``items``: the training items), each counted ``weights[i]`` times (e.g. its interactions;
    default once)."""
    pred = predict_classes(extractor, images, device=device, batch_size=batch_size, items=items)
    votes = np.bincount(pred, weights=weights, minlength=extractor.num_classes)
    if not math.isfinite(float(votes.sum())) or votes.sum() <= 0:
        raise ValueError("popular_class needs at least one image with a positive weight")
    return int(np.argmax(votes))
