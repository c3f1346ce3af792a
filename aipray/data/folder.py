"""A dataset folder: an interactions TSV plus ``images/<item>.jpg`` (sisinflab Amazon Men/Women).

The TSV has the columns ``user``, ``item`` and optionally ``timestamp``, tab-separated; ids may be
any strings. The first line is skipped as a header when its first two fields are column names
(``user``/``user_id``/``uid``/``reviewerID``..., ``item``/``item_id``/``iid``/``asin``...) or its
timestamp field is not a time while the second line's is. Timestamps may be numbers or dates.

Preparation, deterministic given the config:

1. repeated ``(user, item)`` pairs keep their earliest occurrence (time, then file order); items
   with no image file are excluded (counted as missing images);
2. k-core filtering (every user and item keeps ``>= k_core`` interactions), iterated until stable;
3. the images of the remaining items are decoded once, resized to ``image_size`` (bicubic, RGB)
   and streamed into ``images.npy``; items whose image is corrupt or truncated are excluded and
   the k-core filter runs again (rows of items it removes are compacted out of the file);
4. ``n_cold`` cold items are drawn by :data:`~aipray.data.common.COLD_RULE` (seeded by ``seed``)
   among the remaining items and all their interactions are removed; users left with fewer than
   3 interactions are dropped (no further k-core: the items keep their images);
5. time-aware leave-one-out: each user's last interaction is the test item, the second-to-last
   the validation item, the rest are for training (ties and missing timestamps: file order).

Users and items are numbered in the sorted order of their ids; ``source_ids.npz`` in the output
maps catalog ids back to the ids of the file.
"""

from __future__ import annotations

import logging
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


@dataclass(frozen=True)
class FolderConfig(Settings):
    """A dataset folder and how to prepare it (all fields may be set in the sweep YAML).

    ``path`` is required and resolved against the working directory when the config is built.
    """

    path: str = param("", doc="folder with the interactions TSV and images/<item>.jpg")
    interactions: str = param("interactions.tsv", doc="interactions file name inside path")
    k_core: int = param(5, min=1, doc="k-core filter: users and items keep >= k interactions")
    n_cold: int = param(1000, min=1, doc="cold items")
    image_size: int = param(224, min=16, doc="images are resized to image_size × image_size")
    seed: int = param(0, doc="seed of the cold-item draw")

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
        if not (root / IMAGE_DIR).is_dir():
            bad.append(("path", self.path, f"{layout}, but it has no {IMAGE_DIR}/ folder"))
        return bad


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


def read_interactions(path: Path) -> pd.DataFrame:
    """The TSV as ``user`` (str), ``item`` (str), ``time`` (float64, NaN without timestamps) in
    file order, header skipped."""
    frame = pd.read_csv(
        path,
        sep="\t",
        header=None,
        dtype=str,
        keep_default_na=False,
        skip_blank_lines=True,
        quoting=3,  # csv.QUOTE_NONE: ids are taken literally
    )
    if frame.shape[1] not in (2, 3):
        raise ValueError(
            f"{path}: {frame.shape[1]} columns; expected 2 or 3 tab-separated columns "
            "(user, item[, timestamp])"
        )
    rows = frame.to_numpy()
    if len(rows) and _is_header(list(rows[0]), list(rows[1]) if len(rows) > 1 else None):
        log.info("%s: skipping header line %s", path.name, "\t".join(rows[0]))
        frame = frame.iloc[1:].reset_index(drop=True)
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


def load_folder(
    config: FolderConfig, name: str, workdir: Path, *, workers: int | None = None
) -> Catalog:
    """Prepare a dataset folder as described in the module docstring.

    Writes ``images.npy`` and ``source_ids.npz`` into ``workdir`` (the stage's temporary output
    folder) and returns a catalog whose ``images`` is a read-only memmap of that file.
    """
    root = Path(config.path)
    source = root / config.interactions
    frame = read_interactions(source)
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
