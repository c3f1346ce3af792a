"""Image networks: the CNN-F embedding network of DVBPR and an AlexNet-layout classifier.

Both take float images ``[B, 3, H, W]`` in ``[0, 1]`` and normalise inside, so attacks always work
in pixel space. At 224×224 with ``width=1`` they have the published layouts; for the small images of
synthetic data the first convolution becomes 5×5 stride 1 and ``width`` thins every layer, keeping
the depth and order of layers.
"""

from __future__ import annotations

import torch
from torch import nn

DVBPR_MEAN = (0.6949, 0.6748, 0.6676)
DVBPR_STD = (0.3102, 0.3220, 0.3252)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _init_relu_net(net: nn.Module) -> None:
    """He initialisation for ReLU layers, so that item embeddings differ from the first step
    (PyTorch's default init shrinks the signal through eight layers until all items look alike)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


def _scaled(n: int, width: float) -> int:
    return max(4, round(n * width))


def _first_conv(image_size: int, out: int) -> nn.Conv2d:
    if image_size >= 128:
        return nn.Conv2d(3, out, kernel_size=11, stride=4, padding=2)
    return nn.Conv2d(3, out, kernel_size=5, stride=1, padding=2)


class CNNF(nn.Module):
    """DVBPR's CNN-F (Kang et al. 2017): 5 convolutions, 2 hidden fc layers, a linear embedding.

    Args:
        dim: embedding length K.
        image_size: side of the square input.
        width: multiplier on every layer's width (1.0 = the published 64/256/4096 layout).
        dropout: dropout after each hidden fc layer (training only).

    Shapes: ``[B, 3, S, S]`` in ``[0, 1]`` → ``[B, dim]``.
    """

    def __init__(self, dim: int, image_size: int, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        c1, c2, fc = _scaled(64, width), _scaled(256, width), _scaled(4096, width)
        pooled = 7 if image_size >= 128 else max(2, image_size // 8)
        self.normalize = Normalize(DVBPR_MEAN, DVBPR_STD)
        self.features = nn.Sequential(
            _first_conv(image_size, c1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveMaxPool2d(pooled),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * pooled * pooled, fc),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc, fc),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc, dim),
        )

        _init_relu_net(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(images)))


class AlexNetClassifier(nn.Module):
    """AlexNet layout (Krizhevsky et al. 2012) whose fc7 output after ReLU is the visual feature.

    Shapes: ``features(x)``: ``[B, 3, S, S]`` → ``[B, feature_dim]``; ``forward(x)`` → logits.
    """

    def __init__(self, num_classes: int, image_size: int, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        c = [_scaled(n, width) for n in (64, 192, 384, 256, 256)]
        self.feature_dim = _scaled(4096, width)
        pooled = 6 if image_size >= 128 else max(2, image_size // 8)
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.conv = nn.Sequential(
            _first_conv(image_size, c[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3 if image_size >= 128 else 2, 2),
            nn.Conv2d(c[0], c[1], 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3 if image_size >= 128 else 2, 2),
            nn.Conv2d(c[1], c[2], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c[2], c[3], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c[3], c[4], 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3 if image_size >= 128 else 2, 2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(pooled),
        )
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c[4] * pooled * pooled, self.feature_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(self.feature_dim, self.feature_dim),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        _init_relu_net(self)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """fc7 after ReLU."""
        return self.fc(self.conv(self.normalize(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


class FactorisedHead(nn.Module):
    """A classifier over the product of attributes whose logit is a sum of one logit per
    attribute: class ``(a_1, …, a_k)`` scores ``Σ_j head_j(f)[a_j]``, so its softmax is the
    product of the attributes' softmaxes and its cross-entropy the sum of theirs. Every class
    logit still exists (an attack can target "red striped crescent"), while each attribute's head
    learns from every image. Classes are numbered row-major over ``factors``.

    Shapes: ``[B, in_features]`` → ``[B, prod(factors)]``.
    """

    def __init__(self, in_features: int, factors: tuple[int, ...]) -> None:
        super().__init__()
        self.factors = tuple(int(f) for f in factors)
        self.heads = nn.ModuleList(nn.Linear(in_features, f) for f in self.factors)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        k = len(self.factors)
        total = features.new_zeros(features.shape[0], *([1] * k))
        for j, head in enumerate(self.heads):
            shape = [features.shape[0]] + [1] * k
            shape[j + 1] = self.factors[j]
            total = total + head(features).view(shape)
        return total.flatten(1)
