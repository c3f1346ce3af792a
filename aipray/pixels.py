"""Images as aipray passes them: float32 ``[N, 3, H, W]`` in ``[0, 1]`` between modules, uint8 on
disk and in the catalog. The one pair of conversions between the two, and :data:`ImageMap`.

Plain torch and numpy, no aipray import: every layer builds on it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

#: images → images, both float ``[B, 3, H, W]`` in [0, 1] (a defence, a feature map's input)
ImageMap = Callable[[torch.Tensor], torch.Tensor]


def to_float(
    images: np.ndarray | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """uint8 images (an array, memmap rows or a tensor) → float32 in [0, 1], on ``device``
    (default: where they are); the result never shares memory with ``images``."""
    if not isinstance(images, torch.Tensor):
        array = np.asarray(images)
        images = torch.from_numpy(array if array.flags.writeable else array.copy())
    return images.to(device=device, dtype=torch.float32) / 255.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] → uint8 on the 8-bit grid (rounded, clamped first), on their
    device and detached."""
    return torch.round(images.detach().clamp(0, 1) * 255).to(torch.uint8)
