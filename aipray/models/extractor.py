"""The pretrained visual feature extractor Φ_f behind VBPR, AlexRank, AMR and TAaMR.

AIP (Liu & Larson, WWW 2021) takes VBPR's and AlexRank's item features from a pretrained AlexNet
(fc7 after ReLU, 4096-d); Perceptual-Rec (Anelli et al.) uses a ResNet50 (pooled, 2048-d), also in
adversarially trained versions. TAaMR's FGSM/PGD baselines attack the same network's classifier
head. An :class:`Extractor` is that network as one differentiable map from pixels: it takes float
images ``[B, 3, H, W]`` in ``[0, 1]`` of any size, resizes them to the network's input size and
normalises them with the ImageNet statistics inside, so attacks always work in pixel space.

Where the weights come from (``ExtractorConfig.weights``):

- ``pretrain`` (default, used on synthetic data): trained in-process on the catalog's item
  categories, standing in for ImageNet pretraining. ``arch: alexnet`` is the project's small
  width-scaled :class:`~aipray.models.nets.AlexNetClassifier`, adapted to the image size;
  ``arch: resnet50`` is torchvision's ResNet50 with one output per category.
- ``imagenet``: torchvision's ``IMAGENET1K_V1`` weights, read from torch's hub cache
  (``torch.hub.get_dir()/checkpoints``) and downloaded there only if ``download`` is true.
- a path: a torchvision state dict of ``arch`` (any number of classes), a ``model.pt`` written by
  :func:`save_extractor`, or the folder :func:`save_extractor` wrote (e.g. an adversarially
  trained extractor).

An extractor is rebuilt without any weights from its :attr:`Extractor.spec` (a small JSON-able
dict) by :func:`build_extractor`; a recommender keeps that spec in its ``init_args`` and the
weights in its own state dict, so loading a saved recommender never downloads anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from aipray.models.nets import IMAGENET_MEAN, IMAGENET_STD, AlexNetClassifier, Normalize
from aipray.models.train import fit_classifier
from aipray.params import param
from aipray.store import file_sha256

log = logging.getLogger(__name__)

ARCHS = ("alexnet", "resnet50")
SPEC_VERSION = 1
CHECKPOINT_FORMAT = "aipray-extractor"
MODEL_FILE = "model.pt"
META_FILE = "model.json"

_IMAGENET_WEIGHTS = {
    "alexnet": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
}
# Name of the classifier head's weight in a torchvision state dict of each architecture.
_TORCHVISION_HEAD = {"alexnet": "classifier.6.weight", "resnet50": "fc.weight"}


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither in torch's hub cache nor downloadable (offline machine)."""


@dataclass(frozen=True)
class ExtractorConfig:
    """The feature extractor of the sweep YAML's ``extractor`` section.

    ``arch``: network layout. ``weights``: ``pretrain`` (train on the item categories in-process),
    ``imagenet`` (torchvision's ImageNet weights) or the path of a local checkpoint (file or
    folder written by :func:`save_extractor`). ``download``: whether missing ImageNet weights may
    be downloaded into torch's hub cache. ``input_size``: side the extractor resizes images to
    (0: 224 for ImageNet weights and torchvision checkpoints, the catalog's image size, i.e. no
    resizing, for ``pretrain``). ``preprocess``: ``resize`` stretches the whole image to the input
    size; ``resize_crop`` is torchvision's evaluation preset (shorter side to 256/224 of the input
    size, then the centre crop). ``width``: layer-width multiplier of the pretrained AlexNet layout;
    ``epochs``, ``lr``, ``batch_size``: in-process pretraining.
    """

    arch: str = param("alexnet", choices=ARCHS)
    weights: str = param("pretrain", doc="pretrain, imagenet or a checkpoint path")
    download: bool = param(True)
    input_size: int = param(0, min=0, max=1024)
    preprocess: str = param("resize", choices=("resize", "resize_crop"))
    width: float = param(1.0, min=0.01)
    epochs: int = param(10, min=1)
    lr: float = param(1e-3, min=0)
    batch_size: int = param(64, min=1)

    def __post_init__(self) -> None:
        # A checkpoint path is made absolute so that workers with another working folder find it.
        if self.weights not in ("pretrain", "imagenet") and self.weights:
            object.__setattr__(self, "weights", str(Path(self.weights).expanduser().resolve()))

    @property
    def weights_path(self) -> Path | None:
        """The checkpoint path, or ``None`` for ``pretrain`` and ``imagenet``."""
        return None if self.weights in ("pretrain", "imagenet") else Path(self.weights)

    def cross_checks(self) -> list[tuple[str, object, str]]:
        """``(key, value, allowed)`` for each constraint between fields that fails."""
        bad: list[tuple[str, object, str]] = []
        path = self.weights_path
        expected = (
            "pretrain, imagenet or the path of an existing checkpoint file or extractor folder"
        )
        if not self.weights:
            bad.append(("weights", self.weights, expected))
        elif path is not None and not path.exists():
            bad.append(("weights", self.weights, expected))
        elif path is not None and path.is_dir() and not (path / MODEL_FILE).is_file():
            bad.append(("weights", self.weights, f"a folder holding {MODEL_FILE} (save_extractor)"))
        if 0 < self.input_size < 16:
            bad.append(("input_size", self.input_size, "0 (automatic) or an integer in 16..1024"))
        return bad

    def fingerprint(self) -> dict[str, Any]:
        """What determines the extractor's weights, for cache keys: the fields that matter for
        this ``weights`` source, plus the SHA-256 of a checkpoint file (so a replaced file with
        the same name is not mistaken for the old one). ``download`` never matters."""
        out: dict[str, Any] = {"arch": self.arch, "weights": self.weights}
        out.update(input_size=self.input_size, preprocess=self.preprocess)
        if self.weights == "pretrain":
            out.update(width=self.width, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)
        path = self.weights_path
        if path is not None:
            out["weights_sha256"] = file_sha256(path / MODEL_FILE if path.is_dir() else path)
        return out


# --- the module ---------------------------------------------------------------------------------
def make_spec(
    arch: str,
    num_classes: int,
    *,
    layout: str = "torchvision",
    input_size: int | Sequence[int] | None = 224,
    preprocess: str = "resize",
    image_size: int | None = None,
    width: float = 1.0,
    labels: str = "unknown",
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The JSON-able description from which :func:`build_extractor` rebuilds an extractor.

    Args:
        arch: ``alexnet`` or ``resnet50``.
        num_classes: outputs of the classifier head.
        layout: ``torchvision`` (the published network) or ``aipray`` (the width-scaled
            :class:`~aipray.models.nets.AlexNetClassifier`; ``arch`` must be ``alexnet``).
        input_size: ``S`` or ``(H, W)`` the module resizes every input to; ``None``: no resizing.
        preprocess: ``resize`` (stretch to the input size) or ``resize_crop`` (torchvision's
            evaluation preset: shorter side to ``256/224·S``, then the centre ``S × S`` crop).
        image_size: image side the ``aipray`` layout is adapted to (first convolution, pooling).
        width: layer-width multiplier of the ``aipray`` layout.
        labels: what the classes are: ``imagenet1k``, ``categories`` (catalog item categories,
            named by ``class_names``) or ``unknown``.
        class_names: one name per class (only for ``labels="categories"``).
    """
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    spec: dict[str, Any] = {
        "version": SPEC_VERSION,
        "arch": arch,
        "layout": layout,
        "num_classes": int(num_classes),
        "input_size": None if input_size is None else [int(s) for s in input_size],
        "preprocess": preprocess,
        "labels": labels,
        "class_names": None if class_names is None else [str(n) for n in class_names],
    }
    if layout == "aipray":
        if image_size is None:
            raise ValueError("the aipray AlexNet layout needs image_size")
        spec.update(image_size=int(image_size), width=float(width))
    _check_spec(spec)
    return spec


def _check_spec(spec: dict[str, Any]) -> None:
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        raise ValueError(f"not an extractor spec of version {SPEC_VERSION}: {spec!r}")
    if spec.get("arch") not in ARCHS:
        raise ValueError(f"extractor spec: arch {spec.get('arch')!r}; allowed: {', '.join(ARCHS)}")
    if spec.get("layout") not in ("torchvision", "aipray"):
        raise ValueError(
            f"extractor spec: layout {spec.get('layout')!r}; allowed: torchvision, aipray"
        )
    if spec["layout"] == "aipray" and spec["arch"] != "alexnet":
        raise ValueError("extractor spec: the aipray layout exists only for arch alexnet")
    if int(spec.get("num_classes", 0)) < 1:
        raise ValueError(f"extractor spec: num_classes {spec.get('num_classes')!r}; expected >= 1")
    if spec.get("preprocess") not in ("resize", "resize_crop"):
        raise ValueError(f"extractor spec: preprocess {spec.get('preprocess')!r}")
    names = spec.get("class_names")
    if names is not None and len(names) != spec["num_classes"]:
        raise ValueError(
            f"extractor spec: {len(names)} class names for {spec['num_classes']} classes"
        )


class Extractor(nn.Module):
    """Feature extractor Φ_f with its classifier head, from pixels.

    ``features(x)``: ``[B, 3, H, W]`` float in ``[0, 1]`` → ``[B, feature_dim]``: AlexNet fc7
    after ReLU (4096-d at full width; AIP's AlexRank and VBPR feature), ResNet50 global average
    pool (2048-d). ``forward(x)`` → logits ``[B, num_classes]`` of the classifier head (ImageNet
    classes or the catalog's categories), the target of TAaMR's FGSM/PGD baselines.

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
        if self.layout == "aipray":
            net = AlexNetClassifier(self.num_classes, spec["image_size"], width=spec["width"])
            net.normalize = nn.Identity()  # normalisation happens once, in this module
            self.feature_dim = int(net.feature_dim)
        elif self.arch == "alexnet":
            net = torchvision.models.alexnet(weights=None, num_classes=self.num_classes)
            self.feature_dim = int(net.classifier[6].in_features)
        else:
            net = torchvision.models.resnet50(weights=None, num_classes=self.num_classes)
            self.feature_dim = int(net.fc.in_features)
        self.net = net

    @property
    def head(self) -> nn.Linear:
        """The classifier's last layer, ``[B, feature_dim]`` → ``[B, num_classes]``."""
        if self.layout == "aipray":
            return self.net.classifier
        if self.arch == "alexnet":
            return self.net.classifier[6]
        return self.net.fc

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
    return list(_IMAGENET_WEIGHTS[arch].meta["categories"])


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


# --- weights ------------------------------------------------------------------------------------
def imagenet_weights_file(arch: str) -> Path:
    """Where torch's hub cache keeps ``arch``'s ImageNet weights:
    ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>`` (``TORCH_HOME`` moves it)."""
    url = _IMAGENET_WEIGHTS[arch].url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _imagenet_state_dict(arch: str, download: bool) -> tuple[dict[str, torch.Tensor], Path]:
    weights = _IMAGENET_WEIGHTS[arch]
    file = imagenet_weights_file(arch)
    if file.is_file():
        log.info("loading ImageNet weights of %s from %s", arch, file)
        return torch.load(file, map_location="cpu", weights_only=True), file
    how = "downloading is disabled (extractor.download: false)"
    if download:
        log.info("downloading ImageNet weights of %s from %s", arch, weights.url)
        try:
            state = torch.hub.load_state_dict_from_url(
                weights.url,
                model_dir=str(file.parent),
                map_location="cpu",
                progress=False,
                check_hash=True,
                weights_only=True,
            )
            return state, file
        except Exception as err:  # no network, proxy, hash mismatch, full disk ...
            how = f"downloading it failed ({type(err).__name__}: {err})".replace("\n", " ")
            cause: Exception | None = err
    else:
        cause = None
    raise WeightsUnavailableError(
        f"ImageNet weights of {arch} ({type(weights).__name__}.{weights.name}) are not available: "
        f"{file.name} is not in torch's hub cache {file.parent} and {how}. Download {weights.url} "
        f"on a machine with internet access and copy it to {file} (TORCH_HOME moves the cache), "
        "or set extractor.weights to the path of a local checkpoint."
    ) from cause


def _unwrap_state_dict(obj: Any, head_key: str) -> dict[str, torch.Tensor] | None:
    """The torchvision state dict inside common checkpoint wrappers, or ``None``.

    Handles ``{"state_dict"|"model_state_dict"|"model": ...}`` nesting and any key prefix before
    the network's own names (``module.`` of DataParallel, ``module.model.`` of the robustness
    library, whose other entries such as its normaliser and attacker copy are dropped).
    """
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        return None
    prefixes = [k[: -len(head_key)] for k in obj if isinstance(k, str) and k.endswith(head_key)]
    if not prefixes:
        return None
    prefix = min(prefixes, key=len)
    return {
        k[len(prefix) :]: v
        for k, v in obj.items()
        if k.startswith(prefix) and isinstance(v, torch.Tensor)
    }


def _load_checkpoint(config: ExtractorConfig) -> tuple[Extractor, dict[str, Any]]:
    path = config.weights_path
    assert path is not None
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"extractor.weights: {path} is not a checkpoint file or folder")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"extractor.weights: cannot read {file} with torch.load(weights_only=True) "
            f"({type(err).__name__}); save the bare state dict with torch.save(model.state_dict())"
        ) from err
    info: dict[str, Any] = {"source": "checkpoint", "path": str(file), "sha256": file_sha256(file)}
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        extractor = build_extractor(obj["spec"])
        extractor.load_state_dict(obj["state_dict"])
        if extractor.arch != config.arch:
            raise ValueError(
                f"extractor.weights: {file} holds a {extractor.arch} extractor but extractor.arch "
                f"is {config.arch!r}"
            )
        if config.input_size and extractor.input_size != (config.input_size,) * 2:
            log.warning(
                "extractor.input_size %d ignored: %s was saved with input size %s",
                config.input_size,
                file,
                extractor.input_size,
            )
        info["checkpoint"] = CHECKPOINT_FORMAT
        return extractor, info
    head_key = _TORCHVISION_HEAD[config.arch]
    state = _unwrap_state_dict(obj, head_key)
    if state is None:
        raise ValueError(
            f"extractor.weights: {file} is neither a torchvision {config.arch} state dict (no "
            f"{head_key!r}) nor a checkpoint written by save_extractor"
        )
    n_classes = int(state[head_key].shape[0])
    spec = make_spec(
        config.arch,
        n_classes,
        input_size=config.input_size or 224,
        preprocess=config.preprocess,
        labels="imagenet1k" if n_classes == 1000 else "unknown",
    )
    extractor = build_extractor(spec)
    missing, unexpected = extractor.net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"extractor.weights: {file} does not fit torchvision's {config.arch}: "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    info["checkpoint"] = "torchvision"
    return extractor, info


# --- making, saving, loading --------------------------------------------------------------------
def make_extractor(
    config: ExtractorConfig,
    images: np.ndarray | None,
    categories: np.ndarray | None,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    category_names: Sequence[str] | None = None,
) -> tuple[Extractor, dict[str, Any]]:
    """Build the extractor ``config`` asks for, with its weights, in eval mode and frozen.

    Args:
        config: the sweep's extractor settings.
        images: uint8 ``[N, 3, H, W]`` images to pretrain on (the catalog's warm items); only
            used by ``weights: pretrain``.
        categories: ``[N]`` category per image, ``-1`` where unknown (those are skipped).
        device: where to train and where the result lives.
        seed: seed of initialisation, held-out split and batch order.
        category_names: names of the categories (class names of a pretrained extractor).

    Returns:
        ``(extractor, info)``: ``info`` is JSON-able and records where the weights came from
        (``source``: ``pretrain`` | ``imagenet`` | ``checkpoint``, with file, URL, path or SHA-256)
        and, for pretraining, ``holdout_accuracy``, ``best_epoch``, ``history``, ``seconds``,
        ``n_images`` and ``chance_accuracy``.

    Raises:
        WeightsUnavailableError: ImageNet weights neither cached nor downloadable.
    """
    device = torch.device(device)
    if config.weights == "pretrain":
        extractor, info = _pretrain(config, images, categories, device, seed, category_names)
    elif config.weights == "imagenet":
        state, file = _imagenet_state_dict(config.arch, config.download)
        spec = make_spec(
            config.arch,
            1000,
            input_size=config.input_size or 224,
            preprocess=config.preprocess,
            labels="imagenet1k",
        )
        extractor = build_extractor(spec)
        extractor.net.load_state_dict(state)
        weights = _IMAGENET_WEIGHTS[config.arch]
        info = {
            "source": "imagenet",
            "weights": f"{type(weights).__name__}.{weights.name}",
            "url": weights.url,
            "file": str(file),
        }
    else:
        extractor, info = _load_checkpoint(config)
    info["spec"] = extractor.spec
    extractor.to(device).eval().requires_grad_(False)
    log.info(
        "extractor %s (%s): %d-d features, %d classes",
        extractor.arch,
        info["source"],
        extractor.feature_dim,
        extractor.num_classes,
    )
    return extractor, info


def _pretrain(
    config: ExtractorConfig,
    images: np.ndarray | None,
    categories: np.ndarray | None,
    device: torch.device,
    seed: int,
    category_names: Sequence[str] | None,
) -> tuple[Extractor, dict[str, Any]]:
    if images is None or categories is None:
        raise ValueError("extractor.weights: pretrain needs images and their categories")
    categories = np.asarray(categories)
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != categories.shape[0]:
        raise ValueError(
            f"expected uint8 images [N, 3, H, W] and categories [N], got {images.shape} and "
            f"{categories.shape}"
        )
    keep = np.flatnonzero(categories >= 0)
    labels = categories[keep].astype(np.int64)
    n_classes = int(labels.max()) + 1 if labels.size else 0
    if category_names is not None:
        n_classes = max(n_classes, len(category_names))
    if np.unique(labels).size < 2:
        raise ValueError("extractor.weights: pretrain needs items of at least two categories")
    if config.arch == "resnet50":
        # Batch norm cannot train on a last batch of one image: drop an image if that would happen.
        keep = keep[: _size_without_single_batch(keep.size, config.batch_size)]
        labels = labels[: keep.size]
    h, w = int(images.shape[2]), int(images.shape[3])
    names = None
    if category_names is not None:
        names = [str(c) for c in category_names] + [
            f"class {i}" for i in range(len(category_names), n_classes)
        ]
    spec = make_spec(
        config.arch,
        n_classes,
        layout="aipray" if config.arch == "alexnet" else "torchvision",
        input_size=config.input_size or (h, w),
        preprocess=config.preprocess,
        image_size=config.input_size or min(h, w),
        width=config.width,
        labels="categories",
        class_names=names,
    )
    torch.manual_seed(seed)
    extractor = build_extractor(spec).to(device)
    result = fit_classifier(
        extractor,
        images[keep],
        labels,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        device=device,
        seed=seed,
    )
    counts = np.bincount(labels, minlength=n_classes)
    info = {
        "source": "pretrain",
        "holdout_accuracy": float(result.best_score),
        "chance_accuracy": float(counts.max() / counts.sum()),
        "best_epoch": int(result.best_epoch),
        "history": result.history,
        "seconds": float(result.seconds),
        "n_images": int(keep.size),
    }
    log.info(
        "extractor pretrained on %d images, %d categories: held-out accuracy %.3f (%.0fs)",
        keep.size,
        n_classes,
        result.best_score,
        result.seconds,
    )
    return extractor, info


def _size_without_single_batch(n: int, batch_size: int) -> int:
    """Largest ``m <= n`` whose training split in ``fit_classifier`` (``m`` minus a 10 % holdout)
    does not end in a batch of one image."""
    for m in range(n, 0, -1):
        if (m - max(1, int(0.1 * m))) % batch_size != 1:
            return m
    return n


def save_extractor(
    extractor: Extractor, directory: Path | str, info: dict[str, Any] | None = None
) -> None:
    """Write ``directory/model.pt`` (``{"format", "spec", "state_dict"}``, readable with
    ``torch.load(weights_only=True)`` and usable as ``extractor.weights``) and
    ``directory/model.json`` (``format``, ``spec``, ``info``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in extractor.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "spec": extractor.spec, "state_dict": state}
    torch.save(payload, directory / MODEL_FILE)
    meta = {"format": CHECKPOINT_FORMAT, "spec": extractor.spec, "info": info or {}}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def load_extractor(directory: Path | str, device: str | torch.device = "cpu") -> Extractor:
    """The extractor :func:`save_extractor` wrote into ``directory``, in eval mode with
    ``requires_grad`` off, on ``device``."""
    file = Path(directory) / MODEL_FILE
    obj = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{file} was not written by save_extractor")
    extractor = build_extractor(obj["spec"])
    extractor.load_state_dict(obj["state_dict"])
    return extractor.to(device).eval().requires_grad_(False)


def read_extractor_info(directory: Path | str) -> dict[str, Any]:
    """The ``info`` dict :func:`save_extractor` stored next to the weights."""
    return json.loads((Path(directory) / META_FILE).read_text())["info"]


# --- batched helpers on uint8 images ------------------------------------------------------------
def _batches(
    images: np.ndarray | torch.Tensor,
    batch_size: int,
    device: torch.device,
    items: np.ndarray | None = None,
) -> Iterator[torch.Tensor]:
    """Float ``[b, 3, H, W]`` batches in ``[0, 1]`` on ``device`` of all rows, or of the rows
    ``items``; a (read-only, memory-mapped) uint8 array is copied one batch at a time, never
    whole."""
    n = images.shape[0] if items is None else len(items)
    for i in range(0, n, batch_size):
        rows = slice(i, i + batch_size) if items is None else items[i : i + batch_size]
        chunk = images[rows]
        if isinstance(chunk, np.ndarray):
            chunk = torch.from_numpy(np.array(chunk))
        yield chunk.to(device, torch.float32) / 255.0


def _device_of(extractor: Extractor, device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else next(extractor.parameters()).device


@torch.no_grad()
def extract_features(
    extractor: Extractor,
    images: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    items: np.ndarray | None = None,
) -> torch.Tensor:
    """``Φ_f`` of uint8 images ``[N, 3, H, W]`` (array, memmap or tensor), or of the rows
    ``items``, in batches → float ``[N or len(items), feature_dim]`` on ``device`` (default: the
    extractor's)."""
    device = _device_of(extractor, device)
    out = [extractor.features(x) for x in _batches(images, batch_size, device, items)]
    return torch.cat(out) if out else torch.zeros(0, extractor.feature_dim, device=device)


@torch.no_grad()
def predict_classes(
    extractor: Extractor,
    images: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    items: np.ndarray | None = None,
) -> np.ndarray:
    """Predicted class ``[N]`` (int64) of uint8 images ``[N, 3, H, W]`` (or of the rows
    ``items``)."""
    device = _device_of(extractor, device)
    preds = [extractor(x).argmax(1).cpu() for x in _batches(images, batch_size, device, items)]
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


def popular_class(
    extractor: Extractor,
    images: np.ndarray | torch.Tensor,
    weights: np.ndarray | None = None,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    items: np.ndarray | None = None,
) -> int:
    """TAaMR's target: the class the extractor assigns most often to ``images`` (or the rows
    ``items``: the training items), each counted ``weights[i]`` times (e.g. its interactions;
    default once)."""
    pred = predict_classes(extractor, images, device=device, batch_size=batch_size, items=items)
    votes = np.bincount(pred, weights=weights, minlength=extractor.num_classes)
    if not math.isfinite(float(votes.sum())) or votes.sum() <= 0:
        raise ValueError("popular_class needs at least one image with a positive weight")
    return int(np.argmax(votes))
