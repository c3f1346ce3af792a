"""JPEG compression (Dziugaite et al. 2016; AIP Table 8: quality 90, 70, 50, 30, 10)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aipray.defenses.base import DEFENSES, Defense
from aipray.params import Settings, param
from aipray.pixels import to_float, to_uint8


@dataclass(frozen=True)
class JPEGConfig(Settings):
    """quality: libjpeg quality factor, 1 (strongest) .. 100."""

    quality: int = param(75, axis=True, min=1, max=100)


@DEFENSES.register("jpeg")
class JPEG(Defense):
    """Encode each image as 8-bit JPEG at ``quality`` and decode it again (torchvision's libjpeg,
    batched). Not differentiable: an adaptive attack passes it straight through (BPDA)."""

    Config = JPEGConfig
    gradient = "bpda"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.io import decode_jpeg, encode_jpeg  # not at import: 1.5 s per process

        if images.shape[0] == 0:
            return images
        as_uint8 = to_uint8(images).cpu()
        encoded = encode_jpeg(list(as_uint8), quality=int(self.config.quality))
        decoded = decode_jpeg(encoded)
        out = to_float(torch.stack(decoded), images.device)
        return out
