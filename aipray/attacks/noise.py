"""Random sign noise: a control, not an attack.

Every pixel moves by ±ε (uniformly random sign), so the perturbation has the attacks' L∞ size
but neither knowledge nor intent. Whatever a real attack does beyond this control is its own
effect. This matters most for Perceptual-Rec's poisoning protocol, where the recommender is
retrained on the perturbed images: a retrained model differs from the clean one for any change of
its input, so the change under noise is the floor a poisoning attack must clear.

The sign of each pixel is drawn from a generator seeded by ``(seed, item id)``, so an item's noise
does not depend on the batch it is in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aipray.attacks.base import ATTACKS, Attack, quantize_within
from aipray.params import Settings, param


@dataclass(frozen=True)
class NoiseConfig(Settings):
    """``eps`` in 0..255 pixel units (every pixel moves by ±eps before clipping to [0, 1])."""

    eps: float = param(8.0, axis=True, min=0, max=255)
    seed: int = 0


@ATTACKS.register("noise")
class Noise(Attack):
    """Random ±ε sign noise per pixel, rounded to the 8-bit grid within the bound."""

    Config = NoiseConfig
    knowledge = "none"
    #: a baseline every protocol may run next to its attacks
    control = True

    def __call__(self, images: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        ids = range(len(images)) if item_ids is None else item_ids.tolist()
        signs = []
        for item in ids:
            g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + int(item))
            signs.append(torch.randint(0, 2, images.shape[1:], generator=g) * 2 - 1)
        sign = torch.stack(signs).to(images.device, images.dtype)
        eps = self.config.eps
        return quantize_within((images + sign * eps / 255.0).clamp(0, 1), images, eps)
