"""One Tune trial: Ray Data over the cold items → TrialActor → numpy reduction → stored result.

The trial stores everything it computed under its content-addressed result folder
(``metrics.json``, per-item ``items.parquet``, ``examples.png``) before reporting to Tune, and the
adversarial images under the attack's folder, so a retried or re-run trial recomputes nothing that
already exists. While it runs, every finished batch is stored too (``.partial-<result>``): a trial
that dies halfway resumes from its batches (``items_resumed`` counts the items read back).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageDraw

from aipray.attacks import ATTACKS
from aipray.data import Catalog
from aipray.defenses import DEFENSES
from aipray.models import load_recommender
from aipray.models.base import model_meta
from aipray.pipeline.actor import (
    BatchFolder,
    TrialActor,
    _component,
    decode_images,
    map_with_actors,
    partial_folder,
)
from aipray.pipeline.stages import StagePaths, first_stage_health, load_context
from aipray.pixels import to_float, to_uint8
from aipray.protocol import aip
from aipray.protocol.aip import reduce_items
from aipray.store import atomic_dir, done

log = logging.getLogger(__name__)

EMBEDDING_SAMPLE = 1000  # warm items in a trial's embedding map
EMBEDDING_COLD = 50  # cold items shown before/after the attack


def stage_metrics(paths: StagePaths) -> dict[str, float]:
    """The health of what the trial stands on: the first stage's (``first_stage/*``, see
    :class:`aipray.protocol.aip.FirstStage`) and the ranker's validation HR@10 against 100
    sampled negatives (``ranker/val_hr_at_10``; NaN for rankers without training) and among all
    warm items (``ranker/full_hr_at_10``, against ``first_stage/full_popularity_hr_at_10``),
    plus what its training derived (AMR: ``ranker/adv_eps``, the absolute ε of its adversary)."""
    out = {f"first_stage/{k}": float(v) for k, v in first_stage_health(paths).items()}
    training = model_meta(paths.model).get("training")
    out["ranker/val_hr_at_10"] = float(training["best_score"]) if training else float("nan")
    out["ranker/full_hr_at_10"] = float((training or {}).get("full_hr_at_10", float("nan")))
    for key, value in ((training or {}).get("info") or {}).items():
        out[f"ranker/{key}"] = float(value)
    return out


def example_grid(
    clean: torch.Tensor, adv: torch.Tensor, defended: torch.Tensor, scale: int = 4
) -> Image.Image:
    """Rows of original | adversarial | defended (adversarial) images, upscaled for viewing."""
    n, _, h, w = clean.shape
    cell_h, cell_w, pad, head = h * scale, w * scale, 4, 16
    grid = Image.new("RGB", (3 * (cell_w + pad) + pad, head + n * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for col, title in enumerate(("original", "adversarial", "defended")):
        draw.text((pad + col * (cell_w + pad), 2), title, fill="black")
    for row in range(n):
        for col, batch in enumerate((clean, adv, defended)):
            arr = to_uint8(batch[row]).permute(1, 2, 0)
            tile = Image.fromarray(arr.cpu().numpy()).resize((cell_w, cell_h), Image.NEAREST)
            grid.paste(tile, (pad + col * (cell_w + pad), head + pad + row * (cell_h + pad)))
    return grid


def run_trial(config: dict[str, Any], payloads: dict[str, dict[str, Any]]) -> None:
    """The Tune trainable. ``config["trial"]`` is the trial key; ``payloads`` (shared through the
    object store by ``tune.with_parameters``) maps keys to what :mod:`aipray.sweep` built. Only
    the key is a Tune parameter, so Tune's console and result files stay small."""
    import ray
    from ray import tune

    # trials run side by side: per-operator bars would interleave; the driver shows one bar,
    # and Ray Data's per-dataset lines (plan, start, finish) would be three more per trial
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    payload = payloads[config["trial"]]
    if payload.get("protocol") == "perceptual":
        from aipray.pipeline import push

        tune.report(push.evaluate(payload))
    else:
        tune.report(evaluate(payload))


def evaluate(payload: dict[str, Any]) -> dict[str, float]:
    """Compute (or load) one trial's metrics; usable without Tune (but with Ray running)."""

    paths = StagePaths.from_dict(payload["paths"])
    if done(paths.result):
        return json.loads((paths.result / "metrics.json").read_text())
    cached_attack = done(paths.attack)
    source = paths.attack if cached_attack else paths.dataset / "cold"
    table = pq.read_table(source)  # item_id, image (and adv when the attack is cached)
    attack = _component("attack", payload["attack"])
    keep = ATTACKS.get(attack.name).restrict(attack.config, table.column("item_id").to_pylist())
    if len(keep) < table.num_rows:
        table = table.filter(pc.is_in(table.column("item_id"), pa.array(keep, pa.int64())))
    if table.num_rows == 0:
        raise ValueError(f"{payload['name']}: the attack left no cold item to evaluate")
    kwargs = {k: payload[k] for k in ("paths", "model", "attack", "defense", "lpips")}
    batches = partial_folder(paths.result)
    items = map_with_actors(table, TrialActor, kwargs, payload["resources"], batches)
    resumed = int(items.pop("resumed").sum())

    # the cold items this trial evaluated (an attack may cover only some), clean images
    clean = table.select(["item_id", "image"]).to_pandas().sort_values("item_id", ignore_index=True)
    if not cached_attack:
        adv = clean.merge(items[["item_id", "adv"]], on="item_id")
        with atomic_dir(paths.attack) as tmp:
            pq.write_table(pa.Table.from_pandas(adv, preserve_index=False), tmp / "adv.parquet")

    context = load_context(paths.context)
    metrics = reduce_items(items, context.set_sizes)
    metrics.update(stage_metrics(paths))
    metrics["items_resumed"] = float(resumed)  # read back from an interrupted run's batches
    with atomic_dir(paths.result) as tmp:
        pq.write_table(
            pa.Table.from_pandas(items.drop(columns=["adv"]), preserve_index=False),
            tmp / "items.parquet",
        )
        n = int(payload["examples"])
        if n:
            write_examples(payload, paths, items, clean, n, tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    BatchFolder(batches).clear()
    log.info("%s: %s", payload["name"], {k: round(v, 4) for k, v in metrics.items()})
    return metrics


def write_examples(
    payload: dict[str, Any],
    paths: StagePaths,
    items: pd.DataFrame,
    cold: pd.DataFrame,
    n: int,
    folder: Path,
) -> None:
    """``examples.png`` / ``examples.npz`` (clean | adversarial | defended images of the first
    ``n`` items) and ``embeddings.npz``: the ranker's item representation of a sample of warm
    items and of the first cold items before and after the attack (the report's 2-D map).
    ``items`` (with ``adv``) and ``cold`` (clean ``image``) hold the same items in id order."""
    shape = tuple(payload["image_shape"])
    clean = decode_images(cold["image"].to_numpy()[:n], shape)
    adv = decode_images(items["adv"].to_numpy()[:n], shape)
    defense = _component("defense", payload["defense"])
    defended = DEFENSES.get(defense.name)(defense.config)(adv)
    example_grid(clean, adv, defended).save(folder / "examples.png")
    as_uint8 = {
        k: to_uint8(v).numpy()
        for k, v in (("clean", clean), ("adversarial", adv), ("defended", defended))
    }
    np.savez_compressed(
        folder / "examples.npz", item_ids=items["item_id"].to_numpy()[:n], **as_uint8
    )

    catalog = Catalog.load(paths.dataset)
    model = load_recommender(paths.model)
    rng = np.random.default_rng(0)
    warm = np.flatnonzero(catalog.warm_mask())
    sample = np.sort(rng.choice(warm, size=min(EMBEDDING_SAMPLE, warm.size), replace=False))
    m = min(EMBEDDING_COLD, len(cold))
    with torch.no_grad():
        reference = torch.cat(
            [
                model.item_embedding(to_float(catalog.images[sample[i : i + 256]]))
                for i in range(0, sample.size, 256)
            ]
        )
        clean_m = decode_images(cold["image"].to_numpy()[:m], shape)
        adv_m = decode_images(items["adv"].to_numpy()[:m], shape)
        hook = aip.hook_item(_component("attack", payload["attack"]).config, catalog)
        hook_img = to_float(catalog.images[hook : hook + 1])
        np.savez_compressed(
            folder / "embeddings.npz",
            reference=reference.numpy().astype(np.float32),
            reference_category=catalog.categories[sample],
            clean=model.item_embedding(clean_m).numpy().astype(np.float32),
            adversarial=model.item_embedding(adv_m).numpy().astype(np.float32),
            hook=model.item_embedding(hook_img)[0].numpy().astype(np.float32),
            item_ids=items["item_id"].to_numpy()[:m],
        )
