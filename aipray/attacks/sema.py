"""SEMA, AIP's semantic attacks: images changed the way a seller could change them, without any
knowledge of the models.

- c-SEMA (composition): a resized copy of the popular hook item is pasted as an inset on the right
  of the item's image, with a short caption (AIP Figure 3: a shirt with the hook jeans and "match
  your jeans").
- ``provided``: adversarial images someone made elsewhere (n-SEMA photographs of both items taken
  by hand, or another tool's output) evaluated exactly like computed ones; or an image set a
  sweep stored, re-evaluated against another defence or model without re-attacking.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageDraw, ImageFont

from aipray.attacks.base import ATTACKS, Attack, AttackInputs
from aipray.params import Settings, param
from aipray.pixels import to_float, to_uint8
from aipray.store import file_sha256


@dataclass(frozen=True)
class CSEMAConfig(Settings):
    """scale: inset width as a fraction of the image width; caption: text under the inset (empty
    for none); hook: item id of the pasted item, ``None`` = the most-interacted training item."""

    scale: float = param(0.4, min=0.05, max=0.9)
    caption: str = "match it with"
    hook: int | None = param(None, min=0)


@cache
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def compose(item: Image.Image, hook: Image.Image, scale: float, caption: str) -> Image.Image:
    """``item`` with ``hook`` as a framed inset on the right, vertically centred, and ``caption``
    above it, clipped to the picture. Both are RGB; the result has ``item``'s size."""
    w, h = item.size
    inset_w = max(2, round(scale * w))
    inset_h = max(2, round(inset_w * hook.height / hook.width))
    if inset_h > h - 2:
        inset_h = h - 2
        inset_w = max(2, round(inset_h * hook.width / hook.height))
    margin = max(1, w // 32)
    x0, y0 = w - inset_w - margin, (h - inset_h) // 2
    out = item.copy()
    draw = ImageDraw.Draw(out)
    draw.rectangle((x0 - 1, y0 - 1, x0 + inset_w, y0 + inset_h), outline=(40, 40, 40))
    out.paste(hook.resize((inset_w, inset_h), Image.BILINEAR), (x0, y0))
    if caption:
        font = _font(max(6, h // 14))
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        tx = max(0, min(x0 + (inset_w - (right - left)) // 2, w - (right - left)))
        ty = max(0, y0 - (bottom - top) - 2 * margin)
        draw.text((tx - left, ty - top), caption, fill=(20, 20, 20), font=font)
    return out


def _batch_like(arrays: list[np.ndarray], images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` arrays → float ``[B, 3, H, W]`` in [0, 1] on ``images``' device."""
    if not arrays:
        return images.detach().clone()
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return to_float(batch, images.device)


def _to_pil(image: torch.Tensor) -> Image.Image:
    arr = to_uint8(image).permute(1, 2, 0)
    return Image.fromarray(arr.cpu().numpy())


@ATTACKS.register("csema")
class CSEMA(Attack):
    """c-SEMA: paste the hook item next to the product, with a caption (AIP §3.3)."""

    Config = CSEMAConfig
    knowledge = "none"

    def __init__(self, config: CSEMAConfig, model, inputs: AttackInputs) -> None:
        super().__init__(config, model, inputs)
        if inputs.hook_image is None:
            raise ValueError("c-SEMA needs the hook item's image")
        self.hook = _to_pil(inputs.hook_image)

    def __call__(self, images: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        out = [
            np.asarray(compose(_to_pil(img), self.hook, cfg.scale, cfg.caption)) for img in images
        ]
        return _batch_like(out, images)


@dataclass(frozen=True)
class ProvidedConfig(Settings):
    """path: a folder of ``<item id>.png`` images (lossless formats keep perturbations intact;
    JPEG is read too), item ids as in the prepared catalog; or an image set a sweep stored
    (``<storage>/attacks/<attack>-<key>/``, whose :data:`STORED_SET` holds each item's raw
    adversarial image and ``provenance.json`` says how it was made). Only the cold items with an
    image there are evaluated; each image must have the catalog's image size."""

    path: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        # absolute, so that Ray workers with another working folder find it
        if self.path:
            object.__setattr__(self, "path", str(Path(self.path).expanduser().resolve()))

    def file_checks(self) -> list[tuple[str, object, str]]:
        folder = Path(self.path)
        if not self.path or not folder.is_dir():
            return [("path", self.path, "an existing folder of <item id>.png images")]
        return []


IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
#: the file of a stored image set (written by :mod:`aipray.protocol.cold_items`): ``item_id``,
#: ``image`` and ``adv``, raw uint8 ``[3, H, W]`` bytes
STORED_SET = "adv.parquet"


def stored_set(folder: str | Path) -> Path | None:
    """The stored image set's file in ``folder``, or ``None`` where it is a folder of images."""
    path = Path(folder) / STORED_SET
    return path if path.is_file() else None


def stored_images(path: Path) -> dict[int, bytes]:
    """Item id → raw uint8 ``[3, H, W]`` bytes of the adversarial images of a stored set."""
    table = pq.read_table(path, columns=["item_id", "adv"])
    ids = table.column("item_id").to_pylist()
    return dict(zip(ids, table.column("adv").to_pylist(), strict=True))


def provided_files(folder: str | Path) -> dict[int, Path]:
    """Item id → image file in ``folder`` (files whose stem is not an integer are ignored)."""
    files: dict[int, Path] = {}
    for f in sorted(Path(folder).iterdir()):
        if f.suffix.lower() in IMAGE_SUFFIXES and f.stem.isdigit():
            files[int(f.stem)] = f
    return files


@ATTACKS.register("provided")
class Provided(Attack):
    """Evaluate images supplied by the user (n-SEMA photographs, other tools' output) or a stored
    image set (:data:`STORED_SET`): the same numbers as the trial that made it, under its defence
    and ranker, and any other defence's or ranker's, with no attack run."""

    Config = ProvidedConfig
    knowledge = "none"

    def __init__(self, config: ProvidedConfig, model, inputs: AttackInputs) -> None:
        super().__init__(config, model, inputs)
        stored = stored_set(config.path)
        self.stored = stored_images(stored) if stored is not None else None
        self.files = provided_files(config.path) if stored is None else {}

    @classmethod
    def fingerprint(cls, config: ProvidedConfig) -> list[tuple[object, str]]:
        """SHA-256 of the stored set, or item id and SHA-256 of every provided image: a changed
        or added file is new work."""
        stored = stored_set(config.path)
        if stored is not None:
            return [(STORED_SET, file_sha256(stored))]
        return [(item, file_sha256(path)) for item, path in provided_files(config.path).items()]

    @classmethod
    def restrict(cls, config: ProvidedConfig, item_ids):
        stored = stored_set(config.path)
        have = stored_images(stored) if stored is not None else provided_files(config.path)
        return [i for i in item_ids if int(i) in have]

    def __call__(self, images: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        if item_ids is None:
            raise ValueError("the provided attack needs the item ids of the batch")
        pairs = zip(images, item_ids.tolist(), strict=True)
        return _batch_like([self._image(img, int(item)) for img, item in pairs], images)

    def _image(self, img: torch.Tensor, item: int) -> np.ndarray:
        """The provided image of ``item`` as uint8 ``[H, W, 3]``, checked against ``img``."""
        if self.stored is not None:
            raw = self.stored.get(item)
            if raw is None:
                raise ValueError(f"attacks.provided.path: the stored set has no image of {item}")
            arr = np.frombuffer(raw, dtype=np.uint8)
            if arr.size != img.numel():
                raise ValueError(
                    f"attacks.provided.path: the stored image of item {item} has {arr.size} "
                    f"values, the catalog's images {img.numel()} ({'x'.join(map(str, img.shape))})"
                )
            return arr.reshape(img.shape).transpose(1, 2, 0)
        path = self.files.get(item)
        if path is None:
            raise ValueError(f"attacks.provided.path: no image for cold item {item}")
        arr = np.asarray(Image.open(path).convert("RGB"))
        if arr.shape[:2] != tuple(img.shape[1:]):
            raise ValueError(
                f"attacks.provided.path: {path.name} is {arr.shape[1]}x{arr.shape[0]}, "
                f"the catalog's images are {img.shape[2]}x{img.shape[1]}"
            )
        return arr
