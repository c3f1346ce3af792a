"""The Ray Data actor of a trial, and the resumable actor pool it runs in.

:class:`TrialActor` is plain Python over torch: Ray builds one per actor-pool slot from the
trial's :class:`~aipray.plan.TrialPlan` (paths and configs only, so a restarted actor reloads
from disk) and calls it on batches of items; it adapts the plan's protocol object
(:meth:`aipray.protocol.base.Protocol.evaluator`) to Ray Data batches.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from aipray.plan import ResourcesConfig, TrialPlan
from aipray.protocol.base import evaluate_batch, pick_device, protocol_of


class TrialActor:
    """Callable over batches ``{"item_id", "image"[, "adv"]}`` → one row per item with the
    adversarial image (``adv``): the plan's protocol's evaluator on Ray Data batches.

    When the batch already carries adversarial images (``adv``, stored by an earlier trial with
    the same attack), the attack is skipped: a non-adaptive attack does not depend on the
    defence.
    """

    def __init__(self, plan: TrialPlan, gpus: float = 0.0, threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        self.plan = plan
        self.evaluator = protocol_of(plan).evaluator(plan, pick_device(gpus))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return evaluate_batch(self.evaluator, batch, self.plan.image_shape)


class BatchFolder:
    """The finished batches of one piece of work in progress, one Parquet file per batch, named
    by a hash of the batch's item ids. A trial that dies (its actor, its node or the driver) and
    runs again reads the batches it already computed instead of recomputing them; a batch is
    written under a temporary name and renamed, so a file that exists is complete."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    def _file(self, ids: np.ndarray) -> Path:
        digest = hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()
        return self.folder / f"batch-{digest[:24]}.parquet"

    def load(self, ids: np.ndarray) -> dict[str, np.ndarray] | None:
        path = self._file(ids)
        if not path.is_file():
            return None
        table = pq.read_table(path)
        return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}

    def save(self, ids: np.ndarray, out: dict[str, np.ndarray]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._file(ids)
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
        pq.write_table(pa.table({k: pa.array(v) for k, v in out.items()}), tmp)
        os.replace(tmp, path)

    def __len__(self) -> int:
        return len(list(self.folder.glob("batch-*.parquet"))) if self.folder.is_dir() else 0

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def partial_folder(final: Path) -> Path:
    """Where the batches of the output ``final`` collect until it is written."""
    return final.parent / f".partial-{final.name}"


class ResumableBatches:
    """Ray Data callable that serves a batch from its :class:`BatchFolder` when it was computed
    before, and otherwise builds ``actor(**kwargs)`` (on first need: a trial whose batches are
    all stored loads no model) and stores what it returns. Adds a boolean ``resumed`` column."""

    def __init__(self, actor: type, folder: str, **kwargs: Any) -> None:
        self.actor, self.kwargs = actor, kwargs
        self.batches = BatchFolder(folder)
        self.inner: Any = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(batch["item_id"])
        out = self.batches.load(ids)
        resumed = out is not None
        if out is None:
            if self.inner is None:
                self.inner = self.actor(**self.kwargs)
            out = self.inner(batch)
            self.batches.save(ids, out)
        out["resumed"] = np.full(len(ids), resumed)
        return out


def map_with_actors(
    table: Any, actor: type, kwargs: dict[str, Any], resources: ResourcesConfig, checkpoint: Path
) -> pd.DataFrame:
    """Run ``actor`` (a callable class built with ``kwargs``) over ``table`` (a pyarrow table) in
    batches on a Ray Data actor pool sized by the sweep's ``resources``; its rows, all batches
    concatenated, with a ``resumed`` column (the rows read back from ``checkpoint``, a
    :class:`BatchFolder`, instead of computed).

    The table is handed to Ray Data as blocks of one batch each: a file-listing read task would
    need a whole CPU per trial, which concurrent trials on a small machine cannot get while their
    actors hold theirs (measured: deadlock on 2 cores). The blocks are the same slices on every
    run, so a re-run finds its stored batches."""
    import ray

    step = resources.batch_size
    blocks = [table.slice(i, step) for i in range(0, table.num_rows, step)]
    ds = ray.data.from_arrow(blocks).map_batches(
        ResumableBatches,
        fn_constructor_args=(actor, str(checkpoint)),
        fn_constructor_kwargs={
            **kwargs,
            "gpus": resources.actor_gpus,
            "threads": max(1, round(resources.actor_cpus)),
        },
        compute=ray.data.ActorPoolStrategy(size=resources.actors),
        batch_size=step,
        batch_format="numpy",
        num_cpus=resources.actor_cpus,
        num_gpus=resources.actor_gpus,
    )
    parts = [pd.DataFrame(dict(b)) for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    return pd.concat(parts, ignore_index=True).sort_values("item_id", ignore_index=True)
