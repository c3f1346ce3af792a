"""The DVBPR release (Kang et al., ICDM 2017): Amazon Men and Tradesy.com as used by AIP.

Each file is one pickled object array ``[user_train, user_validation, user_test, Item, usernum,
itemnum]`` written by Python 2, so it is read with ``encoding="bytes"`` and its dict keys are
``bytes``. ``user_train[u]`` is a list of dicts with ``b"productid"`` (other keys are ignored);
``user_validation[u]`` and ``user_test[u]`` hold one such dict; ``Item[i][b"imgs"]`` is the JPEG
of item ``i``. The containers may be dicts keyed by int or lists; both are read.

Preparation, deterministic given the config:

1. every item image is decoded once, resized to ``image_size`` (bicubic, RGB) and streamed into
   ``images.npy`` in the output folder; an item whose image is missing, corrupt or truncated is
   counted, logged and excluded with all its interactions (item ids are re-indexed, order kept);
2. ``n_cold`` cold items are drawn by :data:`~aipray.data.common.COLD_RULE` (seeded by ``seed``)
   and all their interactions (train, validation, test) are removed;
3. a user whose validation or test item was removed (cold or excluded), or who has no training
   interaction left, is dropped (their held-out items are not re-picked: DVBPR's split has no
   timestamps to pick by); the remaining users are re-indexed ``0..n-1`` in source order.

Items without any interaction stay in the catalog (as in the DVBPR release, they are candidates).
The source ids of catalog users and items are written to ``source_ids.npz``. The pickle itself is
read into memory (its JPEG bytes: about the file size, 2.1 GB for Amazon Men); decoded pixels
never are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aipray.data.catalog import Catalog
from aipray.data.common import COLD_RULE, dense_remap, npy_file_problem, pick_cold, resolve
from aipray.data.images import Source, open_images, write_images
from aipray.params import Settings, param

log = logging.getLogger(__name__)

#: Where the files are published (see ``scripts/download_data.sh``).
DOWNLOAD_HINT = "scripts/download_data.sh downloads it"


@dataclass(frozen=True)
class DVBPRConfig(Settings):
    """A DVBPR release file and how to prepare it (all fields may be set in the sweep YAML).

    ``path`` is resolved against the working directory when the config is built.
    """

    path: str = param("data/AmazonMenWithImgPartitioned.npy", doc="the DVBPR release file (.npy)")
    n_cold: int = param(1000, min=1, doc="cold items (AIP: 1000)")
    image_size: int = param(224, min=16, doc="images are resized to image_size × image_size")
    seed: int = param(0, doc="seed of the cold-item draw")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "path", resolve(self.path))

    def file_checks(self) -> list[tuple[str, object, str]]:
        """``(key, value, allowed)`` for each problem found before any work (a missing file)."""
        problem = npy_file_problem(self.path)
        if problem is None:
            return []
        return [
            (
                "path",
                self.path,
                f"an existing DVBPR release file (.npy), but it is {problem}; {DOWNLOAD_HINT}",
            )
        ]


@dataclass(frozen=True)
class AmazonMenConfig(DVBPRConfig):
    """Amazon Men from the DVBPR release (AIP: 34,244 users, 110,636 items)."""

    path: str = param("data/AmazonMenWithImgPartitioned.npy", doc="the DVBPR release file (.npy)")


@dataclass(frozen=True)
class TradesyConfig(DVBPRConfig):
    """Tradesy.com from the DVBPR release (AIP: 33,864 users, 326,393 items)."""

    path: str = param("data/TradesyImgPartitioned.npy", doc="the DVBPR release file (.npy)")


def _field(record: Any, key: str) -> Any:
    """``record[b"key"]`` (Python 2 pickle) or ``record["key"]``; ``None`` when absent."""
    if isinstance(record, dict):
        for k in (key.encode(), key):
            if k in record:
                return record[k]
    return None


def _extent(container: Any) -> int:
    """Number of ids a per-user or per-item container covers (dict: largest int key + 1)."""
    if isinstance(container, dict):
        keys = [int(k) for k in container if isinstance(k, int | np.integer)]
        return max(keys) + 1 if keys else 0
    return len(container)


def _entry(container: Any, index: int) -> Any:
    """``container[index]`` for a dict keyed by int or a list; ``None`` when absent."""
    if isinstance(container, dict):
        return container.get(index)
    return container[index] if index < len(container) else None


def _records(entry: Any) -> list[Any]:
    """A user's list of interaction dicts (a lone dict counts as a one-element list)."""
    if entry is None:
        return []
    if isinstance(entry, dict):
        return [entry]
    return list(entry)


def _product(record: Any, n_items: int) -> int:
    """The item index of an interaction dict, ``-1`` if absent or out of range."""
    value = _field(record, "productid")
    try:
        item = int(value)
    except (TypeError, ValueError):
        return -1
    return item if 0 <= item < n_items else -1


def _image_sources(items: Any, n_items: int) -> Iterator[Source]:
    for i in range(n_items):
        data = _field(_entry(items, i), "imgs")
        yield bytes(data) if isinstance(data, bytes | bytearray | np.bytes_) else None


def read_release(path: Path) -> tuple[Any, Any, Any, Any, int, int]:
    """Unpickle a DVBPR file: ``(user_train, user_validation, user_test, Item, n_users, n_items)``.

    ``n_users`` / ``n_items`` cover every id the containers use, even past ``usernum`` /
    ``itemnum``.
    """
    raw = np.load(path, encoding="bytes", allow_pickle=True)
    parts = list(raw.tolist() if isinstance(raw, np.ndarray) else raw)
    if len(parts) != 6:
        raise ValueError(
            f"{path}: expected [user_train, user_validation, user_test, Item, usernum, itemnum], "
            f"got {len(parts)} parts"
        )
    user_train, user_val, user_test, items, usernum, itemnum = parts
    n_users = max(int(usernum), _extent(user_train), _extent(user_val), _extent(user_test))
    n_items = max(int(itemnum), _extent(items))
    return user_train, user_val, user_test, items, n_users, n_items


def load_dvbpr(
    config: DVBPRConfig, name: str, workdir: Path, *, workers: int | None = None
) -> Catalog:
    """Prepare a DVBPR release as described in the module docstring.

    Writes ``images.npy`` and ``source_ids.npz`` into ``workdir`` (the stage's temporary output
    folder) and returns a catalog whose ``images`` is a read-only memmap of that file.
    """
    path = Path(config.path)
    log.info("%s: reading %s", name, path)
    user_train, user_val, user_test, items, n_src_users, n_src_items = read_release(path)

    # 1 images, streamed to disk; bad ones excluded.
    image_path = workdir / "images.npy"
    report = write_images(
        _image_sources(items, n_src_items),
        n_src_items,
        image_path,
        config.image_size,
        workers=workers,
        desc=f"{name} images",
    )
    del items

    # Interactions as flat arrays of source ids.
    train_u: list[int] = []
    train_i: list[int] = []
    val = np.full(n_src_users, -1, dtype=np.int64)
    test = np.full(n_src_users, -1, dtype=np.int64)
    unknown = 0
    for u in range(n_src_users):
        for record in _records(_entry(user_train, u)):
            item = _product(record, n_src_items)
            if item < 0:
                unknown += 1
                continue
            train_u.append(u)
            train_i.append(item)
        for target, container in ((val, user_val), (test, user_test)):
            records = _records(_entry(container, u))
            if records:
                target[u] = _product(records[0], n_src_items)
                unknown += int(target[u] < 0)
    tr_u = np.asarray(train_u, dtype=np.int64)
    tr_i = np.asarray(train_i, dtype=np.int64)
    n_source_interactions = int(tr_i.size + (val >= 0).sum() + (test >= 0).sum())

    # 2 cold items among items with a usable image and an interaction.
    touched = np.bincount(
        np.concatenate([tr_i, val[val >= 0], test[test >= 0]]), minlength=n_src_items
    )
    eligible = np.flatnonzero(report.ok & (touched > 0))
    cold_src = pick_cold(eligible, config.n_cold, config.seed, f"{name}.n_cold")
    is_cold = np.zeros(n_src_items, dtype=bool)
    is_cold[cold_src] = True
    removed = ~report.ok | is_cold

    # 3 drop removed items' interactions, then users without held-out items or training data.
    keep = ~removed[tr_i]
    removed_cold = int(is_cold[tr_i].sum())
    removed_bad = int((~report.ok[tr_i]).sum())
    tr_u, tr_i = tr_u[keep], tr_i[keep]
    present = (val >= 0) & (test >= 0)
    heldout_ok = present.copy()
    heldout_ok[present] = ~removed[val[present]] & ~removed[test[present]]
    for held in (val[val >= 0], test[test >= 0]):
        removed_cold += int(is_cold[held].sum())
        removed_bad += int((~report.ok[held]).sum())
    has_train = np.bincount(tr_u, minlength=n_src_users) > 0
    keep_user = heldout_ok & has_train
    user_remap = dense_remap(keep_user)
    item_remap = dense_remap(report.ok)
    mask = keep_user[tr_u]
    tr_u, tr_i = user_remap[tr_u[mask]], item_remap[tr_i[mask]]
    if not keep_user.any():
        raise ValueError(f"{name}: no user is left after removing cold and excluded items")

    kept_users = np.flatnonzero(keep_user)
    np.savez(workdir / "source_ids.npz", users=kept_users, items=np.flatnonzero(report.ok))
    info: dict[str, Any] = {
        "source": "dvbpr",
        "source_file": path.name,
        "source_users": n_src_users,
        "source_items": n_src_items,
        "source_interactions": n_source_interactions,
        "interactions_unknown_item": unknown,
        "images_missing": report.missing,
        "images_corrupt": report.corrupt,
        "items_excluded": int((~report.ok).sum()),
        "interactions_removed_cold": removed_cold,
        "interactions_removed_bad_image": removed_bad,
        "users_dropped_heldout_removed": int((~heldout_ok).sum()),
        "users_dropped_no_train": int((heldout_ok & ~has_train).sum()),
        "user_rule": "users whose validation or test item was removed, or with no training "
        "interaction left, are dropped; users re-indexed in source order",
        "cold_rule": COLD_RULE,
        "cold_seed": config.seed,
        "image_size": config.image_size,
    }
    n_items = report.n_ok
    catalog = Catalog(
        name=name,
        train_users=tr_u,
        train_items=tr_i,
        val_items=item_remap[val[kept_users]],
        test_items=item_remap[test[kept_users]],
        cold_items=item_remap[cold_src],
        categories=np.full(n_items, -1, dtype=np.int64),
        images=open_images(image_path),
        category_names=(),
        info=info,
    )
    log.info(
        "%s: %d users, %d items (%d cold), %d training interactions",
        name,
        catalog.n_users,
        n_items,
        cold_src.size,
        tr_i.size,
    )
    return catalog
