"""CLIP-style pretraining of an extractor with a text tower (``extractor.weights: clip``): the
image network and the text tower learn together from image–title pairs with CLIP's symmetric
InfoNCE (:func:`~aipray.models.extractor.text.clip_loss`; Radford et al., ICML 2021)."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence

import numpy as np
import torch

from aipray.models.extractor.network import Extractor
from aipray.models.extractor.text import ClipHead, clip_loss
from aipray.models.train import TrainResult
from aipray.pixels import to_float

log = logging.getLogger(__package__)


def fit_clip(
    extractor: Extractor,
    images: np.ndarray,
    titles: Sequence[str],
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    seed: int = 0,
    holdout: float = 0.1,
) -> TrainResult:
    """Train ``extractor`` (whose head is a :class:`ClipHead`) on uint8 ``images``
    ``[N, 3, H, W]`` and their ``titles`` with Adam on CLIP's loss, batches of ``batch_size``
    pairs (images flipped left–right at random, as the classifier's are). A seeded share
    ``holdout`` of the pairs is held out; after each epoch its zero-shot accuracy (the head's
    class, ``labels`` ``[N]``) and its image→title retrieval accuracy (each held-out image's
    nearest title among the held-out titles is one of its class) are measured, and the epoch
    with the best zero-shot accuracy is kept."""
    head = extractor.head
    if not isinstance(head, ClipHead):
        raise ValueError("CLIP pretraining needs an extractor with a text tower (make_spec text=)")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    labels = np.asarray(labels, dtype=np.int64)
    order = rng.permutation(labels.size)
    n_hold = max(1, int(holdout * labels.size))
    hold, train = order[:n_hold], order[n_hold:]
    x = torch.as_tensor(np.asarray(images))
    tokens = head.tokens(list(titles)).cpu()
    opt = torch.optim.Adam(extractor.parameters(), lr=lr)
    best_state, best = copy.deepcopy(extractor.state_dict()), -1.0
    result = TrainResult(best_epoch=0, best_score=-1.0)
    for epoch in range(1, epochs + 1):
        extractor.train()
        perm = rng.permutation(train)
        total, batches = 0.0, 0
        for i in range(0, perm.size, batch_size):
            idx = torch.as_tensor(perm[i : i + batch_size])
            if idx.numel() < 2:
                continue  # one pair has no negatives
            xb = to_float(x[idx], device)
            if rng.uniform() < 0.5:
                xb = xb.flip(-1)
            loss = clip_loss(
                head.embed_images(extractor.features(xb)),
                head.embed_text(tokens[idx].to(device)),
                head.scale(),
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, batches = total + float(loss.detach()), batches + 1
        zero_shot, retrieval = clip_accuracy(extractor, x[hold], tokens[hold], labels[hold], device)
        result.history.append(
            {
                "epoch": epoch,
                "loss": total / max(1, batches),
                "holdout_accuracy": zero_shot,
                "holdout_retrieval": retrieval,
                "scale": float(head.scale().detach()),
            }
        )
        log.info(
            "clip epoch %d loss %.3f held-out zero-shot accuracy %.3f, retrieval %.3f",
            epoch,
            total / max(1, batches),
            zero_shot,
            retrieval,
        )
        if zero_shot > best:
            best, best_state = zero_shot, copy.deepcopy(extractor.state_dict())
            result.best_epoch, result.best_score = epoch, zero_shot
    extractor.load_state_dict(best_state)
    extractor.eval()
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def clip_accuracy(
    extractor: Extractor,
    images: torch.Tensor,
    tokens: torch.Tensor,
    labels: np.ndarray,
    device: torch.device,
    chunk: int = 512,
) -> tuple[float, float]:
    """``(zero-shot accuracy, retrieval accuracy)`` of uint8 ``images`` ``[M, 3, H, W]`` with
    their titles' ``tokens`` ``[M, L]`` and class ``labels`` ``[M]``: the share whose head class
    is their label, and the share whose nearest title (cosine in the shared space, among the
    ``M`` titles) belongs to an image of their class."""
    extractor.eval()
    head = extractor.head
    parts, logits = [], []
    for i in range(0, images.shape[0], chunk):
        feats = extractor.features(to_float(images[i : i + chunk], device))
        parts.append(torch.nn.functional.normalize(head.embed_images(feats), dim=1))
        logits.append(head(feats))
    img = torch.cat(parts)
    txt = torch.nn.functional.normalize(head.embed_text(tokens.to(device)), dim=1)
    y = torch.as_tensor(labels, device=device)
    zero_shot = float((torch.cat(logits).argmax(1) == y).float().mean())
    retrieval = float((y[(img @ txt.T).argmax(1)] == y).float().mean())
    return zero_shot, retrieval
