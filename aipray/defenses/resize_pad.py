"""Random resizing and padding (Xie et al., "Mitigating Adversarial Effects Through
Randomization", ICLR 2018): a randomised defence, attacked with EOT."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aipray.defenses.base import DEFENSES, Defense
from aipray.params import Settings, param
from aipray.pixels import to_uint8


@dataclass(frozen=True)
class RandomResizePadConfig(Settings):
    """min_scale: the smallest resize factor, 0.1..1 (Xie et al.: 299/331 ≈ 0.9; smaller is
    stronger); seed: of the draws the platform serves."""

    min_scale: float = param(0.9, axis=True, min=0.1, max=1)
    seed: int = 0


@DEFENSES.register("random_resize_pad")
class RandomResizePad(Defense):
    """Shrink each image by a factor ``s`` drawn uniformly in ``[min_scale, 1]`` (bilinear) and
    place it at a uniformly drawn position on a black canvas of its original size: Xie et al.'s
    resize-then-pad, with the output kept at the input's size. ``[B, 3, H, W]`` in [0, 1] →
    the same shape in [0, 1], off the 8-bit grid.

    What the platform serves (``__call__``) draws each image's ``s`` and position from a hash of
    the image's 8-bit content and ``seed``: an image is always served the same way (the
    candidate scores, every batch and every actor agree), and an attacker cannot pick its draw
    without changing the image, so it treats the draw as random. An adaptive attacker draws from
    its own generator (:meth:`draw`) and averages over draws (EOT); the transform is
    differentiable, so its exact gradient is used.
    """

    Config = RandomResizePadConfig
    gradient = "exact"
    randomised = True

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] == 0:
            return images
        seed = int(self.config.seed).to_bytes(8, "little", signed=True)
        uniforms = []
        for image in to_uint8(images).cpu().numpy():
            digest = hashlib.blake2b(image.tobytes() + seed, digest_size=8).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
            uniforms.append(torch.rand(3, generator=g))
        return self.transform(images, torch.stack(uniforms))

    def draw(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.transform(images, torch.rand(images.shape[0], 3, generator=generator))

    def transform(self, images: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """The resize-and-pad of each image given its three uniforms in [0, 1) ``[B, 3]``
        (scale, horizontal and vertical position), differentiably."""
        u = uniforms.to(images.device, images.dtype)
        lo = float(self.config.min_scale)
        scale = lo + (1.0 - lo) * u[:, 0]
        # the shrunk image covers [left, left + 2s] of the canvas's [-1, 1]; its centre is c
        cx = -1.0 + 2.0 * (1.0 - scale) * u[:, 1] + scale
        cy = -1.0 + 2.0 * (1.0 - scale) * u[:, 2] + scale
        theta = torch.zeros(images.shape[0], 2, 3, device=images.device, dtype=images.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
        theta[:, 0, 2] = -cx / scale
        theta[:, 1, 2] = -cy / scale
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return out.clamp(0.0, 1.0)
