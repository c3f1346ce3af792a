"""JPEG compression (Dziugaite et al. 2016; AIP Table 8: quality 90, 70, 50, 30, 10), and a
differentiable approximation of it for adaptive attackers (Shin & Song 2017)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
    batched). Not differentiable: an adaptive attack passes it straight through (BPDA), with
    the identity's gradient or, with ``bpda: approximation``, :func:`differentiable_jpeg`'s."""

    Config = JPEGConfig
    gradient = "bpda"
    approximable = True

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.io import decode_jpeg, encode_jpeg  # not at import: 1.5 s per process

        if images.shape[0] == 0:
            return images
        as_uint8 = to_uint8(images).cpu()
        encoded = encode_jpeg(list(as_uint8), quality=int(self.config.quality))
        decoded = decode_jpeg(encoded)
        out = to_float(torch.stack(decoded), images.device)
        return out

    def approximation(self, images: torch.Tensor) -> torch.Tensor:
        return differentiable_jpeg(images, int(self.config.quality))


#: the JPEG standard's (Annex K) luminance and chrominance quantisation tables at quality 50
LUMINANCE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMINANCE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8,) * 4,
)


def quantisation_table(base: tuple[tuple[int, ...], ...], quality: int) -> torch.Tensor:
    """libjpeg's table at ``quality``: the base table scaled by ``5000/q`` below 50 and
    ``200 − 2q`` from 50 on (percent), rounded, within 1..255."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    table = torch.tensor(base, dtype=torch.float32)
    return torch.clamp(torch.floor((table * scale + 50) / 100), 1, 255)


@functools.cache
def dct_matrix(n: int = 8) -> torch.Tensor:
    """The orthonormal DCT-II matrix, JPEG's 8×8 transform: ``coefficients = D X Dᵀ``."""
    k = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.float()


def soft_round(x: torch.Tensor) -> torch.Tensor:
    """Shin & Song's differentiable rounding: ``round(x) + (x − round(x))³``, the rounded value
    up to a cube and a gradient that is 3(x − round(x))², not zero."""
    r = torch.round(x)
    return r + (x - r) ** 3


def differentiable_jpeg(images: torch.Tensor, quality: int, rounding=soft_round) -> torch.Tensor:
    """JPEG at ``quality`` in torch, differentiable in the pixels: JFIF's RGB → YCbCr, 4:2:0
    chroma subsampling (2×2 means; edges replicated to a multiple of 16), the 8×8 DCT,
    quantisation by libjpeg's scaled tables with ``rounding`` (Shin & Song's cubic one by
    default), the inverse, bilinear chroma upsampling, back to RGB within [0, 1]. With exact
    rounding it decodes within about 1/255 on average of libjpeg (its fancy upsampling and
    integer DCT differ in details); its gradient is what BPDA with an approximation uses."""
    _, _, h, w = images.shape
    x = images * 255
    r, g, b = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    hh, ww = -(-h // 16) * 16, -(-w // 16) * 16

    def padded(c: torch.Tensor) -> torch.Tensor:
        return F.pad(c[:, None], (0, ww - w, 0, hh - h), mode="replicate")

    dct = dct_matrix().to(images)
    luma = quantisation_table(LUMINANCE, quality).to(images)
    chroma = quantisation_table(CHROMINANCE, quality).to(images)

    def codec(c: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        n, _, ch, cw = c.shape  # [B, 1, H, W] → 8×8 blocks → coefficients → back
        blocks = (c[:, 0] - 128).reshape(n, ch // 8, 8, cw // 8, 8).transpose(2, 3)
        coefficients = rounding(dct @ blocks @ dct.T / table) * table
        back = (dct.T @ coefficients @ dct).transpose(2, 3).reshape(n, ch, cw)
        return back[:, None] + 128

    y = codec(padded(y), luma)
    cb, cr = (
        F.interpolate(
            codec(F.avg_pool2d(padded(c), 2), chroma),
            scale_factor=2,
            mode="bilinear",
            align_corners=False,
        )
        for c in (cb, cr)
    )
    y, cb, cr = y[:, 0, :h, :w], cb[:, 0, :h, :w] - 128, cr[:, 0, :h, :w] - 128
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1)
    return rgb.clamp(0, 255) / 255
