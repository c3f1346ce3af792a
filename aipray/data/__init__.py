"""Datasets: loaders that produce a :class:`~aipray.data.catalog.Catalog`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from aipray.data.catalog import Catalog
from aipray.data.dvbpr import AmazonMenConfig, DVBPRConfig, TradesyConfig, load_dvbpr
from aipray.data.folder import FolderConfig, load_folder
from aipray.data.presets import (
    AmazonMen5CoreConfig,
    AmazonWomen10CoreConfig,
    MMRecBabyConfig,
    MMRecClothingConfig,
    MMRecSportsConfig,
)
from aipray.data.synthetic import SyntheticConfig, make_synthetic
from aipray.registry import Registry


class Dataset:
    """A dataset a sweep can name: a ``Config`` dataclass and how to build the catalog."""

    name: ClassVar[str]
    Config: ClassVar[type]
    #: whether items carry categories an extractor can be pretrained on (``weights: pretrain``)
    has_categories: ClassVar[bool] = False

    @staticmethod
    def build(config: Any, name: str, workdir: Path) -> Catalog:
        """Build the catalog. ``workdir`` is the (temporary) output folder the catalog is saved
        into; a loader may write ``workdir / "images.npy"`` itself and return a memmap of it, which
        :meth:`Catalog.save` then leaves in place."""
        raise NotImplementedError


DATASETS: Registry[Dataset] = Registry("dataset")


@DATASETS.register("synthetic")
class Synthetic(Dataset):
    """The embedded synthetic visual marketplace (no download)."""

    Config = SyntheticConfig
    has_categories = True

    @staticmethod
    def build(config: SyntheticConfig, name: str, workdir: Path) -> Catalog:
        """Generate the marketplace in memory (``workdir`` is not used)."""
        return make_synthetic(config, name=name)


class DVBPRRelease(Dataset):
    """A file of the DVBPR release; subclasses only name their default file (``Config``)."""

    @staticmethod
    def build(config: DVBPRConfig, name: str, workdir: Path) -> Catalog:
        """Decode the release into ``workdir`` (see :mod:`aipray.data.dvbpr`)."""
        return load_dvbpr(config, name, workdir)


@DATASETS.register("amazon_men")
class AmazonMen(DVBPRRelease):
    """Amazon Men from the DVBPR release (``AmazonMenWithImgPartitioned.npy``)."""

    Config = AmazonMenConfig


@DATASETS.register("tradesy")
class Tradesy(DVBPRRelease):
    """Tradesy.com from the DVBPR release (``TradesyImgPartitioned.npy``)."""

    Config = TradesyConfig


@DATASETS.register("folder")
class Folder(Dataset):
    """A folder: interactions TSV and ``images/<item>.jpg`` (see :mod:`aipray.data.folder`)."""

    Config = FolderConfig

    @staticmethod
    def build(config: FolderConfig, name: str, workdir: Path) -> Catalog:
        """Filter, split and decode the folder into ``workdir``."""
        return load_folder(config, name, workdir)


@DATASETS.register("amazon_men_5core")
class AmazonMen5Core(Folder):
    """Perceptual-Rec's Amazon Men folder: 5-core, time-aware leave-one-out, counts checked."""

    Config = AmazonMen5CoreConfig


@DATASETS.register("amazon_women_10core")
class AmazonWomen10Core(Folder):
    """Perceptual-Rec's Amazon Women folder: 10-core, time-aware leave-one-out, counts checked."""

    Config = AmazonWomen10CoreConfig


@DATASETS.register("mmrec_baby")
class MMRecBaby(Folder):
    """MMRec's Amazon Baby: ``baby.inter`` by column names, 5-core, counts checked."""

    Config = MMRecBabyConfig


@DATASETS.register("mmrec_sports")
class MMRecSports(Folder):
    """MMRec's Amazon Sports: ``sports.inter`` by column names, 5-core, counts checked."""

    Config = MMRecSportsConfig


@DATASETS.register("mmrec_clothing")
class MMRecClothing(Folder):
    """MMRec's Amazon Clothing: ``clothing.inter`` by column names, 5-core, counts checked."""

    Config = MMRecClothingConfig


__all__ = ["DATASETS", "Catalog", "Dataset"]
