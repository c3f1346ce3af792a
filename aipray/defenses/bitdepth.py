"""Bit-depth reduction (feature squeezing, Xu et al. NDSS 2018; AIP Table 8: 7 … 2 bits)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aipray.defenses.base import DEFENSES, Defense
from aipray.params import Settings, param


@dataclass(frozen=True)
class BitDepthConfig(Settings):
    """bits: colour depth per channel that survives, 1 (strongest) .. 8 (identity on 8-bit
    images)."""

    bits: int = param(4, axis=True, min=1, max=8)


@DEFENSES.register("bitdepth")
class BitDepth(Defense):
    """Quantise each channel to ``2**bits`` evenly spaced levels in [0, 1]:
    ``round(x · (2**bits − 1)) / (2**bits − 1)``, as in feature squeezing. With ``bits=8`` an
    image on the 8-bit grid is returned unchanged. Not differentiable (zero gradient almost
    everywhere): an adaptive attack passes it straight through (BPDA)."""

    Config = BitDepthConfig
    gradient = "bpda"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        levels = float(2 ** int(self.config.bits) - 1)
        return torch.round(images.detach().clamp(0, 1) * levels) / levels
