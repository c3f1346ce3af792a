"""Datasets: loaders that produce a :class:`~aipray.data.catalog.Catalog`."""

from __future__ import annotations

from typing import Any, ClassVar

from aipray.data.catalog import Catalog
from aipray.data.synthetic import SyntheticConfig, make_synthetic
from aipray.registry import Registry


class Dataset:
    name: ClassVar[str]
    Config: ClassVar[type]

    @staticmethod
    def build(config: Any, name: str) -> Catalog:
        raise NotImplementedError


DATASETS: Registry[Dataset] = Registry("dataset")


@DATASETS.register("synthetic")
class Synthetic(Dataset):
    """The embedded synthetic visual marketplace (no download)."""

    Config = SyntheticConfig

    @staticmethod
    def build(config: SyntheticConfig, name: str) -> Catalog:
        return make_synthetic(config, name=name)


__all__ = ["DATASETS", "Catalog", "Dataset"]
