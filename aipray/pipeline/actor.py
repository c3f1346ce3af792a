"""The Ray Data actor of a trial: holds one trained ranker, runs attack → defence → scoring.

It is plain Python over torch: Ray builds one per actor-pool slot with the constructor arguments
(paths only, so a restarted actor reloads from disk) and calls it on batches of cold items.
"""

from __future__ import annotations

import hashlib
import logging
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

from aipray.attacks import ATTACKS, AttackInputs
from aipray.config import Component
from aipray.data import Catalog
from aipray.defenses import DEFENSES
from aipray.models import MODELS, load_recommender
from aipray.models.extractor import load_extractor, read_extractor_info
from aipray.pipeline.stages import StagePaths, load_context, load_served, pick_device
from aipray.pixels import to_float, to_uint8
from aipray.protocol import aip

log = logging.getLogger(__name__)


def decode_uint8(column: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A column of raw uint8 ``[3, H, W]`` bytes → uint8 ``[B, 3, H, W]``."""
    return np.stack([np.frombuffer(b, dtype=np.uint8).reshape(shape) for b in column])


def decode_images(column: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """A column of raw uint8 ``[3, H, W]`` bytes → float ``[B, 3, H, W]`` in [0, 1]."""
    return to_float(decode_uint8(column, shape))


def encode_images(images: torch.Tensor) -> np.ndarray:
    """Float images on the 8-bit grid → an object column of raw uint8 bytes."""
    raw = to_uint8(images).cpu().numpy()
    out = np.empty(raw.shape[0], dtype=object)
    out[:] = [r.tobytes() for r in raw]
    return out


class TrialActor:
    """Callable over batches ``{"item_id", "image"[, "adv"]}`` → one row of metrics per item: a
    thin adapter of :class:`aipray.protocol.aip.ColdItemEvaluator` to Ray Data batches.

    When the batch already carries adversarial images (``adv``, from an earlier trial with the
    same ranker and attack), the attack is skipped: a non-adaptive attack does not depend on the
    defence.
    """

    def __init__(
        self,
        paths: dict[str, str],
        model: dict[str, Any],
        attack: dict[str, Any],
        defense: dict[str, Any],
        lpips: dict[str, Any] | None = None,
        gpus: float = 0.0,
        threads: int = 1,
    ) -> None:
        torch.set_num_threads(max(1, threads))
        self.paths = StagePaths.from_dict(paths)
        self.device = pick_device(gpus)
        ranker = load_recommender(self.paths.model, self.device)
        catalog = Catalog.load(self.paths.dataset)
        self.image_shape = catalog.image_shape
        attack_c = _component("attack", attack)
        attacker = ATTACKS.get(attack_c.name)(
            attack_c.config, ranker, attack_inputs(attack_c, catalog, self.paths, self.device)
        )
        defense_c = _component("defense", defense)
        defender = DEFENSES.get(defense_c.name)(defense_c.config)
        defended = not aip.is_identity(defender)
        self.evaluator = aip.ColdItemEvaluator(
            ranker,
            attacker,
            load_context(self.paths.context, self.device),
            load_context(self.paths.context_undefended, self.device) if defended else None,
            defender,
            load_served(self.paths.context, self.paths.model, self.device),
            lpips=make_metric(lpips, self.device),
        )
        log.info("actor ready on %s", self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        clean = decode_images(batch["image"], self.image_shape)
        ids = np.array(batch["item_id"])  # a writable copy (Arrow buffers are read-only)
        given = decode_images(batch["adv"], self.image_shape) if "adv" in batch else None
        out, adv = self.evaluator(clean, ids, given)
        out["adv"] = encode_images(adv)
        return out


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
    table: Any, actor: type, kwargs: dict[str, Any], resources: dict[str, Any], checkpoint: Path
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

    step = resources["batch_size"]
    blocks = [table.slice(i, step) for i in range(0, table.num_rows, step)]
    ds = ray.data.from_arrow(blocks).map_batches(
        ResumableBatches,
        fn_constructor_args=(actor, str(checkpoint)),
        fn_constructor_kwargs={
            **kwargs,
            "gpus": resources["actor_gpus"],
            "threads": max(1, round(resources["actor_cpus"])),
        },
        compute=ray.data.ActorPoolStrategy(size=resources["actors"]),
        batch_size=step,
        batch_format="numpy",
        num_cpus=resources["actor_cpus"],
        num_gpus=resources["actor_gpus"],
    )
    parts = [pd.DataFrame(dict(b)) for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    return pd.concat(parts, ignore_index=True).sort_values("item_id", ignore_index=True)


def make_metric(lpips: dict[str, Any] | None, device: torch.device):
    """The sweep's LPIPS network on ``device``, or ``None`` when the sweep measures none (the
    driver has said once whether its backbone is the published one)."""
    if lpips is None:
        return None
    from aipray.metrics.perceptual import LPIPSConfig, make_lpips

    return make_lpips(LPIPSConfig(**lpips), device, quiet=True)


def attack_inputs(
    attack: Component, catalog: Catalog, paths: StagePaths, device: torch.device
) -> AttackInputs:
    """:func:`aipray.protocol.aip.attack_inputs`, with the stored extractor's classifier and its
    most popular class for classifier attacks."""
    if ATTACKS.get(attack.name).knowledge != "classifier":
        return aip.attack_inputs(attack.config, catalog)
    info = read_extractor_info(paths.extractor)
    classifier = load_extractor(paths.extractor, device)
    return aip.attack_inputs(attack.config, catalog, classifier, int(info["target_class"]))


def _component(kind: str, d: dict[str, Any]) -> Component:
    """Rebuild a component from ``{"name", "config"}`` (what travels to the actor)."""
    from aipray.config import build_dataclass
    from aipray.registry import Registry

    registry: Registry = {"attack": ATTACKS, "defense": DEFENSES, "model": MODELS}[kind]
    cls = registry.get(d["name"]).Config
    (config,), _ = build_dataclass(cls, d["config"], f"{kind}s.{d['name']}")
    return Component(kind, d["name"], config)
