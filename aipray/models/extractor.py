"""The pretrained visual feature extractor behind VBPR (and, later, AlexRank, AMR, TAaMR).

On synthetic data the AlexNet-layout classifier is pretrained in-process on the item categories
(``weights: pretrain``), standing in for ImageNet pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass

from aipray.params import param


@dataclass(frozen=True)
class ExtractorConfig:
    """arch: network layout; weights: where its weights come from; the rest: in-process pretraining."""

    arch: str = param("alexnet", choices=("alexnet",))
    weights: str = param("pretrain", choices=("pretrain",))
    width: float = param(1.0, min=0.01)
    epochs: int = param(10, min=1)
    lr: float = param(1e-3, min=0)
    batch_size: int = param(64, min=1)
