"""A dataset folder: an interactions TSV plus ``images/<item>.jpg`` (sisinflab Amazon Men/Women).

The TSV has the columns ``user``, ``item`` and optionally ``timestamp``, tab-separated; ids may be
any strings. The first line is skipped as a header when its first two fields are column names
(``user``/``user_id``/``uid``/``reviewerID``..., ``item``/``item_id``/``iid``/``asin``...) or its
timestamp field is not a time while the second line's is. Timestamps may be numbers or dates.

Preparation, deterministic given the config:

1. repeated ``(user, item)`` pairs keep their earliest occurrence (time, then file order); items
   with no image file are excluded (counted as missing images);
2. k-core filtering (every user and item keeps ``>= k_core`` interactions), iterated until stable
   as in the sisinflab preprocessing (users and items below k removed round after round; the
   result, the largest such subset, does not depend on the order of removal);
3. the images of the remaining items are decoded once, resized to ``image_size`` (bicubic, RGB)
   and streamed into ``images.npy``; items whose image is corrupt or truncated are excluded and
   the k-core filter runs again (rows of items it removes are compacted out of the file); the
   resulting users, items and interactions are checked against :data:`EXPECTED_COUNTS` when
   ``expected_counts`` names an entry (a warning or an error, ``on_count_mismatch``);
4. ``n_cold`` cold items (none when 0, as in Perceptual-Rec) are drawn by
   :data:`~aipray.data.common.COLD_RULE` (seeded by ``seed``) among the remaining items and all
   their interactions are removed; users left with fewer than 3 interactions are dropped (no
   further k-core: the items keep their images);
5. time-aware leave-one-out: each user's last interaction is the test item, the second-to-last
   the validation item, the rest are for training (ties and missing timestamps: file order).

Users and items are numbered in the sorted order of their ids; ``source_ids.npz`` in the output
maps catalog ids back to the ids of the file.

A ``titles`` file (``item<TAB>title`` lines, tab-separated, an optional ``item<TAB>title`` header)
gives the items a second modality, read by multimodal rankers with a text tower; items it does not
name get the empty title.

The Perceptual-Rec datasets have presets (:mod:`aipray.data.presets`: ``AmazonMen5CoreConfig``,
``AmazonWomen10CoreConfig``): k-core 5 / 10, time-aware leave-one-out, no cold items, counts
checked against the paper's. So do the Amazon datasets of the multimodal recommenders (MMRec:
``MMRecBabyConfig``, ``MMRecSportsConfig``, ``MMRecClothingConfig``): MMRec's
``<name>.inter`` read by its column names (``columns``: ``userID``, ``itemID``, ``timestamp``),
5-core, counts checked against MMRec's; ``scripts/mmrec_folder.py`` lays out their images.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aipray.data.catalog import Catalog
from aipray.data.common import COLD_RULE, pick_cold, resolve
from aipray.data.images import compact_images, open_images, write_images
from aipray.params import Settings, param

log = logging.getLogger(__name__)

USER_HEADERS = {"user", "users", "user_id", "userid", "user id", "uid", "reviewerid", "reviewer_id"}
ITEM_HEADERS = {
    "item",
    "items",
    "item_id",
    "itemid",
    "item id",
    "iid",
    "asin",
    "product",
    "productid",
    "product_id",
}
IMAGE_DIR = "images"
IMAGE_SUFFIX = ".jpg"
#: A user needs a training, a validation and a test interaction.
MIN_USER_INTERACTIONS = 3

#: Users, items and interactions of the Perceptual-Rec datasets after k-core filtering (the
#: sisinflab releases; REFERENCE.md "Data"). A prepared folder is compared with these at the same
#: point: after the k-core filter and the exclusion of items without a usable image, before any
#: cold items are removed.
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "amazon_men_5core": {"users": 24_379, "items": 7_371, "interactions": 89_020},
    "amazon_women_10core": {"users": 16_668, "items": 2_981, "interactions": 54_473},
    # MMRec's 5-core Amazon 2014 subsets (its preprocessing notebook prints Sports'; FREEDOM's
    # and BM3's dataset tables give all three)
    "mmrec_baby": {"users": 19_445, "items": 7_050, "interactions": 160_792},
    "mmrec_sports": {"users": 35_598, "items": 18_357, "interactions": 296_337},
    "mmrec_clothing": {"users": 39_387, "items": 23_033, "interactions": 278_677},
}
NO_CHECK = "none"
COUNT_CHOICES = (NO_CHECK, *EXPECTED_COUNTS)
ON_MISMATCH = ("warn", "fail")


@dataclass(frozen=True)
class FolderConfig(Settings):
    """A dataset folder and how to prepare it (all fields may be set in the sweep YAML).

    ``path`` is required and resolved against the working directory when the config is built.
    """

    path: str = param("", doc="folder with the interactions TSV and images/<item>.jpg")
    interactions: str = param("interactions.tsv", doc="interactions file name inside path")
    columns: str = param(
        "",
        doc="user,item[,timestamp] header names to read from a file with a header row "
        "(empty: the first two or three columns, by position)",
    )
    k_core: int = param(5, min=1, doc="k-core filter: users and items keep >= k interactions")
    n_cold: int = param(1000, min=0, doc="cold items (AIP: 1000; 0: none, as in Perceptual-Rec)")
    image_size: int = param(224, min=16, doc="images are resized to image_size × image_size")
    seed: int = param(0, doc="seed of the cold-item draw")
    expected_counts: str = param(
        NO_CHECK,
        choices=COUNT_CHOICES,
        doc="check the k-core users/items/interactions against this entry of EXPECTED_COUNTS",
    )
    on_count_mismatch: str = param(
        "warn", choices=ON_MISMATCH, doc="when expected_counts differ: log a warning or fail"
    )
    titles: str = param(
        "",
        keyed_at_default=False,
        doc="item titles file inside path (item<TAB>title lines); empty: the items have none",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "path", resolve(self.path))

    def file_checks(self) -> list[tuple[str, object, str]]:
        """``(key, value, allowed)`` for each problem found before any work (missing files)."""
        layout = f"a folder holding {self.interactions!r} and {IMAGE_DIR}/<item>{IMAGE_SUFFIX}"
        if not self.path:
            return [("path", self.path, f"{layout} (required)")]
        root = Path(self.path)
        if not root.is_dir():
            return [("path", self.path, f"{layout}, but there is no such folder")]
        bad: list[tuple[str, object, str]] = []
        if not (root / self.interactions).is_file():
            bad.append(("interactions", self.interactions, f"the name of a file in {self.path}"))
        elif self.columns:
            names = [c.strip() for c in self.columns.split(",")]
            with open(root / self.interactions, encoding="utf-8") as handle:
                header = handle.readline().rstrip("\r\n").split("\t")
            if len(names) not in (2, 3) or not set(names) <= set(header):
                allowed = f"2 or 3 of the header names of {self.interactions}: {','.join(header)}"
                bad.append(("columns", self.columns, allowed))
        if not (root / IMAGE_DIR).is_dir():
            bad.append(("path", self.path, f"{layout}, but it has no {IMAGE_DIR}/ folder"))
        if self.titles and not (root / self.titles).is_file():
            bad.append(("titles", self.titles, f"the name of a file in {self.path}, or empty"))
        return bad


def check_counts(
    found: Mapping[str, int],
    expected: str,
    *,
    on_mismatch: str = "warn",
    where: str = "dataset",
) -> list[str]:
    """Compare ``found`` (``users``, ``items``, ``interactions``) with
    ``EXPECTED_COUNTS[expected]``.

    Returns one ``"users: 24,000 (expected 24,379)"`` line per difference (empty when all agree).
    On a difference, ``on_mismatch="warn"`` logs one warning, ``"fail"`` raises ``ValueError``.
    For a catalog prepared earlier, pass ``kcore_counts(catalog.info)``.
    """
    if expected not in EXPECTED_COUNTS:
        raise ValueError(
            f"expected counts {expected!r} are unknown; allowed: {', '.join(EXPECTED_COUNTS)}"
        )
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_mismatch: {on_mismatch!r}; allowed: {', '.join(ON_MISMATCH)}")
    want = EXPECTED_COUNTS[expected]
    diffs = [
        f"{key}: {int(found[key]):,} (expected {value:,})"
        for key, value in want.items()
        if int(found[key]) != value
    ]
    if diffs:
        message = (
            f"{where}: the prepared counts differ from {expected}: {'; '.join(diffs)}. Check "
            "that the folder holds that release, k_core, and the excluded items (missing or "
            "corrupt images)"
        )
        if on_mismatch == "fail":
            raise ValueError(message + "; or set on_count_mismatch: warn to go on")
        log.warning("%s", message)
    return diffs


def kcore_counts(info: Mapping[str, object]) -> dict[str, int]:
    """``users``, ``items``, ``interactions`` after the k-core filter, from a folder catalog's
    ``info`` (the numbers :data:`EXPECTED_COUNTS` is about)."""
    keys = {"users": "kcore_users", "items": "kcore_items", "interactions": "kcore_interactions"}
    missing = [k for k in keys.values() if k not in info]
    if missing:
        raise ValueError(
            f"catalog info lacks {', '.join(missing)}: it was not prepared from a folder"
        )
    return {name: int(info[key]) for name, key in keys.items()}  # type: ignore[call-overload]


def _is_header(first: list[str], second: list[str] | None) -> bool:
    if len(first) >= 2 and (
        first[0].strip().lower() in USER_HEADERS and first[1].strip().lower() in ITEM_HEADERS
    ):
        return True
    if len(first) >= 3 and second is not None and len(second) >= 3:
        return _parse_times(pd.Series([first[2]])) is None and (
            _parse_times(pd.Series([second[2]])) is not None
        )
    return False


def _parse_times(values: pd.Series) -> np.ndarray | None:
    """Timestamps as float64 (numbers, or dates as epoch seconds); ``None`` if unparseable."""
    stripped = values.str.strip()
    try:
        return pd.to_numeric(stripped, errors="raise").to_numpy(np.float64)
    except (ValueError, TypeError):
        pass
    try:
        times = pd.to_datetime(stripped, errors="raise", utc=True, format="mixed")
    except (ValueError, TypeError, OverflowError):
        return None
    return (times - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(np.float64)


#: how the interactions TSV is read: strings as they are (quoting 3 = csv.QUOTE_NONE: ids are
#: taken literally), no NaN for empty fields
TSV: dict[str, Any] = dict(
    sep="\t", dtype=str, keep_default_na=False, skip_blank_lines=True, quoting=3
)


def read_interactions(path: Path, columns: str = "") -> pd.DataFrame:
    """The TSV as ``user`` (str), ``item`` (str), ``time`` (float64, NaN without timestamps) in
    file order, header skipped; with ``columns`` (``"user,item[,time]"`` header names) those
    columns of a file with a header row, whatever else it holds."""
    if columns:
        names = [c.strip() for c in columns.split(",")]
        frame = pd.read_csv(path, **TSV)
        missing = [n for n in names if n not in frame.columns]
        if missing or len(names) not in (2, 3):
            raise ValueError(
                f"{path}: columns {columns!r}: expected 2 or 3 of its header names "
                f"{','.join(map(str, frame.columns))}"
            )
        frame = frame[names].set_axis(range(len(names)), axis=1)
        return _as_interactions(path, frame)
    frame = pd.read_csv(path, header=None, **TSV)
    if frame.shape[1] not in (2, 3):
        raise ValueError(
            f"{path}: {frame.shape[1]} columns; expected 2 or 3 tab-separated columns "
            "(user, item[, timestamp])"
        )
    rows = frame.to_numpy()
    if len(rows) and _is_header(list(rows[0]), list(rows[1]) if len(rows) > 1 else None):
        log.info("%s: skipping header line %s", path.name, "\t".join(rows[0]))
        frame = frame.iloc[1:].reset_index(drop=True)
    return _as_interactions(path, frame)


def _as_interactions(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Columns 0, 1 (and 2) of ``frame`` (str) as ``user``, ``item``, ``time``."""
    out = pd.DataFrame({"user": frame[0].str.strip(), "item": frame[1].str.strip()})
    if frame.shape[1] == 3:
        times = _parse_times(frame[2])
        if times is None:
            raise ValueError(f"{path}: the third column is not a timestamp (number or date)")
        out["time"] = times
    else:
        out["time"] = np.nan
    empty = (out["user"] == "") | (out["item"] == "")
    if empty.any():
        raise ValueError(f"{path}: {int(empty.sum())} lines have an empty user or item id")
    return out


def k_core(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Keep interactions whose user and item both have ``>= k`` of them, iterated until stable."""
    while True:
        user_n = frame.groupby("user")["item"].transform("size")
        item_n = frame.groupby("item")["user"].transform("size")
        keep = (user_n >= k) & (item_n >= k)
        if keep.all():
            return frame
        frame = frame[keep]


def read_titles(path: Path, items: np.ndarray) -> tuple[str, ...]:
    """The title of each of ``items`` (source ids, in catalog order) from ``path``: one
    ``item<TAB>title`` line per item (a first line ``item<TAB>title`` is a header); an item
    without a line gets the empty title, a repeated item keeps its first line."""
    frame = pd.read_csv(
        path,
        sep="\t",
        header=None,
        names=["item", "title"],
        dtype=str,
        keep_default_na=False,
        quoting=3,
    )
    if len(frame) and frame["item"].iloc[0].strip().lower() in ITEM_HEADERS:
        frame = frame.iloc[1:]
    titles = frame.drop_duplicates("item").set_index("item")["title"]
    found = titles.reindex(pd.Index(items.astype(str))).fillna("")
    missing = int((found == "").sum())
    if missing:
        log.warning("%s: %d of %d items have no title", path.name, missing, items.size)
    return tuple(found.str.strip().tolist())


def load_folder(
    config: FolderConfig, name: str, workdir: Path, *, workers: int | None = None
) -> Catalog:
    """Prepare a dataset folder as described in the module docstring.

    Writes ``images.npy`` and ``source_ids.npz`` into ``workdir`` (the stage's temporary output
    folder) and returns a catalog whose ``images`` is a read-only memmap of that file.
    """
    root = Path(config.path)
    source = root / config.interactions
    frame = read_interactions(source, config.columns)
    n_lines = len(frame)
    frame["_file"] = np.arange(n_lines)

    # 1 duplicates, then items without an image file.
    frame = frame.sort_values(["time", "_file"], kind="stable", na_position="last")
    frame = frame.drop_duplicates(["user", "item"], keep="first").sort_values("_file")
    n_duplicates = n_lines - len(frame)
    image_dir = root / IMAGE_DIR
    all_items = np.unique(frame["item"].to_numpy(str))
    has_file = np.array([(image_dir / f"{i}{IMAGE_SUFFIX}").is_file() for i in all_items])
    for item in all_items[~has_file][:20]:
        log.warning("item %s excluded: missing: no file %s%s", item, item, IMAGE_SUFFIX)
    frame = frame[frame["item"].isin(set(all_items[has_file]))]

    # 2 k-core; 3 images of the remaining items; corrupt ones out, k-core again.
    frame = k_core(frame, config.k_core)
    items = np.unique(frame["item"].to_numpy(str))
    if items.size == 0:
        raise ValueError(f"{name}: no item is left after the {config.k_core}-core filter")
    image_path = workdir / "images.npy"
    report = write_images(
        (image_dir / f"{i}{IMAGE_SUFFIX}" for i in items),
        items.size,
        image_path,
        config.image_size,
        workers=workers,
        desc=f"{name} images",
    )
    stored = items[report.ok]  # the rows of images.npy, in order
    frame = k_core(frame[frame["item"].isin(set(stored))], config.k_core)
    items = np.unique(frame["item"].to_numpy(str))
    if items.size < stored.size:
        compact_images(image_path, np.flatnonzero(np.isin(stored, items)))
    if items.size == 0:
        raise ValueError(f"{name}: no item is left after excluding items with bad images")
    n_kcore_interactions = len(frame)
    counts = {
        "users": int(frame["user"].nunique()),
        "items": int(items.size),
        "interactions": n_kcore_interactions,
    }
    count_check = "not checked"
    if config.expected_counts != NO_CHECK:
        diffs = check_counts(
            counts, config.expected_counts, on_mismatch=config.on_count_mismatch, where=name
        )
        count_check = "; ".join(diffs) or "ok"

    # 4 cold items; their interactions removed; users with too few interactions left dropped.
    item_ids = pd.Index(items)
    frame = frame.assign(item_id=item_ids.get_indexer(frame["item"]))
    cold = pick_cold(np.arange(items.size), config.n_cold, config.seed, f"{name}.n_cold")
    users_before = frame["user"].nunique()
    is_cold = np.isin(frame["item_id"].to_numpy(), cold)
    n_removed_cold = int(is_cold.sum())
    frame = frame[~is_cold]
    per_user = frame.groupby("user")["item"].transform("size")
    frame = frame[per_user >= MIN_USER_INTERACTIONS]
    users = np.unique(frame["user"].to_numpy(str))
    if users.size == 0:
        raise ValueError(f"{name}: no user keeps {MIN_USER_INTERACTIONS} interactions")
    frame = frame.assign(user_id=pd.Index(users).get_indexer(frame["user"]))

    # 5 time-aware leave-one-out.
    frame = frame.sort_values(["user_id", "time", "_file"], kind="stable", na_position="last")
    user_col = frame["user_id"].to_numpy(np.int64)
    item_col = frame["item_id"].to_numpy(np.int64)
    ends = np.cumsum(np.bincount(user_col, minlength=users.size))
    test_rows, val_rows = ends - 1, ends - 2
    train = np.ones(user_col.size, dtype=bool)
    train[test_rows] = False
    train[val_rows] = False

    np.savez(workdir / "source_ids.npz", users=users, items=items)
    info: dict[str, Any] = {
        "source": "folder",
        "source_file": config.interactions,
        "source_lines": n_lines,
        "duplicates_dropped": n_duplicates,
        "k_core": config.k_core,
        "images_missing": int((~has_file).sum()),
        "images_corrupt": report.corrupt,
        "items_excluded": int((~has_file).sum()) + report.corrupt,
        "kcore_users": int(users_before),
        "kcore_items": int(items.size),
        "kcore_interactions": n_kcore_interactions,
        "expected_counts": config.expected_counts,
        "count_check": count_check,
        "interactions_removed_cold": n_removed_cold,
        "users_dropped_too_few": int(users_before - users.size),
        "user_rule": f"after cold removal, users with < {MIN_USER_INTERACTIONS} interactions "
        "are dropped; time-aware leave-one-out (ties: file order)",
        "cold_rule": COLD_RULE,
        "cold_seed": config.seed,
        "image_size": config.image_size,
    }
    catalog = Catalog(
        name=name,
        train_users=user_col[train],
        train_items=item_col[train],
        val_items=item_col[val_rows],
        test_items=item_col[test_rows],
        cold_items=cold.astype(np.int64),
        categories=np.full(items.size, -1, dtype=np.int64),
        images=open_images(image_path),
        category_names=(),
        info=info,
        titles=read_titles(root / config.titles, items) if config.titles else None,
    )
    log.info(
        "%s: %d users, %d items (%d cold), %d training interactions; %d missing and %d corrupt "
        "images",
        name,
        catalog.n_users,
        catalog.n_items,
        cold.size,
        int(train.sum()),
        info["images_missing"],
        info["images_corrupt"],
    )
    return catalog
