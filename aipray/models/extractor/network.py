"""The :class:`Extractor` module (resizing and ImageNet normalisation inside, features and
classifier logits from pixels), :func:`build_extractor` and the extractor's class names."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aipray.models.extractor.config import _check_spec
from aipray.models.extractor.text import ClipHead
from aipray.models.nets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AlexNetClassifier,
    FactorisedHead,
    Normalize,
)


def imagenet_weights(arch: str) -> Any:
    """torchvision's ImageNet weights enum of ``arch`` (torchvision is imported here, not with
    aipray: it costs every Ray worker 1.5 s at start)."""
    import torchvision

    return {
        "alexnet": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
        "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
        "vit": torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1,
    }[arch]


def vit_widths(width: float) -> tuple[int, int, int]:
    """``(heads, hidden size, MLP size)`` of the in-process ViT of layer-width multiplier
    ``width``: ViT-B/16's 12 heads of 64 scaled by ``width`` (at least one), MLP 4× hidden."""
    heads = max(1, round(12 * width))
    return heads, 64 * heads, 4 * 64 * heads


def _vit(spec: dict[str, Any], num_classes: int) -> nn.Module:
    """torchvision's ``vit_b_16`` (``torchvision`` layout) or a small ``VisionTransformer`` of
    the spec's image size, patch, depth and width (``aipray`` layout), randomly initialised."""
    import torchvision

    if spec["layout"] == "torchvision":
        return torchvision.models.vit_b_16(weights=None, num_classes=num_classes)
    heads, hidden, mlp = vit_widths(spec["width"])
    return torchvision.models.VisionTransformer(
        image_size=spec["image_size"],
        patch_size=spec["patch_size"],
        num_layers=spec["depth"],
        num_heads=heads,
        hidden_dim=hidden,
        mlp_dim=mlp,
        num_classes=num_classes,
    )


class Extractor(nn.Module):
    """Feature extractor Φ_f with its classifier head, from pixels.

    A CLIP-style extractor (``weights: clip``) also has a text tower in its head:
    :meth:`text_features` embeds titles (:mod:`~aipray.models.extractor.text`).

    ``features(x)``: ``[B, 3, H, W]`` float in ``[0, 1]`` → ``[B, feature_dim]``: AlexNet fc7
    after ReLU (4096-d at full width; AIP's AlexRank and VBPR feature), ResNet50 global average
    pool (2048-d), ViT's class token after the encoder's final layer norm, the input of its
    classification head (Dosovitskiy et al., ICLR 2021; the pre-logits: 768-d for ``vit_b_16``,
    64 per head in-process). ``forward(x)`` → logits ``[B, num_classes]`` of the classifier head
    (ImageNet classes or the catalog's categories), the target of TAaMR's FGSM/PGD baselines.

    Resizing (bilinear with antialiasing, skipped when the size already matches) and ImageNet
    normalisation are part of the module and differentiable; the input is never modified.

    Attributes:
        spec: JSON-able dict that rebuilds this architecture (:func:`build_extractor`).
        feature_dim: length of ``features``.
        num_classes: number of logits.
        input_size: ``(H, W)`` the images are resized to, or ``None``.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        _check_spec(spec)
        self.spec: dict[str, Any] = json.loads(json.dumps(spec))  # a private, JSON-clean copy
        self.arch: str = spec["arch"]
        self.layout: str = spec["layout"]
        self.num_classes: int = int(spec["num_classes"])
        self.input_size: tuple[int, int] | None = (
            None if spec["input_size"] is None else (spec["input_size"][0], spec["input_size"][1])
        )
        self.preprocess: str = spec["preprocess"]
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        net: nn.Module
        if self.arch == "vit":
            net = _vit(spec, self.num_classes)
            if spec.get("factors"):
                net.heads.head = FactorisedHead(net.hidden_dim, tuple(spec["factors"]))
            self.feature_dim = int(net.hidden_dim)
        elif self.layout == "aipray":
            net = AlexNetClassifier(self.num_classes, spec["image_size"], width=spec["width"])
            net.normalize = nn.Identity()  # normalisation happens once, in this module
            if spec.get("factors"):
                net.classifier = FactorisedHead(net.feature_dim, tuple(spec["factors"]))
            if spec.get("text"):
                net.classifier = ClipHead(net.feature_dim, spec["text"])
            self.feature_dim = int(net.feature_dim)
        elif self.arch == "alexnet":
            import torchvision

            net = torchvision.models.alexnet(weights=None, num_classes=self.num_classes)
            self.feature_dim = int(net.classifier[6].in_features)
        else:
            import torchvision

            net = torchvision.models.resnet50(weights=None, num_classes=self.num_classes)
            self.feature_dim = int(net.fc.in_features)
        self.net = net

    @property
    def head(self) -> nn.Module:
        """The classifier's last layer, ``[B, feature_dim]`` → ``[B, num_classes]`` (linear, or
        a :class:`~aipray.models.nets.FactorisedHead`)."""
        if self.arch == "vit":
            return self.net.heads.head
        if self.layout == "aipray":
            return self.net.classifier
        if self.arch == "alexnet":
            return self.net.classifier[6]
        return self.net.fc

    @property
    def has_text(self) -> bool:
        """Whether the extractor has a text tower (CLIP-style pretraining)."""
        return isinstance(self.head, ClipHead)

    def text_features(self, titles: Sequence[str], batch_size: int = 4096) -> torch.Tensor:
        """``[len(titles), dim]`` the text tower's embedding of each title (the text modality's
        item features), on the extractor's device. Needs a text tower (:attr:`has_text`)."""
        if not self.has_text:
            raise ValueError(
                "this extractor has no text tower: pretrain it with extractor.weights: clip"
            )
        head = self.head
        parts = [
            head.embed_text(head.tokens(titles[i : i + batch_size]))
            for i in range(0, len(titles), batch_size)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, head.image_projection.out_features)

    @property
    def class_names(self) -> list[str]:
        """One name per class: ImageNet's from torchvision's weights meta, the catalog's
        categories for a pretrained extractor, otherwise ``class <i>``."""
        return class_names(self.spec)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Resize ``[B, 3, H, W]`` images in ``[0, 1]`` and normalise them (differentiable)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"expected float images in [0, 1], got {images.dtype} (divide by 255)")
        x = images
        if self.input_size is not None:
            x = _resize(x, self.input_size, crop=self.preprocess == "resize_crop")
        return self.normalize(x)

    def _backbone(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        if self.arch == "vit":  # VisionTransformer.forward up to its heads
            x = net._process_input(x)
            x = torch.cat([net.class_token.expand(x.shape[0], -1, -1), x], dim=1)
            return net.encoder(x)[:, 0]
        if self.layout == "aipray":
            return net.fc(net.conv(x))
        if self.arch == "alexnet":
            x = torch.flatten(net.avgpool(net.features(x)), 1)
            for layer in list(net.classifier)[:6]:  # dropout, fc6, ReLU, dropout, fc7, ReLU
                x = layer(x)
            return x
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return torch.flatten(net.avgpool(x), 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Φ_f: ``[B, 3, H, W]`` in ``[0, 1]`` → ``[B, feature_dim]``."""
        return self._backbone(self.prepare(images))

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features [B, feature_dim], logits [B, num_classes])`` from one forward pass."""
        feats = self.features(images)
        return feats, self.head(feats)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Classifier logits ``[B, num_classes]`` of ``[B, 3, H, W]`` images in ``[0, 1]``."""
        return self.head(self.features(images))


def _resize(x: torch.Tensor, size: tuple[int, int], *, crop: bool) -> torch.Tensor:
    h, w = x.shape[-2:]
    if not crop:
        if (h, w) == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    # torchvision's eval preset: shorter side to 256/224 of the crop size, then the centre crop.
    short = int(max(size) * 256 / 224)
    scale = short / min(h, w)
    new = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
    if new != (h, w):
        x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=True)
    top, left = (new[0] - size[0]) // 2, (new[1] - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def build_extractor(spec: dict[str, Any]) -> Extractor:
    """An extractor of the architecture ``spec`` describes, randomly initialised; never touches
    the network or the disk. Load weights with ``load_state_dict`` afterwards."""
    return Extractor(spec)


# --- class names --------------------------------------------------------------------------------
def imagenet_class_names(arch: str = "alexnet") -> list[str]:
    """The 1000 ImageNet class names from torchvision's weights meta (no download needed)."""
    return list(imagenet_weights(arch).meta["categories"])


def class_names(spec: dict[str, Any], category_names: Sequence[str] | None = None) -> list[str]:
    """One name per class of the extractor ``spec`` describes.

    ImageNet names for ``labels="imagenet1k"``; the spec's own ``class_names`` (the catalog's
    categories of a pretrained extractor), else ``category_names`` when it has one name per
    class; otherwise ``class <i>``.
    """
    n = int(spec["num_classes"])
    if spec.get("labels") == "imagenet1k" and n == 1000:
        return imagenet_class_names(spec["arch"])
    if spec.get("class_names"):
        return list(spec["class_names"])
    if category_names is not None and len(category_names) == n:
        return [str(c) for c in category_names]
    return [f"class {i}" for i in range(n)]
