"""Presets of the dataset folder (:mod:`aipray.data.folder`): published datasets' file names,
k-core and the counts their preparation is checked against (:data:`~aipray.data.folder.
EXPECTED_COUNTS`)."""

from __future__ import annotations

from dataclasses import dataclass

from aipray.data.folder import COUNT_CHOICES, FolderConfig
from aipray.params import param


@dataclass(frozen=True)
class AmazonMen5CoreConfig(FolderConfig):
    """Perceptual-Rec's Amazon Men: 5-core, time-aware leave-one-out, no cold items; checked
    against 24,379 users, 7,371 items, 89,020 interactions (set ``n_cold`` to run AIP on it)."""

    path: str = param("data/amazon_men", doc="the sisinflab Amazon Men folder")
    k_core: int = param(5, min=1, doc="k-core filter: users and items keep >= k interactions")
    n_cold: int = param(0, min=0, doc="cold items (Perceptual-Rec: none)")
    expected_counts: str = param(
        "amazon_men_5core", choices=COUNT_CHOICES, doc="counts checked (EXPECTED_COUNTS)"
    )


@dataclass(frozen=True)
class AmazonWomen10CoreConfig(FolderConfig):
    """Perceptual-Rec's Amazon Women: 10-core, time-aware leave-one-out, no cold items; checked
    against 16,668 users, 2,981 items, 54,473 interactions (set ``n_cold`` to run AIP on it)."""

    path: str = param("data/amazon_women", doc="the sisinflab Amazon Women folder")
    k_core: int = param(10, min=1, doc="k-core filter: users and items keep >= k interactions")
    n_cold: int = param(0, min=0, doc="cold items (Perceptual-Rec: none)")
    expected_counts: str = param(
        "amazon_women_10core", choices=COUNT_CHOICES, doc="counts checked (EXPECTED_COUNTS)"
    )


@dataclass(frozen=True)
class MMRecBabyConfig(FolderConfig):
    """MMRec's Amazon Baby (``baby.inter``, its images laid out by ``scripts/mmrec_folder.py``):
    5-core, time-aware leave-one-out; checked against 19,445 users, 7,050 items, 160,792
    interactions."""

    path: str = param("data/mmrec/baby", doc="the folder scripts/mmrec_folder.py writes")
    interactions: str = param("baby.inter", doc="interactions file name inside path")
    columns: str = param("userID,itemID,timestamp", doc="MMRec's column names")
    expected_counts: str = param("mmrec_baby", choices=COUNT_CHOICES, doc="counts checked")


@dataclass(frozen=True)
class MMRecSportsConfig(FolderConfig):
    """MMRec's Amazon Sports (``sports.inter``): as :class:`MMRecBabyConfig`; checked against
    35,598 users, 18,357 items, 296,337 interactions."""

    path: str = param("data/mmrec/sports", doc="the folder scripts/mmrec_folder.py writes")
    interactions: str = param("sports.inter", doc="interactions file name inside path")
    columns: str = param("userID,itemID,timestamp", doc="MMRec's column names")
    expected_counts: str = param("mmrec_sports", choices=COUNT_CHOICES, doc="counts checked")


@dataclass(frozen=True)
class MMRecClothingConfig(FolderConfig):
    """MMRec's Amazon Clothing (``clothing.inter``): as :class:`MMRecBabyConfig`; checked
    against 39,387 users, 23,033 items, 278,677 interactions."""

    path: str = param("data/mmrec/clothing", doc="the folder scripts/mmrec_folder.py writes")
    interactions: str = param("clothing.inter", doc="interactions file name inside path")
    columns: str = param("userID,itemID,timestamp", doc="MMRec's column names")
    expected_counts: str = param("mmrec_clothing", choices=COUNT_CHOICES, doc="counts checked")
