"""A U-Net denoiser in front of the ranker (Denoise-to-protect, SIGIR 2023): trained to map
adversarial images of warm items back to their clean images, then applied to every image the
ranker sees.

As in Denoise-to-protect, the training perturbations are made against the trained ranker: INSA
(Adam, the ranker's own preference) on half of a sample of warm items and PGD (signed steps, the
same objective over all users) on the other half, at ``train_eps``. The loss is the pixel MSE to
the clean image, for the adversarial images and for the clean ones (a denoiser must leave clean
images alone). Its forward pass is differentiable, so an adaptive attack uses its exact gradient;
Denoise-to-protect's own evaluation was oblivious (INSA's gradient through the bare extractor).

On synthetic data it is trained in the sweep's ``defense`` stage, once per ranker; elsewhere it
can be loaded from ``checkpoint`` (a state dict of :class:`UNet` with the same ``width``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aipray.defenses.base import DEFENSES, Defense
from aipray.params import Settings, param
from aipray.pixels import to_float
from aipray.store import file_sha256

if TYPE_CHECKING:
    from aipray.data.catalog import Catalog
    from aipray.models.base import Recommender

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DenoiserConfig(Settings):
    """``checkpoint``: a trained denoiser's state dict (``None``: trained in the sweep).
    Training: ``train_items`` warm items (half INSA, half PGD at ``train_eps``, 0..255 pixel
    units; INSA with ``attack_epochs`` passes over the users in batches of ``user_batch``, PGD
    with ``pgd_steps`` steps), then ``epochs`` of Adam at ``lr`` in batches of ``batch_size``.
    ``width``: channels of the U-Net's first level (the second has twice as many)."""

    checkpoint: str | None = None
    width: int = param(16, min=2)
    train_eps: float = param(16.0, axis=True, min=0, max=255)
    train_items: int = param(512, min=2)
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

    def file_checks(self) -> list[tuple[str, object, str]]:
        if self.checkpoint and not Path(self.checkpoint).is_file():
            return [
                (
                    "checkpoint",
                    self.checkpoint,
                    "the path of an existing denoiser checkpoint (a U-Net state dict saved by "
                    "aipray's denoiser), or null to train one on the catalog",
                )
            ]
        return []


class UNet(nn.Module):
    """A two-level U-Net predicting a residual: ``x → clamp(x + r(x), 0, 1)``; ``[B, 3, H, W]``
    in [0, 1] → the same shape (any H, W)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.ReLU(inplace=True),
            )

        self.down = block(3, w)
        self.bottom = block(w, 2 * w)
        self.reduce = nn.Conv2d(2 * w, w, 1)
        self.up = block(2 * w, w)
        self.out = nn.Conv2d(w, 3, 1)
        nn.init.zeros_(self.out.weight)  # starts as the identity
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        high = self.down(x)
        low = self.bottom(F.avg_pool2d(high, 2, ceil_mode=True))
        low = F.interpolate(self.reduce(low), size=high.shape[-2:], mode="bilinear")
        return (x + self.out(self.up(torch.cat([high, low], 1)))).clamp(0.0, 1.0)


@DEFENSES.register("denoiser")
class Denoiser(Defense):
    """The trained :class:`UNet` applied to every image; its exact gradient for an adaptive
    attacker. Built by :meth:`fit` (trained, or loaded from ``checkpoint``), stored and
    reloaded with :meth:`save` / :meth:`load`."""

    Config = DenoiserConfig
    gradient = "exact"
    trained = True
    version = 1

    def __init__(self, config: DenoiserConfig, net: UNet | None = None) -> None:
        super().__init__(config)
        if net is None:
            raise ValueError(
                "the denoiser has weights: build it with Denoiser.fit (trained or from its "
                "checkpoint) or Denoiser.load (a stored defence stage)"
            )
        self.net = net.eval().requires_grad_(False)
        self.info: dict[str, Any] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] == 0:
            return images
        first = next(self.net.parameters())
        if first.device != images.device:
            self.net.to(images.device)
        return self.net(images)

    # --- building, storing ------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        config: DenoiserConfig,
        catalog: Catalog,
        ranker: Recommender,
        *,
        device: torch.device | str,
        seed: int,
    ) -> Denoiser:
        """The checkpoint's denoiser, or one trained on ``catalog``'s warm items against the
        trained ``ranker`` (see the module docstring)."""
        if config.checkpoint:
            net = UNet(config.width)
            state = torch.load(config.checkpoint, map_location="cpu", weights_only=True)
            try:
                net.load_state_dict(state)
            except RuntimeError as err:
                first = str(err).strip().splitlines()[0]
                raise ValueError(
                    f"denoiser.checkpoint: {config.checkpoint!r} is not a U-Net of width "
                    f"{config.width} ({first})"
                ) from None
            out = cls(config, net)
            out.info = {"source": "checkpoint"}
            return out
        start = time.perf_counter()
        rng = np.random.default_rng(seed)
        warm = np.flatnonzero(catalog.warm_mask())
        ids = np.sort(rng.choice(warm, size=min(config.train_items, warm.size), replace=False))
        clean = to_float(catalog.images[ids], device)
        ranker = ranker.to(device).eval()
        adv = training_perturbations(config, ranker, clean, seed, as_ids(ids, device))
        torch.manual_seed(seed)
        net = UNet(config.width).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        inputs, targets = torch.cat([adv, clean]), torch.cat([clean, clean])
        g = torch.Generator().manual_seed(seed)
        for _ in range(config.epochs):
            for batch in torch.randperm(len(inputs), generator=g).split(config.batch_size):
                b = batch.to(device)
                loss = F.mse_loss(net(inputs[b]), targets[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            denoised = torch.cat([net(c) for c in inputs.split(256)])
        n = len(clean)
        info = {
            "source": "trained",
            "items": int(n),
            "mse_adversarial_before": float(F.mse_loss(adv, clean)),
            "mse_adversarial_after": float(F.mse_loss(denoised[:n], clean)),
            "mse_clean_after": float(F.mse_loss(denoised[n:], clean)),
            "seconds": time.perf_counter() - start,
        }
        log.info("denoiser trained on %d warm items: %s", n, info)
        out = cls(config, net.cpu())
        out.info = info
        return out

    @classmethod
    def fingerprint(cls, config: DenoiserConfig) -> str | None:
        """The checkpoint's SHA-256: a replaced file is a new defence (``None`` when trained
        here, or when the file is not on this machine)."""
        if config.checkpoint and Path(config.checkpoint).is_file():
            return file_sha256(config.checkpoint)
        return None

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        torch.save(self.net.state_dict(), folder / "denoiser.pt")
        (folder / "denoiser.json").write_text(json.dumps(self.info, indent=2))

    @classmethod
    def load(cls, config: DenoiserConfig, folder: Path) -> Denoiser:
        net = UNet(config.width)
        net.load_state_dict(torch.load(Path(folder) / "denoiser.pt", weights_only=True))
        out = cls(config, net)
        out.info = json.loads((Path(folder) / "denoiser.json").read_text())
        return out


def as_ids(ids: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """Item ids as a tensor on ``device``."""
    return torch.as_tensor(np.asarray(ids), device=device)


def training_perturbations(
    config: Any,
    ranker: Recommender,
    clean: torch.Tensor,
    seed: int,
    items: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adversarial images of ``clean`` against ``ranker`` at ``train_eps``: INSA on the first
    half, PGD on INSA's objective over all users on the second, in batches. ``config``: the
    denoiser's or the detector's (``train_eps``, ``attack_epochs``, ``user_batch``,
    ``pgd_steps``, ``batch_size``); ``items``: the images' item ids (for a ranker that reads
    titles, whose are fixed)."""
    from aipray.attacks import ATTACKS, AttackInputs, linf_ascent

    insa_cls = ATTACKS.get("insa")
    insa = insa_cls(
        insa_cls.Config(
            eps=config.train_eps,
            epochs=config.attack_epochs,
            user_batch=config.user_batch,
            seed=seed,
        ),
        ranker,
        AttackInputs(),
    )
    users = torch.arange(ranker.n_users, device=clean.device)
    half = len(clean) // 2
    step = 2.5 * config.train_eps / config.pgd_steps / 255.0  # Madry et al.'s default

    def batches(start: int, stop: int):
        for i in range(start, stop, config.batch_size):
            end = min(stop, i + config.batch_size)
            yield clean[i:end], None if items is None else items[i:end]

    def pgd(x: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
        def preference(images: torch.Tensor, step: int) -> torch.Tensor:
            return ranker.preference(users, images, batch)

        return linf_ascent(
            x, preference, eps=config.train_eps, steps=config.pgd_steps, lr=step, method="sign"
        )

    out = [insa(x, batch) for x, batch in batches(0, half)]
    out += [pgd(x, batch) for x, batch in batches(half, len(clean))]
    return torch.cat(out)
