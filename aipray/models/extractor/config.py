"""The extractor's settings and its architecture spec: :class:`ExtractorConfig` (the sweep YAML's
``extractor`` section), the file-format constants and :func:`make_spec`, the JSON-able dict from
which :func:`~aipray.models.extractor.network.build_extractor` rebuilds an extractor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aipray.data.titles import TITLE_DROP
from aipray.params import Settings, param
from aipray.store import file_sha256

ARCHS = ("alexnet", "resnet50", "vit")
TRAININGS = ("standard", "adversarial", "free")
SPEC_VERSION = 1
CHECKPOINT_FORMAT = "aipray-extractor"
MODEL_FILE = "model.pt"
#: weights trained in this process: on the catalog's categories, or on the surrogate "ImageNet"
#: (its classes, or CLIP-style on its image–title pairs)
IN_PROCESS = ("pretrain", "surrogate", "clip")
#: the in-process weights trained on the surrogate set
ON_SURROGATE = ("surrogate", "clip")
#: bumped when the surrogate pretraining set's drawing changes
SURROGATE_VERSION = 1
#: bumped when what CLIP-style pretraining does changes
CLIP_VERSION = 1
META_FILE = "model.json"


@dataclass(frozen=True)
class ExtractorConfig(Settings):
    """The feature extractor of the sweep YAML's ``extractor`` section.

    ``arch``: network layout: ``alexnet`` (features: fc7 after ReLU), ``resnet50`` (the global
    average pool) or ``vit`` (torchvision's ``VisionTransformer``; features: the class token after
    the encoder's last layer norm, before the classification head: the pre-logits). ``weights``:
    ``pretrain`` (train on the item categories in-process), ``surrogate`` (on the surrogate
    "ImageNet"'s classes, :mod:`aipray.data.surrogate`), ``clip`` (CLIP-style on the surrogate
    set's image–title pairs, with a text tower: :mod:`~aipray.models.extractor.text`; ``text_dim``
    the shared space, ``text_width`` the token embeddings, ``title_drop`` the titles' noise),
    ``imagenet`` (torchvision's ImageNet weights) or the path of a local checkpoint (file or
    folder written by :func:`save_extractor`, a torchvision state dict, or one of the published
    robust ResNet50s: MadryLab's ``imagenet_linf_4.pt``, Free-AT's ``model_best.pth.tar``).
    ``download``: whether missing ImageNet weights may be downloaded into torch's hub cache.
    ``input_size``: side the extractor resizes images to (0: 224 for ImageNet weights and
    torchvision checkpoints, the catalog's image size, i.e. no resizing, for ``pretrain``).
    ``preprocess``: ``resize`` stretches the whole image to the input size; ``resize_crop`` is
    torchvision's evaluation preset (shorter side to 256/224 of the input size, then the centre
    crop). ``width``: layer-width multiplier of an in-process network: AlexNet's layers, or
    ViT-B/16's widths with the head size kept at 64 (``round(12·width)`` heads, at least one; hidden
    size 64 per head, MLP 4× hidden: 0.25 is DeiT-Ti's 192, 0.5 DeiT-S's 384, 0.125 two heads and
    128). ``vit_patch``, ``vit_depth``: patch side in pixels (it must divide the image side) and
    number of encoder blocks of an in-process ViT. With ``weights: imagenet`` or a torchvision
    checkpoint, ``vit`` is torchvision's ``vit_b_16`` (768-d features, input 224 px only).
    ``epochs``, ``lr``, ``batch_size``: in-process pretraining; ``weight_decay`` > 0 trains with
    AdamW (decoupled weight decay, Loshchilov & Hutter, ICLR 2019) instead of Adam, ``warmup`` > 0
    raises the learning rate linearly over that many epochs and then decays it to zero along a
    cosine (0: a constant learning rate); both 0 is the recipe of before the settings.

    ``training`` (a sweep axis: Perceptual-Rec's defended extractors, Anelli et al.):
    ``standard`` (cross-entropy on clean images), ``adversarial`` (Madry et al., ICLR 2018: PGD
    L∞ adversarial training) or ``free`` (Shafahi et al., NeurIPS 2019: Free Adversarial
    Training). With ``weights: pretrain`` a robust ``training`` trains robustly in-process
    (:func:`~aipray.models.extractor.robust.fit_robust_classifier`); with a checkpoint path it
    declares how the checkpoint was trained (``imagenet_linf_4.pt`` is ``adversarial``,
    ``model_best.pth.tar`` is ``free``) and is recorded; ``imagenet`` weights are ``standard``.
    ``adv_eps``: the L∞ bound in 0..255 pixel units (Perceptual-Rec's defences: 4).
    ``adv_steps``/``adv_step_size``: the PGD of Madry training, and of the held-out robustness
    check of both methods (default 7 steps, the ``robustness`` library's ``--attack-steps``
    default and Madry et al.'s CIFAR-10 recipe; step ``null`` = 2.5·ε/steps, the rule MadryLab's
    ``robustness`` library uses). ``free_replays``: Free-AT's ``m`` (4, the
    Perceptual-Rec defence and Free-AT's ImageNet setting); its step is ε (Free-AT's ImageNet
    setting) and it runs ``ceil(epochs / m)`` epochs.
    """

    arch: str = param("alexnet", choices=ARCHS)
    weights: str = param("pretrain", doc="pretrain, surrogate, clip, imagenet or a checkpoint path")
    download: bool = param(True)
    input_size: int = param(0, min=0, max=1024)
    preprocess: str = param("resize", choices=("resize", "resize_crop"))
    width: float = param(1.0, min=0.01)
    epochs: int = param(10, min=1)
    lr: float = param(1e-3, min=0)
    batch_size: int = param(64, min=1)
    weight_decay: float = param(0.0, min=0, doc="> 0: AdamW with this decoupled weight decay")
    warmup: int = param(0, min=0, doc="epochs of linear warm-up, then cosine decay; 0: constant")
    vit_patch: int = param(4, min=1, doc="patch side of an in-process ViT, in pixels")
    vit_depth: int = param(6, min=1, doc="encoder blocks of an in-process ViT")
    training: str = param("standard", choices=TRAININGS, axis=True)
    adv_eps: float = param(4.0, min=0, max=255, doc="L∞ bound in 0..255 pixel units")
    adv_steps: int = param(7, min=1)
    adv_step_size: float | None = param(None, min=0, doc="pixel units; null: 2.5·eps/steps")
    free_replays: int = param(4, min=1)
    surrogate_per_class: int = param(30, min=2, doc="images per class of the surrogate set")
    surrogate_clutter: int = param(3, min=0, doc="most distractor blobs per surrogate image")
    text_dim: int = param(64, min=1, keyed_at_default=False, doc="clip: the shared space")
    text_width: int = param(64, min=1, keyed_at_default=False, doc="clip: token embeddings")
    title_drop: float = param(
        TITLE_DROP, min=0, max=0.95, keyed_at_default=False, doc="clip: title words left out"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # A checkpoint path is made absolute so that workers with another working folder find it.
        if self.weights not in (*IN_PROCESS, "imagenet") and self.weights:
            object.__setattr__(self, "weights", str(Path(self.weights).expanduser().resolve()))

    @property
    def weights_path(self) -> Path | None:
        """The checkpoint path, or ``None`` for in-process weights and ``imagenet``."""
        return None if self.weights in (*IN_PROCESS, "imagenet") else Path(self.weights)

    def adv_step(self) -> float:
        """PGD's step in 0..255 pixel units: ``adv_step_size``, or 2.5·ε/steps."""
        if self.adv_step_size is not None:
            return self.adv_step_size
        return 2.5 * self.adv_eps / self.adv_steps

    def cross_checks(self) -> list[tuple[str, object, str]]:
        """``(key, value, allowed)`` for each constraint between fields that fails."""
        bad: list[tuple[str, object, str]] = []
        if 0 < self.input_size < 16:
            bad.append(("input_size", self.input_size, "0 (automatic) or an integer in 16..1024"))
        if (
            self.arch == "vit"
            and self.weights not in IN_PROCESS
            and self.input_size not in (0, 224)
        ):
            bad.append(
                (
                    "input_size",
                    self.input_size,
                    "0 or 224 with arch vit and ImageNet or checkpoint weights (vit_b_16's "
                    "position embeddings are for 224 px)",
                )
            )
        if self.weights == "imagenet" and self.training != "standard":
            bad.append(
                (
                    "training",
                    self.training,
                    "standard with weights: imagenet (torchvision's ImageNet weights are "
                    "standardly trained; for a robust extractor give weights: pretrain, or the "
                    "path of a robust checkpoint such as imagenet_linf_4.pt)",
                )
            )
        if self.weights == "clip" and self.training != "standard":
            bad.append(("training", self.training, "standard with weights: clip"))
        if self.weights in IN_PROCESS and self.training != "standard" and self.adv_eps == 0:
            bad.append(
                ("adv_eps", self.adv_eps, f"a number in (0, 255] with {self.training} training")
            )
        return bad

    def file_checks(self) -> list[tuple[str, object, str]]:
        """The checkpoint ``weights`` names must exist (run by the sweep parser)."""
        bad: list[tuple[str, object, str]] = []
        path = self.weights_path
        expected = (
            "pretrain, surrogate, clip, imagenet or the path of an existing checkpoint file or "
            "extractor folder"
        )
        if not self.weights:
            bad.append(("weights", self.weights, expected))
        elif path is not None and not path.exists():
            bad.append(("weights", self.weights, expected))
        elif path is not None and path.is_dir() and not (path / MODEL_FILE).is_file():
            bad.append(("weights", self.weights, f"a folder holding {MODEL_FILE} (save_extractor)"))
        return bad

    def fingerprint(self) -> dict[str, Any]:
        """What determines the extractor's weights, for cache keys: the fields that matter for
        this ``weights`` source, plus the SHA-256 of a checkpoint file (so a replaced file with
        the same name is not mistaken for the old one). ``download`` never matters. A robust
        ``training`` adds itself and, for ``pretrain``, its settings (ε, steps and the resolved
        step, which also set the recorded held-out robustness, plus ``m`` for ``free``);
        ``standard`` adds no key, so standard fingerprints are those of before the setting."""
        out: dict[str, Any] = {"arch": self.arch, "weights": self.weights}
        out.update(input_size=self.input_size, preprocess=self.preprocess)
        if self.weights in IN_PROCESS:
            out.update(width=self.width, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)
            # Keys that existed before are kept as they were: new ones only where they matter.
            if self.weight_decay:
                out["weight_decay"] = self.weight_decay
            if self.warmup:
                out["warmup"] = self.warmup
            if self.arch == "vit":
                out.update(vit_patch=self.vit_patch, vit_depth=self.vit_depth)
        if self.weights in ON_SURROGATE:
            out.update(
                surrogate_per_class=self.surrogate_per_class,
                surrogate_clutter=self.surrogate_clutter,
                surrogate_version=SURROGATE_VERSION,
            )
        if self.weights == "clip":
            out.update(
                text_dim=self.text_dim,
                text_width=self.text_width,
                title_drop=self.title_drop,
                clip_version=CLIP_VERSION,
            )
        # Standard training adds nothing, so that existing cache keys stay valid.
        if self.training != "standard":
            out["training"] = self.training
            if self.weights in IN_PROCESS:
                out.update(adv_eps=self.adv_eps, adv_steps=self.adv_steps)
                out["adv_step_size"] = self.adv_step()
                if self.training == "free":
                    out["free_replays"] = self.free_replays
        path = self.weights_path
        if path is not None:
            out["weights_sha256"] = file_sha256(path / MODEL_FILE if path.is_dir() else path)
        return out


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
    factors: Sequence[int] | None = None,
    patch_size: int = 4,
    depth: int = 6,
    text: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-able description from which :func:`build_extractor` rebuilds an extractor.

    Args:
        arch: ``alexnet``, ``resnet50`` or ``vit``.
        num_classes: outputs of the classifier head.
        layout: ``torchvision`` (the published network; for ``vit`` ``vit_b_16``, whose input
            size must be 224) or ``aipray`` (the width-scaled network for in-process weights:
            :class:`~aipray.models.nets.AlexNetClassifier` for ``alexnet``, a small torchvision
            ``VisionTransformer`` for ``vit``; not for ``resnet50``).
        input_size: ``S`` or ``(H, W)`` the module resizes every input to; ``None``: no resizing.
        preprocess: ``resize`` (stretch to the input size) or ``resize_crop`` (torchvision's
            evaluation preset: shorter side to ``256/224·S``, then the centre ``S × S`` crop).
        image_size: image side the ``aipray`` layout is adapted to (AlexNet's first convolution
            and pooling; the ViT's position embeddings, for inputs of exactly this side).
        width: layer-width multiplier of the ``aipray`` layout (for ``vit``: see
            :class:`ExtractorConfig`).
        labels: what the classes are: ``imagenet1k``, ``surrogate`` (the fine classes of the
            surrogate pretraining set, :mod:`aipray.data.surrogate`), ``categories`` (catalog
            item categories, named by ``class_names``) or ``unknown``.
        class_names: one name per class (``labels="categories"`` or ``"surrogate"``).
        factors: the ``aipray`` layout's classifier is a
            :class:`~aipray.models.nets.FactorisedHead` over attributes of these sizes (their
            product is ``num_classes``); ``None``: one linear layer.
        patch_size, depth: the ``aipray`` ViT's patch side (it must divide ``image_size``) and
            number of encoder blocks; ignored otherwise.
        text: the ``aipray`` layout's classifier is a CLIP head with a text tower
            (:class:`~aipray.models.extractor.text.ClipHead`): ``vocab``, ``width``, ``dim``,
            ``max_len`` and ``class_titles`` (one title per class, its zero-shot prompt).
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
            raise ValueError(f"the aipray {arch} layout needs image_size")
        spec.update(image_size=int(image_size), width=float(width))
        if arch == "vit":
            spec.update(patch_size=int(patch_size), depth=int(depth))
    if factors is not None:
        spec["factors"] = [int(f) for f in factors]
    if text is not None:
        spec["text"] = {
            "vocab": [str(w) for w in text["vocab"]],
            "width": int(text["width"]),
            "dim": int(text["dim"]),
            "max_len": int(text["max_len"]),
            "class_titles": [str(t) for t in text.get("class_titles") or []],
        }
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
    if spec["layout"] == "aipray" and spec["arch"] == "resnet50":
        raise ValueError("extractor spec: the aipray layout exists only for arch alexnet and vit")
    if spec["arch"] == "vit":
        _check_vit_spec(spec)
    if int(spec.get("num_classes", 0)) < 1:
        raise ValueError(f"extractor spec: num_classes {spec.get('num_classes')!r}; expected >= 1")
    if spec.get("preprocess") not in ("resize", "resize_crop"):
        raise ValueError(f"extractor spec: preprocess {spec.get('preprocess')!r}")
    factors = spec.get("factors")
    if factors is not None:
        product = math.prod(int(f) for f in factors)
        if spec["layout"] != "aipray" or product != int(spec["num_classes"]):
            raise ValueError(
                f"extractor spec: factors {factors!r} need the aipray layout and a product of "
                f"num_classes = {spec['num_classes']}"
            )
    text = spec.get("text")
    if text is not None:
        titles = text.get("class_titles") or []
        if spec["layout"] != "aipray" or factors is not None:
            raise ValueError("extractor spec: a text tower needs the aipray layout and no factors")
        if len(titles) != int(spec["num_classes"]):
            raise ValueError(
                f"extractor spec: {len(titles)} class titles for {spec['num_classes']} classes"
            )
    names = spec.get("class_names")
    if names is not None and len(names) != spec["num_classes"]:
        raise ValueError(
            f"extractor spec: {len(names)} class names for {spec['num_classes']} classes"
        )


def _check_vit_spec(spec: dict[str, Any]) -> None:
    """A ViT reads inputs of exactly the side its position embeddings were made for."""
    side = 224 if spec["layout"] == "torchvision" else int(spec.get("image_size", 0))
    size = spec.get("input_size")
    if (size is not None and list(size) != [side, side]) or (size is None and side == 224):
        raise ValueError(
            f"extractor spec: input_size {size!r}; a {spec['layout']} vit reads {side}×{side} "
            "inputs only"
        )
    if spec["layout"] == "aipray":
        patch, depth = int(spec.get("patch_size", 0)), int(spec.get("depth", 0))
        if patch < 1 or depth < 1 or side % patch:
            raise ValueError(
                f"extractor spec: vit patch_size {patch} and depth {depth}; expected a patch side "
                f"that divides the image side {side} and at least one block "
                "(extractor.vit_patch, extractor.vit_depth)"
            )
