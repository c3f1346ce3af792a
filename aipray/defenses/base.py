"""Input-transform defences applied to every image the ranker sees.

A platform cannot tell which images are adversarial, so a defence transforms all of them: the
candidate items' images, the cooperative and the adversarial cold images alike. Each defence says
whether gradients pass through it (``differentiable``), so adaptive attacks (BPDA) can be added as a
switch rather than a rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from aipray.params import Settings
from aipray.registry import Registry

DEFENSES: Registry[Defense] = Registry("defense")


class Defense:
    """``defense(images [B, 3, H, W] in [0, 1]) → images of the same shape in [0, 1]``."""

    name: ClassVar[str]
    Config: ClassVar[type]
    differentiable: ClassVar[bool] = False
    #: leaves images as they are (no defence): nothing to recompute for it
    identity: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class NoDefenseConfig(Settings):
    pass


@DEFENSES.register("none")
class NoDefense(Defense):
    """The identity: the ranker sees images as uploaded."""

    Config = NoDefenseConfig
    differentiable = True
    identity = True

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images
