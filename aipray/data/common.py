"""Rules shared by the real-data loaders: paths in configs, the cold-item draw, re-indexing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: The cold-item rule, recorded verbatim in every real catalog's summary.
COLD_RULE = (
    "uniform draw without replacement, numpy.random.default_rng(seed).choice, among the items "
    "with a usable image and at least one interaction (sorted by item id); every interaction "
    "of a cold item (train, validation, test) is removed"
)

NPY_MAGIC = b"\x93NUMPY"


def resolve(path: str) -> str:
    """A config path made absolute against the working directory (``""`` stays ``""``).

    Stage outputs are keyed by the config, and stages may run in other processes (Ray tasks), so
    a relative path is pinned to where the sweep was started, as ``storage`` is.
    """
    if not path:
        return path
    return str(Path(path).expanduser().resolve())


def npy_file_problem(path: str) -> str | None:
    """Why ``path`` is not a usable ``.npy`` file, or ``None`` when it is one."""
    p = Path(path)
    if not path or not p.is_file():
        return "missing"
    try:
        with open(p, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except OSError:
        return "unreadable"
    return None if magic == NPY_MAGIC else "not a .npy file"


def pick_cold(eligible: np.ndarray, n_cold: int, seed: int, where: str) -> np.ndarray:
    """The cold items: ``n_cold`` of the sorted ``eligible`` item ids, drawn by :data:`COLD_RULE`.

    Raises:
        ValueError: fewer than ``n_cold + 1`` eligible items (at least one must stay warm).
    """
    eligible = np.unique(np.asarray(eligible, dtype=np.int64))
    if n_cold >= eligible.size:
        raise ValueError(
            f"{where}: n_cold={n_cold} is too many; only {eligible.size} items have a usable "
            f"image and an interaction, and at least one must stay warm"
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(eligible, size=n_cold, replace=False))


def dense_remap(keep: np.ndarray) -> np.ndarray:
    """For a bool mask, ``old id → new id`` (contiguous, order kept) with ``-1`` for dropped ids."""
    remap = np.full(keep.size, -1, dtype=np.int64)
    remap[keep] = np.arange(int(keep.sum()), dtype=np.int64)
    return remap
