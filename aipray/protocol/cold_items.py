"""AIP's cold-item protocol as a registered :class:`~aipray.protocol.base.Protocol` (``aip``): one
sweep trial from its :class:`~aipray.plan.TrialPlan` — its stages' stored outputs (candidate
scores, the served ranker), the per-batch :class:`~aipray.protocol.aip.ColdItemEvaluator`, the
reduction and the example figures. The maths it calls lives in :mod:`aipray.protocol.aip`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageDraw

from aipray.attacks.base import ATTACKS
from aipray.attacks.ensemble import Ensemble
from aipray.attacks.sema import STORED_SET
from aipray.data.catalog import Catalog
from aipray.defenses import make_defense
from aipray.grid import ENSEMBLE
from aipray.metrics.ranking import (
    CandidateScores,
)
from aipray.models.base import Recommender, load_recommender, model_meta
from aipray.models.extractor import load_extractor, read_extractor_info
from aipray.pixels import to_float, to_uint8
from aipray.plan import StagePaths, TrialPlan
from aipray.protocol.aip import (
    ColdItemEvaluator,
    attack_inputs,
    collusion_metrics,
    hook_item,
    is_identity,
    reduce_items,
)
from aipray.protocol.base import PROTOCOLS, Protocol, decode_images, lpips_metric
from aipray.store import atomic_dir, code_version, done, file_sha256

log = logging.getLogger(__name__)


# --- the protocol object: one trial from its plan -----------------------------------------------
def load_context(
    path: Path, device: torch.device | str = "cpu", *, full: bool = False
) -> CandidateScores:
    """The candidate scores a context stage stored (:func:`candidate_scores`), or with ``full``
    its users' full rankings (:func:`~aipray.protocol.aip.full_ranking_scores`)."""
    name = "full.pt" if full else "context.pt"
    return CandidateScores(**torch.load(path / name, map_location=device, weights_only=True))


def load_served(context: Path, model: Path, device: torch.device | str = "cpu") -> Recommender:
    """The ranker as served under the context's defence (the trained one unless the defence
    changed it)."""
    served = context / "served"
    return load_recommender(served if served.is_dir() else model, device)


def stage_metrics(paths: StagePaths) -> dict[str, float]:
    """The health of what the trial stands on: the first stage's (``first_stage/*``, see
    :class:`FirstStage`) and the ranker's validation HR@10 among all warm items, as training
    selected its best epoch on it (``ranker/val_hr_at_10``, at most 5,000 sampled users; NaN for
    rankers without training) and over every user (``ranker/full_hr_at_10``, against
    ``first_stage/full_popularity_hr_at_10``), plus what its
    training derived (AMR: ``ranker/adv_eps``, the absolute ε of its adversary)."""
    health = json.loads((paths.candidates / "summary.json").read_text())
    out = {f"first_stage/{k}": float(v) for k, v in health.items()}
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


EMBEDDING_SAMPLE = 1000  # warm items in a trial's embedding map
EMBEDDING_COLD = 50  # cold items shown before/after the attack


@PROTOCOLS.register("aip")
class ColdItems(Protocol):
    """AIP's cold-item protocol as a sweep trial: the items are the dataset's cold items (those
    the attack covers), each batch goes through :class:`ColdItemEvaluator`, and the rows reduce
    by :func:`reduce_items`. An oblivious attack's images do not depend on the defence: they
    are stored under the attack's key and serve every defence's trial; an adaptive attack's are
    made through the trial's defence, against the ranker served under it, and keyed by both."""

    stages = (
        ("dataset",),
        ("bpr", "extractor"),
        ("candidates", "ranker"),
        ("defense",),
        ("context", "context_undefended"),
    )
    columns: ClassVar[dict[str, str]] = {
        "cooperative/hr_at_5": "coop@5",
        "adversarial/hr_at_5": "adv@5",
        "full_ranking/cooperative/hr_at_50": "full_coop@50",
        "full_ranking/adversarial/hr_at_50": "full_adv@50",
        "full_ranking/random/hr_at_50": "full_rand@50",
        "ordinary/hr_at_5": "ord@5",
        "ordinary_attacked/hr_at_5": "ord_att@5",
        "random/hr_at_5": "rand@5",
        "prediction_shift": "shift",
        "p_value_hr_at_5": "p",
        "linf_255_max": "linf",
        "ssim_mean": "ssim",
    }

    def items(self, plan: TrialPlan) -> pa.Table:
        paths = plan.paths
        source = paths.attack / STORED_SET if done(paths.attack) else paths.dataset / "cold"
        table = pq.read_table(source)  # item_id, image (and adv when the attack is stored)
        keep = ATTACKS.get(plan.attack.name).restrict(
            plan.attack.config, table.column("item_id").to_pylist()
        )
        if len(keep) < table.num_rows:
            table = table.filter(pc.is_in(table.column("item_id"), pa.array(keep, pa.int64())))
        return table

    def evaluator(self, plan: TrialPlan, device: torch.device) -> ColdItemEvaluator:
        paths = plan.paths
        ranker = load_recommender(paths.model, device)
        catalog = Catalog.load(paths.dataset)
        attack_cls = ATTACKS.get(plan.attack.name)
        config = plan.attack.config
        defense = make_defense(plan.defense.name, plan.defense.config, paths.defense)
        if attack_cls.knowledge == "classifier":
            target = int(read_extractor_info(paths.extractor)["target_class"])
            classifier = load_extractor(paths.extractor, device)
            inputs = attack_inputs(config, catalog, classifier, target, defense)
        else:
            inputs = attack_inputs(config, catalog, defense=defense)
        defended = not is_identity(defense)
        served = load_served(paths.context, paths.model, device)
        # an adaptive attack optimises against the ranker the platform serves under the defence
        adaptive = getattr(config, "adaptive", False)
        attacked = served if adaptive else ranker
        if paths.source is not None or paths.ensemble:  # a transfer attack: on its sources
            sources = [load_recommender(p, device) for p in paths.ensemble or (paths.source,)]
            if adaptive:
                sources = [m.under_defense(defense, catalog.images) for m in sources]
            attacked = Ensemble(sources) if paths.ensemble else sources[0]
        return ColdItemEvaluator(
            ranker,
            attack_cls(config, attacked, inputs),
            load_context(paths.context, device),
            load_context(paths.context_undefended, device) if defended else None,
            defense,
            served,
            lpips=lpips_metric(plan.lpips, device),
            full=load_context(paths.context, device, full=True),
        )

    def store_attack(self, plan: TrialPlan, table: pa.Table, rows: pd.DataFrame) -> None:
        """The adversarial images as a stored image set (:data:`STORED_SET`, which the
        ``provided`` attack re-evaluates) with its ``provenance.json``."""
        if done(plan.paths.attack):
            return
        clean = table.select(["item_id", "image"]).to_pandas()
        adv = clean.sort_values("item_id", ignore_index=True).merge(
            rows[["item_id", "adv"]], on="item_id"
        )
        with atomic_dir(plan.paths.attack) as tmp:
            pq.write_table(pa.Table.from_pandas(adv, preserve_index=False), tmp / STORED_SET)
            made = provenance(plan, tmp / STORED_SET, len(adv))
            (tmp / "provenance.json").write_text(json.dumps(made, indent=2, default=str))

    def finish(
        self, plan: TrialPlan, rows: pd.DataFrame, folder: Path, device: torch.device
    ) -> dict[str, float]:
        set_sizes = load_context(plan.paths.context).set_sizes
        full_sizes = load_context(plan.paths.context, full=True).set_sizes
        metrics = reduce_items(rows, set_sizes, full_sizes)
        metrics.update(stage_metrics(plan.paths))
        if plan.collusion:
            metrics.update(colluding(plan, rows, device))
        if plan.examples:
            write_examples(plan, rows, plan.examples, folder)
        return metrics


def colluding(plan: TrialPlan, rows: pd.DataFrame, device: torch.device) -> dict[str, float]:
    """The trial's colluding-merchant metrics (:func:`~aipray.protocol.aip.collusion_metrics`)
    from its stored adversarial images, scored again by the ranker the platform serves under the
    trial's defence: the per-item rows hold each item's HR, not its scores, and a merchant's
    items may land in different batches."""
    ordered = rows.sort_values("item_id", ignore_index=True)
    ids = ordered["item_id"].to_numpy()
    catalog = Catalog.load(plan.paths.dataset)
    defense = make_defense(plan.defense.name, plan.defense.config, plan.paths.defense)
    return collusion_metrics(
        load_served(plan.paths.context, plan.paths.model, device),
        load_context(plan.paths.context, device),
        to_float(catalog.images[ids]),
        decode_images(ordered["adv"].to_numpy(), plan.image_shape),
        plan.collusion,
        defense,
        items=torch.tensor(ids),  # a copy: the frame's column is read-only
    )


def provenance(plan: TrialPlan, images: Path, n_items: int) -> dict[str, Any]:
    """How a stored image set was made: the attack (settings, algorithm version, what it knew),
    the stage outputs it was made against (dataset, extractor, ranker: a transfer attack's
    source model, not the model that evaluated it, an ensemble's models joined by ``+``; the
    defence and its stage only for an adaptive attack, as an oblivious attack's images serve
    every defence), the seed, the set's store key, the code, and the SHA-256 of the images'
    file."""
    cls = ATTACKS.get(plan.attack.name)
    adaptive = bool(getattr(plan.attack.config, "adaptive", False))
    paths = plan.paths
    return {
        "attack": plan.attack.label,
        "eps": getattr(plan.attack.config, "eps", None),
        "attack_config": plan.attack.as_dict(),
        "attack_version": cls.version,
        "knowledge": cls.knowledge,
        "dataset": paths.dataset.name,
        "extractor": paths.extractor.name,
        "model": ENSEMBLE.join(p.name for p in paths.ensemble or (paths.source or paths.model,)),
        "defense": plan.defense.label if adaptive else None,
        "defense_stage": paths.defense.name if adaptive and paths.defense is not None else None,
        "seed": plan.seed,
        "key": paths.attack.name,
        "code": code_version(),
        "items": n_items,
        "sha256": file_sha256(images),
    }


def write_examples(plan: TrialPlan, rows: pd.DataFrame, n: int, folder: Path) -> None:
    """``examples.png`` / ``examples.npz`` (clean | adversarial | defended images of the first
    ``n`` items) and ``embeddings.npz``: the ranker's item representation of a sample of warm
    items and of the first cold items before and after the attack (the report's 2-D map).
    ``rows`` are the trial's per-item rows (with ``adv``) in item order."""
    catalog = Catalog.load(plan.paths.dataset)
    ids = rows["item_id"].to_numpy()
    shape = plan.image_shape
    clean = to_float(catalog.images[ids[:n]])
    adv = decode_images(rows["adv"].to_numpy()[:n], shape)
    defended = make_defense(plan.defense.name, plan.defense.config, plan.paths.defense)(adv)
    example_grid(clean, adv, defended).save(folder / "examples.png")
    as_uint8 = {
        k: to_uint8(v).numpy()
        for k, v in (("clean", clean), ("adversarial", adv), ("defended", defended))
    }
    np.savez_compressed(folder / "examples.npz", item_ids=ids[:n], **as_uint8)

    model = load_recommender(plan.paths.model)
    rng = np.random.default_rng(0)
    warm = np.flatnonzero(catalog.warm_mask())
    sample = np.sort(rng.choice(warm, size=min(EMBEDDING_SAMPLE, warm.size), replace=False))
    m = min(EMBEDDING_COLD, len(rows))
    with torch.no_grad():
        reference = torch.cat(
            [
                model.item_embedding(to_float(catalog.images[sample[i : i + 256]]))
                for i in range(0, sample.size, 256)
            ]
        )
        clean_m = to_float(catalog.images[ids[:m]])
        adv_m = decode_images(rows["adv"].to_numpy()[:m], shape)
        hook = hook_item(plan.attack.config, catalog)
        hook_img = to_float(catalog.images[hook : hook + 1])
        np.savez_compressed(
            folder / "embeddings.npz",
            reference=reference.numpy().astype(np.float32),
            reference_category=catalog.categories[sample],
            clean=model.item_embedding(clean_m).numpy().astype(np.float32),
            adversarial=model.item_embedding(adv_m).numpy().astype(np.float32),
            hook=model.item_embedding(hook_img)[0].numpy().astype(np.float32),
            item_ids=ids[:m],
        )
