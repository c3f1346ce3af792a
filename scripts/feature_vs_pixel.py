#!/usr/bin/env python
"""Feature-space vs pixel-space: how much a feature-space attack (the kind published on
multimodal recommenders, which perturbs stored feature vectors) over- or understates what an
attacker who controls only the image reaches.

    python scripts/feature_vs_pixel.py sweeps/quick.yaml [--seeds 0 1 2] [--models vbpr]

For every undefended, direct trial of the sweep's ``--attack`` (INSA by default) against a
ranker that reads its frozen extractor's features (VBPR, AMR, AlexRank, FREEDOM, LATTICE),
from the images the sweep stored (run the sweep first, per seed:
``python -m aipray.sweep SWEEP --seed N``):

- the feature displacement the pixel attack produced through the encoder, ``‖f(x') − f(x)‖₂``,
  absolute and relative to ``‖f(x)‖₂`` (mean over the cold items);
- the cold items' HR@5 among the top-C candidates (AIP's yardstick) and HR@50 over the full
  ranking (Denoise-to-protect's): clean, pixel attack, and feature-space INSA
  (:func:`aipray.attacks.feature_space.feature_insa`, 50 L2-PGD steps on all users' summed
  preference) given each item's own displacement as its L2 budget ("matched"), and given the
  mean displacement for every item ("mean").

``feature/pixel`` > 1: the feature-space number overstates the pixel attacker.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

try:
    import aipray  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aipray.attacks.feature_space import displacement, feature_insa, feature_view
from aipray.attacks.sema import STORED_SET
from aipray.config import load_sweep
from aipray.data import Catalog
from aipray.metrics.ranking import hit_rates, injected_ranks
from aipray.models import MODELS, load_recommender
from aipray.pipeline import stages
from aipray.pixels import to_float
from aipray.protocol.base import decode_images
from aipray.protocol.cold_items import load_context
from aipray.sweep import with_seed

STEPS = 50
USER_BATCH = 512


def trials_of(sweep, attack: str, models: list[str] | None) -> list:
    """The sweep's undefended, oblivious, direct trials of ``attack`` on feature-reading
    rankers."""
    out = []
    for trial in sweep.trials():
        cls = MODELS.get(trial.model.name)
        if trial.attack.name != attack or trial.defense.name != "none" or trial.adaptive:
            continue
        if trial.sources:  # a transfer trial: its images were crafted on other models
            continue
        if not cls.features_from_extractor or (models and trial.model.name not in models):
            continue
        out.append(trial)
    return out


def hr(context, model, inputs: torch.Tensor, users: torch.Tensor, n: int) -> float:
    """Mean HR@n of the items ``inputs`` (images, or features through a feature view)."""
    with torch.no_grad():
        scores = torch.cat(
            [model.score_images(users, inputs[i : i + 64]) for i in range(0, len(inputs), 64)],
            dim=1,
        )
    return float(hit_rates(injected_ranks(context, scores), (n,))[n].mean())


def measure(sweep, trial) -> dict[str, float]:
    paths = stages.stage_paths(sweep, trial)
    stored = paths.attack / STORED_SET
    if not stored.is_file():
        raise SystemExit(
            f"{trial.name}: no stored images at {paths.attack}; run "
            f"`python -m aipray.sweep {sweep.source} --seed {sweep.seed}` first"
        )
    table = pq.read_table(stored, columns=["item_id", "adv"]).to_pandas()
    table = table.sort_values("item_id", ignore_index=True)
    catalog = Catalog.load(paths.dataset)
    model = load_recommender(paths.model)
    view = feature_view(model)
    clean = to_float(catalog.images[table["item_id"].to_numpy()])
    adv = decode_images(table["adv"].to_numpy(), catalog.image_shape)
    moved, norms = displacement(model, clean, adv)
    users = torch.arange(model.n_users)
    batches = list(users.split(USER_BATCH))
    with torch.no_grad():
        features = model.extractor.features(clean)
    matched = feature_insa(view, features, moved, batches, steps=STEPS)
    mean_budget = torch.full_like(moved, float(moved.mean()))
    uniform = feature_insa(view, features, mean_budget, batches, steps=STEPS)
    row = {
        "displacement": float(moved.mean()),
        "relative": float((moved / norms.clamp(min=1e-12)).mean()),
    }
    for name, ctx, n in (
        ("top-C HR@5", load_context(paths.context), 5),
        ("full HR@50", load_context(paths.context, full=True), 50),
    ):
        row[f"{name} clean"] = hr(ctx, model, clean, users, n)
        row[f"{name} pixel"] = hr(ctx, model, adv, users, n)
        row[f"{name} feature matched"] = hr(ctx, view, matched, users, n)
        row[f"{name} feature mean"] = hr(ctx, view, uniform, users, n)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", help="sweep YAML")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="default: the YAML's")
    parser.add_argument("--attack", default="insa", help="the pixel attack's name in the sweep")
    parser.add_argument("--models", nargs="*", default=None, help="default: every feature ranker")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base = load_sweep(args.sweep)
    rows = []
    for seed in args.seeds if args.seeds is not None else [base.seed]:
        sweep = with_seed(base, seed)
        trials = trials_of(sweep, args.attack, args.models)
        if not trials:
            raise SystemExit(
                f"{args.sweep}: no undefended {args.attack} trial on a ranker that reads extractor "
                "features (vbpr, amr, alexrank, freedom)"
            )
        for trial in trials:
            row = measure(sweep, trial)
            rows.append({"seed": seed, "model": trial.model.label, "eps": trial.eps, **row})
            print(f"seed {seed} {trial.name}: done", file=sys.stderr)
    frame = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    print(frame.round(4).to_string(index=False))
    for name in ("top-C HR@5", "full HR@50"):
        pixel = frame[f"{name} pixel"].to_numpy()
        ratio = frame[f"{name} feature matched"].to_numpy() / np.where(pixel > 0, pixel, np.nan)
        frame[f"{name} feature/pixel"] = ratio
    summary = frame.groupby(["model", "eps"])[
        [c for c in frame.columns if c not in ("seed", "model", "eps")]
    ].agg(["mean", "min", "max"])
    print()
    print("over seeds (mean, min, max):")
    print(summary.round(4).T.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
