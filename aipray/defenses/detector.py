"""A gatekeeper detector of adversarial item images (AIP's future work): a small CNN scoring
how likely an uploaded image is adversarial; the platform rejects a new item whose score reaches
a threshold, and serves the others as uploaded.

Trained like the denoiser (:mod:`aipray.defenses.denoiser`): INSA and PGD perturbations of a
sample of warm items, made against the trained ranker (INSA on half of them, PGD on the other
half), the adversarial images labelled 1 and their clean images 0, binary cross-entropy. Unlike
the denoiser's, the perturbations span several budgets, ``eps_levels`` from ``min_eps`` to
``train_eps`` (geometric: 4, 8, 16 by default), one share of the items each: a platform does
not know the attacker's ε, and a threshold calibrated on ε = 16 alone let every ε = 8 image
through on the testbed although they were perfectly separable (AUC 1.00, recall 0). A share
``holdout`` of the sampled items is kept out of training, attacked the same way, and calibrates
the threshold: the score that flags ``recall`` (95 %) of those attacked held-out images
(:func:`~aipray.metrics.detection.threshold_at_recall`). What that threshold
costs honest merchants is measured on the clean cold items of each trial.

As a defence it is a *screen* (:attr:`~aipray.defenses.base.Defense.screens`): its image map is
the identity, and :meth:`Detector.rejects` says which uploaded images the platform turns away;
the cold-item evaluation scores a rejected item as never shown (a miss at every cut-off, the
ordinary item untouched). Only uploads are screened: the warm candidates were accepted before.
An adaptive attacker (``adaptive: true``) knows the detector, its weights and threshold, and
keeps its score under the threshold (Carlini & Wagner, AISec 2017): its objective loses
``evade_weight`` × :meth:`Detector.evasion`, a hinge on the detector's logit half a logit below
the threshold, so it pays nothing once the image passes.

On real data it can be loaded from ``checkpoint`` (a state dict of :class:`DetectorNet` with the
same ``width``); the threshold is still calibrated on attacked held-out warm items.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aipray.defenses.base import DEFENSES, Defense
from aipray.defenses.denoiser import as_ids, training_perturbations
from aipray.metrics.detection import flagged_rate, roc_auc, threshold_at_recall
from aipray.params import Settings, param
from aipray.pixels import to_float
from aipray.store import file_sha256

if TYPE_CHECKING:
    from aipray.data.catalog import Catalog
    from aipray.models.base import Recommender

log = logging.getLogger(__name__)

#: how far below the threshold (in logits) an adaptive attacker aims, so that the final 8-bit
#: rounding does not carry the image back over it
EVASION_MARGIN = 0.5


@dataclass(frozen=True)
class DetectorConfig(Settings):
    """``checkpoint``: a trained detector's state dict (``None``: trained in the sweep).
    Training data as the denoiser's: ``train_items`` warm items (half INSA, half PGD; in
    ``eps_levels`` equal shares at budgets from ``min_eps`` to ``train_eps``, geometric, 0..255
    pixel units, :attr:`levels`; INSA with ``attack_epochs`` passes over the users in
    batches of ``user_batch``, PGD with ``pgd_steps`` steps), of which ``holdout`` are kept to
    calibrate the threshold at ``recall`` of their attacked images; then ``epochs`` of Adam at
    ``lr`` in batches of ``batch_size`` (clean and adversarial images mixed). ``width``:
    channels of the CNN's first level (the second has twice as many)."""

    checkpoint: str | None = None
    width: int = param(16, min=2)
    train_eps: float = param(16.0, axis=True, min=0, max=255)
    min_eps: float = param(4.0, min=0, max=255)
    eps_levels: int = param(3, min=1)
    train_items: int = param(512, min=4)
    holdout: float = param(0.25, min=0.05, max=0.95)
    recall: float = param(0.95, min=0.01, max=1)
    attack_epochs: int = param(2, min=1)
    user_batch: int = param(512, min=1)
    pgd_steps: int = param(8, min=1)
    epochs: int = param(30, min=1)
    lr: float = param(1e-3, min=0)
    batch_size: int = param(64, min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.checkpoint:  # absolute, so that workers with another working folder find it
            object.__setattr__(
                self, "checkpoint", str(Path(self.checkpoint).expanduser().resolve())
            )

    def cross_checks(self) -> list[tuple[str, object, str]]:
        if self.eps_levels > 1 and self.min_eps > self.train_eps:
            return [("min_eps", self.min_eps, f"a number <= train_eps ({self.train_eps})")]
        return []

    @property
    def levels(self) -> list[float]:
        """The training budgets: ``eps_levels`` from ``min_eps`` to ``train_eps``, geometric
        (``train_eps`` alone with one level), in 0..255 pixel units."""
        if self.eps_levels == 1:
            return [self.train_eps]
        return [float(v) for v in np.geomspace(self.min_eps, self.train_eps, self.eps_levels)]

    def file_checks(self) -> list[tuple[str, object, str]]:
        if self.checkpoint and not Path(self.checkpoint).is_file():
            return [
                (
                    "checkpoint",
                    self.checkpoint,
                    "the path of an existing detector checkpoint (a DetectorNet state dict saved "
                    "by aipray's detector), or null to train one on the catalog",
                )
            ]
        return []


class DetectorNet(nn.Module):
    """``[B, 3, H, W]`` in [0, 1] → ``[B]`` logits of "adversarial". The image and its
    high-pass residual (image − 3×3 mean, ×8: where an L∞ perturbation lives) go through two
    levels of two 3×3 convolutions; the last level's mean and max over positions feed a linear
    head. Any H, W."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(6, w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, ceil_mode=True),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(4 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        smooth = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        h = self.features(torch.cat([x, 8.0 * (x - smooth)], 1))
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)).squeeze(1)


@DEFENSES.register("detector")
class Detector(Defense):
    """The trained :class:`DetectorNet` as a screen: images pass unchanged, and
    :meth:`rejects` flags those whose logit reaches :attr:`threshold`. Built by :meth:`fit`
    (trained, or loaded from ``checkpoint``; calibrated either way), stored and reloaded with
    :meth:`save` / :meth:`load`."""

    Config = DetectorConfig
    gradient = "exact"
    trained = True
    screens = True
    version = 1

    def __init__(
        self, config: DetectorConfig, net: DetectorNet | None = None, threshold: float = 0.0
    ) -> None:
        super().__init__(config)
        if net is None:
            raise ValueError(
                "the detector has weights: build it with Detector.fit (trained or from its "
                "checkpoint) or Detector.load (a stored defence stage)"
            )
        self.net = net.eval().requires_grad_(False)
        #: a logit at or above it is rejected
        self.threshold = float(threshold)
        self.info: dict[str, Any] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def detect(self, images: torch.Tensor) -> torch.Tensor:
        """``[B]`` logits, higher = more likely adversarial (differentiable in ``images``)."""
        if images.shape[0] == 0:
            return images.new_zeros(0)
        first = next(self.net.parameters())
        if first.device != images.device:
            self.net.to(images.device)
        return self.net(images)

    def evasion(self, images: torch.Tensor) -> torch.Tensor:
        """``[B]`` what an adaptive attacker keeps low: how far the logit is above
        :data:`EVASION_MARGIN` under the threshold (0 once it is that far below)."""
        return F.relu(self.detect(images) - (self.threshold - EVASION_MARGIN))

    # --- building, storing ------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        config: DetectorConfig,
        catalog: Catalog,
        ranker: Recommender,
        *,
        device: torch.device | str,
        seed: int,
    ) -> Detector:
        """The checkpoint's detector, or one trained on ``catalog``'s warm items against the
        trained ``ranker``; its threshold calibrated on attacked held-out warm items (see the
        module docstring)."""
        start = time.perf_counter()
        rng = np.random.default_rng(seed)
        warm = np.flatnonzero(catalog.warm_mask())
        ids = rng.choice(warm, size=min(config.train_items, warm.size), replace=False)
        n_held = max(2, round(config.holdout * ids.size))
        held_ids, train_ids = np.sort(ids[:n_held]), np.sort(ids[n_held:])
        ranker = ranker.to(device).eval()
        held = to_float(catalog.images[held_ids], device)
        held_adv = perturbations(config, ranker, held, seed + 1, as_ids(held_ids, device))
        info: dict[str, Any]
        if config.checkpoint:
            net = DetectorNet(config.width)
            state = torch.load(config.checkpoint, map_location="cpu", weights_only=True)
            try:
                net.load_state_dict(state)
            except RuntimeError as err:
                first = str(err).strip().splitlines()[0]
                raise ValueError(
                    f"detector.checkpoint: {config.checkpoint!r} is not a detector of width "
                    f"{config.width} ({first})"
                ) from None
            net = net.to(device)
            info = {"source": "checkpoint"}
        else:
            clean = to_float(catalog.images[train_ids], device)
            adv = perturbations(config, ranker, clean, seed, as_ids(train_ids, device))
            net = train_detector(config, clean, adv, seed)
            info = {"source": "trained", "items": int(train_ids.size)}
            with torch.no_grad():
                info["train_auc"] = roc_auc(_logits(net, adv), _logits(net, clean))
        with torch.no_grad():
            pos, neg = _logits(net, held_adv), _logits(net, held)
        threshold = threshold_at_recall(pos, config.recall)
        info |= {
            "heldout_items": int(held_ids.size),
            "heldout_auc": roc_auc(pos, neg),
            "threshold": threshold,
            "heldout_recall": flagged_rate(pos, threshold),
            "heldout_fpr": flagged_rate(neg, threshold),
            "seconds": time.perf_counter() - start,
        }
        log.info("detector ready (%d held-out warm items): %s", held_ids.size, info)
        out = cls(config, net.cpu(), threshold)
        out.info = info
        return out

    @classmethod
    def fingerprint(cls, config: DetectorConfig) -> str | None:
        """The checkpoint's SHA-256: a replaced file is a new defence (``None`` when trained
        here, or when the file is not on this machine)."""
        if config.checkpoint and Path(config.checkpoint).is_file():
            return file_sha256(config.checkpoint)
        return None

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        torch.save(self.net.state_dict(), folder / "detector.pt")
        info = {**self.info, "threshold": self.threshold}
        (folder / "detector.json").write_text(json.dumps(info, indent=2))

    @classmethod
    def load(cls, config: DetectorConfig, folder: Path) -> Detector:
        net = DetectorNet(config.width)
        net.load_state_dict(torch.load(Path(folder) / "detector.pt", weights_only=True))
        info = json.loads((Path(folder) / "detector.json").read_text())
        out = cls(config, net, info["threshold"])
        out.info = info
        return out


def perturbations(
    config: DetectorConfig,
    ranker: Recommender,
    clean: torch.Tensor,
    seed: int,
    items: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adversarial images of ``clean`` (of the items ``items``) against ``ranker``: consecutive
    equal shares at each of the config's :attr:`~DetectorConfig.levels`, each share half INSA,
    half PGD (:func:`~aipray.defenses.denoiser.training_perturbations`)."""
    shares = np.array_split(np.arange(len(clean)), len(config.levels))
    out = [
        training_perturbations(
            replace(config, train_eps=eps),
            ranker,
            clean[idx],
            seed,
            None if items is None else items[idx],
        )
        for eps, idx in zip(config.levels, shares, strict=True)
        if idx.size
    ]
    return torch.cat(out)


def train_detector(
    config: DetectorConfig, clean: torch.Tensor, adv: torch.Tensor, seed: int
) -> DetectorNet:
    """A :class:`DetectorNet` trained to tell ``adv`` (label 1) from ``clean`` (label 0), both
    ``[N, 3, H, W]`` in [0, 1]: binary cross-entropy, Adam, shuffled mixed batches."""
    device = clean.device
    torch.manual_seed(seed)
    net = DetectorNet(config.width).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    inputs = torch.cat([adv, clean])
    labels = torch.cat([torch.ones(len(adv)), torch.zeros(len(clean))]).to(device)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(config.epochs):
        for batch in torch.randperm(len(inputs), generator=g).split(config.batch_size):
            b = batch.to(device)
            loss = F.binary_cross_entropy_with_logits(net(inputs[b]), labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def _logits(net: DetectorNet, images: torch.Tensor) -> np.ndarray:
    return torch.cat([net(x) for x in images.split(256)]).cpu().numpy()
