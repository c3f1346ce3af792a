"""Perceptual-Rec's image and feature metrics (Anelli et al.): LPIPS between clean and attacked
images and the feature loss of the extractor.

LPIPS (Zhang et al., CVPR 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric") is the ``lpips`` package's v0.1 metric: its linear calibration layers ship inside the
package; its backbone (torchvision's VGG16, as in the paper, or AlexNet) comes from
:attr:`LPIPSConfig.backbone`, never from a download by ``lpips`` or torchvision themselves.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aipray.checkpoints import hub_file, hub_state_dict, unwrap_state_dict
from aipray.params import Settings, param
from aipray.store import file_sha256

log = logging.getLogger(__name__)

# torchvision network and ImageNet weights behind each LPIPS net.
_ARCH = {"vgg": "vgg16", "alex": "alexnet"}
# Smallest image side each backbone accepts (VGG16 pools 4 times; AlexNet's stride-4 conv and
# two 3×3/2 pools need 31 px); smaller images are upsampled to this side.
MIN_SIZE = {"vgg": 16, "alex": 32}
RANDOM_SEED = 0


def _imagenet(net: str) -> Any:
    """torchvision's ImageNet weights enum behind LPIPS ``net`` (imported on use: torchvision
    costs every process 1.5 s)."""
    import torchvision

    return {
        "vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
        "alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
    }[net]


@dataclass(frozen=True)
class LPIPSConfig(Settings):
    """The LPIPS network of the perceptual metrics (the sweep YAML's ``lpips`` section).

    ``net``: ``vgg`` (VGG16, Perceptual-Rec's choice) or ``alex``. ``backbone``: where the
    backbone's weights come from: ``imagenet`` (torchvision's ``IMAGENET1K_V1`` weights read from
    torch's hub cache, ``torch.hub.get_dir()/checkpoints``), the path of a local torchvision
    state dict of ``vgg16``/``alexnet`` (a full model's or its ``features`` only), or ``random``:
    a randomly initialised backbone with a fixed seed, only for tests and offline smoke runs; its
    numbers are NOT LPIPS as published and are not comparable with any paper. ``download``:
    whether missing ImageNet weights may be downloaded into the hub cache.
    """

    net: str = param("vgg", choices=tuple(_ARCH))
    backbone: str = param("imagenet", doc="imagenet, random (tests only) or a state-dict path")
    download: bool = param(False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backbone_path is not None:  # absolute, so that workers elsewhere find it
            object.__setattr__(self, "backbone", str(Path(self.backbone).expanduser().resolve()))

    @property
    def backbone_path(self) -> Path | None:
        """The state-dict path, or ``None`` for ``imagenet`` and ``random``."""
        return None if self.backbone in ("imagenet", "random", "") else Path(self.backbone)

    @property
    def label(self) -> str:
        """Which metric this is, for reports: ``LPIPS(vgg, imagenet)``."""
        path = self.backbone_path
        source = path.name if path is not None else self.backbone
        if self.backbone == "random":
            source += " backbone: not LPIPS as published"
        return f"LPIPS({self.net}, {source})"

    def fingerprint(self) -> dict[str, Any]:
        """What decides the metric's values, for cache keys (``download`` never matters)."""
        out: dict[str, Any] = {"net": self.net, "backbone": self.backbone, "lpips": "v0.1"}
        if self.backbone == "random":
            out["seed"] = RANDOM_SEED
        if (path := self.backbone_path) is not None and path.is_file():
            out["backbone_sha256"] = file_sha256(path)
        return out

    def file_checks(self) -> list[tuple[str, object, str]]:
        """The state-dict file ``backbone`` names must exist, and ImageNet weights must be in
        torch's hub cache unless they may be downloaded (run by the sweep parser, so an offline
        machine learns it before any work)."""
        if not self.backbone or (self.backbone_path and not self.backbone_path.is_file()):
            return [("backbone", self.backbone, "imagenet, random or an existing state-dict file")]
        if self.backbone == "imagenet" and not self.download:
            file = imagenet_backbone_file(self.net)
            if not file.is_file():
                allowed = (
                    f"imagenet with {file} in torch's hub cache (or download: true), the path of "
                    "a local state dict, or random (smoke runs only)"
                )
                return [("backbone", self.backbone, allowed)]
        return []


class LPIPS(nn.Module):
    """LPIPS distance between two batches of images, frozen and in eval mode.

    Call with ``clean, perturbed``: ``[B, 3, H, W]`` in [0, 1] (mapped to lpips' [-1, 1] inside)
    → ``[B]`` distances (0 for identical images). Images whose shorter side is below
    ``MIN_SIZE[net]`` (16 px for VGG, 32 for AlexNet) are bilinearly upsampled so that it
    reaches that size; the synthetic 32×32 images are used as they are. Gradients flow to the
    inputs. Built by :func:`make_lpips`; ``label`` says which backbone is used.
    """

    def __init__(self, net: Any, config: LPIPSConfig) -> None:
        super().__init__()
        self.net, self.config, self.label = net, config, config.label
        self.min_size = MIN_SIZE[config.net]

    def forward(self, clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        if clean.shape != perturbed.shape or clean.ndim != 4 or clean.shape[1] != 3:
            raise ValueError(
                f"LPIPS: expected two [B, 3, H, W] batches, got {tuple(clean.shape)} and "
                f"{tuple(perturbed.shape)}"
            )
        side = min(clean.shape[-2:])
        if side < self.min_size:
            scale = self.min_size / side
            size = [max(self.min_size, round(s * scale)) for s in clean.shape[-2:]]
            clean = F.interpolate(clean, size=size, mode="bilinear")
            perturbed = F.interpolate(perturbed, size=size, mode="bilinear")
        return self.net(clean, perturbed, normalize=True).flatten()


def imagenet_backbone_file(net: str) -> Path:
    """Where torch's hub cache keeps the ImageNet weights of ``net``'s backbone."""
    return hub_file(_imagenet(net))


def _imagenet_state(net: str, download: bool) -> dict[str, torch.Tensor]:
    state, _ = hub_state_dict(
        _imagenet(net),
        _ARCH[net],
        download=download,
        key="lpips",
        instead="set lpips.backbone to the path of a local state dict (lpips.backbone: random "
        "only for smoke runs: not LPIPS as published)",
    )
    return state


def _file_state(path: Path, net: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"lpips.backbone: {path} is not a state-dict file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"lpips.backbone: cannot read {path} with torch.load(weights_only=True) "
            f"({type(err).__name__}); save it with torch.save(model.state_dict())"
        ) from err
    first = "features.0.weight"  # any prefix before it (``module.``) is dropped
    unwrapped = unwrap_state_dict(obj, first)
    if unwrapped is None:
        raise ValueError(f"lpips.backbone: {path} is not a torchvision {_ARCH[net]} state dict")
    return unwrapped[0]


def _load_backbone(model: Any, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy torchvision's ``features.N.*`` into lpips' ``net.sliceK.N.*``; every conv must get
    both its weight and its bias, with the right shapes."""
    n = 0
    for slice_ in model.net.children():
        for index, layer in slice_.named_children():
            if not isinstance(layer, nn.Conv2d):
                continue
            for name, tensor in (("weight", layer.weight), ("bias", layer.bias)):
                key = f"features.{index}.{name}"
                if key not in state or state[key].shape != tensor.shape:
                    got = tuple(state[key].shape) if key in state else "missing"
                    raise ValueError(
                        f"lpips.backbone: {where} does not fit torchvision's "
                        f"{_ARCH[model.pnet_type]}: {key} is {got}, expected {tuple(tensor.shape)}"
                    )
                with torch.no_grad():
                    tensor.copy_(state[key])
            n += 1
    log.info("LPIPS: %d backbone convolutions loaded from %s", n, where)


def warn_if_unpublished(config: LPIPSConfig) -> None:
    """Warn that a random backbone is not the published LPIPS (said once per sweep or call)."""
    if config.backbone == "random":
        log.warning("%s: for tests and offline smoke runs only", config.label)


def make_lpips(
    config: LPIPSConfig, device: str | torch.device = "cpu", *, quiet: bool = False
) -> LPIPS:
    """The LPIPS metric ``config`` asks for, frozen, in eval mode, on ``device``; a random
    backbone is announced as a warning unless ``quiet`` (a sweep announces it once, not in
    every actor).

    Raises:
        WeightsUnavailableError: ``backbone: imagenet`` and the weights are neither in torch's
            hub cache nor downloadable.
    """
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(RANDOM_SEED)  # the random backbone; others are overwritten below
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*")
        import lpips  # imports torchvision: not at aipray's import

        net = lpips.LPIPS(net=config.net, pretrained=True, pnet_rand=True, verbose=False)
    if config.backbone == "imagenet":
        state = _imagenet_state(config.net, config.download)
        _load_backbone(net, state, imagenet_backbone_file(config.net).name)
    elif (path := config.backbone_path) is not None:
        _load_backbone(net, _file_state(path, config.net), str(path))
    if not quiet:
        warn_if_unpublished(config)
    metric = LPIPS(net, config).to(device).eval()
    return metric.requires_grad_(False)


def feature_loss(clean_features: torch.Tensor, adv_features: torch.Tensor) -> torch.Tensor:
    """Perceptual-Rec's feature loss (FL): mean squared difference per item between the
    extractor's features of the clean and of the attacked image, ``[B, D]`` (or ``[B, ...]``)
    → ``[B]``."""
    return (adv_features - clean_features).pow(2).flatten(1).mean(1)
