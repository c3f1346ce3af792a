"""The catalog every stage works from: users, items, the leave-one-out split, cold items, images."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: the file of a stored catalog's titles (a JSON list, one string per item)
TITLES_FILE = "titles.json"


@dataclass(frozen=True)
class Catalog:
    """Interactions and images of one dataset, split for the AIP cold-start protocol.

    Attributes:
        name: dataset name as in the sweep YAML.
        train_users, train_items: the training interactions as parallel int64 arrays.
        val_items, test_items: ``[n_users]`` one held-out item per user (leave-one-out).
        cold_items: items whose every interaction was removed; only ever injected as cold items.
        categories: ``[n_items]`` product category per item, ``-1`` where unknown.
        images: ``[n_items, 3, H, W]`` uint8 RGB (may be a read-only memmap; a real dataset's
            is a memmap of ``images.npy`` in the folder it is being prepared in).
        category_names: name of each category id.
        titles: one short title per item (the text modality), or ``None`` when the dataset has
            none; saved in ``titles.json``.
        info: how the catalog was made (source counts, excluded images, the cold-item rule and
            seed); JSON-able, saved in ``catalog.json`` and merged into :func:`summary`.
    """

    name: str
    train_users: np.ndarray
    train_items: np.ndarray
    val_items: np.ndarray
    test_items: np.ndarray
    cold_items: np.ndarray
    categories: np.ndarray
    images: np.ndarray
    category_names: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    titles: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.titles is not None:
            object.__setattr__(self, "titles", tuple(str(t) for t in self.titles))
            if len(self.titles) != self.n_items:
                raise ValueError(f"{len(self.titles)} titles for {self.n_items} items")

    @property
    def n_users(self) -> int:
        return int(self.val_items.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def warm_mask(self) -> np.ndarray:
        """``[n_items]`` bool: True for items that may appear as candidates (not cold)."""
        mask = np.ones(self.n_items, dtype=bool)
        mask[self.cold_items] = False
        return mask

    def item_popularity(self) -> np.ndarray:
        """Number of training interactions per item."""
        return np.bincount(self.train_items, minlength=self.n_items)

    def most_popular_item(self) -> int:
        """The most-interacted training item (EXPA's default hook); ties go to the lower id."""
        return int(np.argmax(self.item_popularity()))

    def train_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Training items grouped by user: ``(indptr [n_users + 1], items)``."""
        order = np.argsort(self.train_users, kind="stable")
        counts = np.bincount(self.train_users, minlength=self.n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return indptr, self.train_items[order]

    # --- storage -------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write into ``directory`` (which the caller renames into place when complete)."""
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(
            directory / "interactions.npz",
            train_users=self.train_users,
            train_items=self.train_items,
            val_items=self.val_items,
            test_items=self.test_items,
            cold_items=self.cold_items,
            categories=self.categories,
        )
        target = directory / "images.npy"
        if not _is_file(self.images, target):
            np.save(target, np.ascontiguousarray(self.images))
        meta = {
            "name": self.name,
            "category_names": list(self.category_names),
            "info": self.info,
        }
        (directory / "catalog.json").write_text(json.dumps(meta, indent=2))
        if self.titles is not None:
            (directory / TITLES_FILE).write_text(json.dumps(list(self.titles)))

    @classmethod
    def load(cls, directory: Path | str) -> Catalog:
        directory = Path(directory)
        meta = json.loads((directory / "catalog.json").read_text())
        with np.load(directory / "interactions.npz") as arrays:
            parts = {k: arrays[k] for k in arrays.files}
        images = np.load(directory / "images.npy", mmap_mode="r")
        titles = directory / TITLES_FILE
        return cls(
            name=meta["name"],
            images=images,
            category_names=tuple(meta["category_names"]),
            info=meta.get("info", {}),
            titles=tuple(json.loads(titles.read_text())) if titles.is_file() else None,
            **parts,
        )


def _is_file(images: np.ndarray, path: Path) -> bool:
    """Whether ``images`` is already a memmap of the whole file ``path`` (nothing to write)."""
    filename = getattr(images, "filename", None)
    if not isinstance(images, np.memmap) or not filename or not path.is_file():
        return False
    if Path(filename).resolve() != path.resolve():
        return False
    on_disk = np.load(path, mmap_mode="r")
    return on_disk.shape == images.shape and on_disk.dtype == images.dtype


def summary(catalog: Catalog) -> dict[str, Any]:
    """A few numbers worth logging about a catalog, plus how it was made (``catalog.info``)."""
    pop = catalog.item_popularity()
    return {
        "n_users": catalog.n_users,
        "n_items": catalog.n_items,
        "n_cold": int(catalog.cold_items.size),
        "n_train": int(catalog.train_items.size),
        "top_item_interactions": int(pop.max()),
        "median_item_interactions": float(np.median(pop[catalog.warm_mask()])),
        **catalog.info,
    }
