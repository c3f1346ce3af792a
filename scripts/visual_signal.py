"""How much of users' visual taste reaches VBPR? VBPR trained on the features of the sweep's
extractor and on the synthetic marketplace's true item styles, against BPR and popularity.

    python scripts/visual_signal.py sweeps/quick.yaml
    python scripts/visual_signal.py sweeps/quick.yaml --recipe epochs=60,reg=0.0001

On the synthetic marketplace a user's taste is a category (shape), a hue and a texture. The
extractor is pretrained to tell the categories apart, so its features may drop hue and texture;
VBPR then sees only part of what users choose by. This trains, on the sweep's stored catalog and
with the sweep's VBPR recipe (or ``--recipe`` changes to it):

- VBPR on the extractor's features (what the sweep's VBPR sees),
- VBPR on the true styles: one-hot category, the hue as 12 smooth circular bins, one-hot texture
  (an upper reference no extractor is given),
- BPR with VBPR's number of factors, and the sweep's first-stage BPR,

and prints how well a linear probe reads each style off the extractor's features, then HR@10 of
each user's validation item among all warm items (at most 5,000 users, what training selected
on, and every user, with the popularity ranker's and the standard error over users). Needs the
sweep's dataset, first stage and extractor in the store (run the sweep first).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import aipray  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aipray.config import load_sweep
from aipray.data import Catalog
from aipray.data.synthetic import TEXTURES, item_styles, style_labels
from aipray.metrics.full_ranking import (
    full_hit_rate,
    full_random_hit_rate,
    model_scores,
    popularity_scores,
)
from aipray.metrics.probe import probe_accuracy
from aipray.models import MODELS, load_recommender
from aipray.models.base import model_meta
from aipray.models.extractor import extract_features, load_extractor
from aipray.models.vbpr import VBPR, FeatureEncoder
from aipray.pipeline.stages import stage_paths
from aipray.store import done

HUE_BINS = 12
HUE_WIDTH = 0.06  # a bin's Gaussian width, about 3/4 of the spacing between bins


def style_features(config, n_features: int) -> np.ndarray:
    """``[n_items, n_features]``: one-hot category, circular Gaussian hue bins, one-hot texture,
    zero-padded to the extractor's width (zero columns add nothing to ``E f``)."""
    styles = item_styles(config)
    centres = np.arange(HUE_BINS) / HUE_BINS
    gap = np.abs(styles.hues[:, None] - centres[None])
    gap = np.minimum(gap, 1.0 - gap)
    table = np.concatenate(
        [
            np.eye(config.n_categories)[styles.categories],
            np.exp(-((gap / HUE_WIDTH) ** 2)),
            np.eye(len(TEXTURES))[styles.textures],
        ],
        axis=1,
    )
    if table.shape[1] > n_features:
        raise ValueError(f"{table.shape[1]} style features do not fit in {n_features} columns")
    return np.pad(table, ((0, 0), (0, n_features - table.shape[1]))).astype(np.float32)


def fixed_features(table: torch.Tensor) -> type[VBPR]:
    """VBPR whose item features are ``table`` instead of its extractor's features."""

    class FixedFeatureVBPR(VBPR):
        def training_encoder(self, images: np.ndarray) -> FeatureEncoder:
            return FeatureEncoder(table.to(self.E.weight.device), self.encode_features)

    return FixedFeatureVBPR


def changed(config, recipe: str):
    """``config`` with ``key=value,...`` applied (each value cast to the field's type)."""
    if not recipe:
        return config
    pairs = dict(kv.split("=", 1) for kv in recipe.split(","))
    unknown = sorted(set(pairs) - {f.name for f in dataclasses.fields(config)})
    if unknown:
        raise SystemExit(f"--recipe: no field {unknown[0]!r} in {type(config).__name__}")
    return dataclasses.replace(config, **{k: type(getattr(config, k))(v) for k, v in pairs.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--recipe", default="", help="VBPR config changes: key=value,...")
    parser.add_argument("--seed", type=int, default=None, help="training seed (sweep's seed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sweep = load_sweep(args.sweep)
    trial = next((t for t in sweep.trials() if t.model.name == "vbpr"), None)
    if trial is None or trial.dataset.name != "synthetic":
        raise SystemExit(f"{args.sweep}: needs a VBPR trial on the synthetic marketplace")
    paths = stage_paths(sweep, trial)
    for stage in ("dataset", "bpr", "extractor"):
        if not done(getattr(paths, stage)):
            raise SystemExit(
                f"no {stage} in the store at {getattr(paths, stage)}: run "
                f"`python -m aipray.sweep {args.sweep}` first"
            )
    seed = sweep.seed if args.seed is None else args.seed
    catalog = Catalog.load(paths.dataset)
    extractor = load_extractor(paths.extractor, "cpu")
    real = extract_features(extractor, catalog.images, device=torch.device("cpu"))
    styles = torch.as_tensor(style_features(trial.dataset.config, real.shape[1]))
    for name, labels in style_labels(trial.dataset.config).items():
        chance = np.bincount(labels).max() / labels.size
        print(
            f"linear probe of the extractor's features, {name}: held-out accuracy "
            f"{probe_accuracy(real, labels):.3f} (majority {chance:.3f})"
        )
    config = changed(trial.model.config, args.recipe)
    cpu = torch.device("cpu")
    rows = []

    def report(name: str, model, val: float, seconds: float) -> None:
        full = full_hit_rate(model_scores(model, catalog), catalog)
        se = np.sqrt(full * (1 - full) / catalog.n_users)
        rows.append((name, val, full, se))
        print(f"{name}: val HR@10 {val:.3f}, full HR@10 {full:.3f} ± {se:.3f} [{seconds:.0f}s]")

    for name, table in (("VBPR, extractor features", real), ("VBPR, true styles", styles)):
        start = time.perf_counter()
        model, info = fixed_features(table).fit(
            config, catalog, extractor=extractor, device=cpu, seed=seed
        )
        report(f"{name} (K={config.dim})", model, info["best_score"], time.perf_counter() - start)
    bpr_config = dataclasses.replace(sweep.first_stage.bpr, factors=config.dim)
    start = time.perf_counter()
    model, info = MODELS.get("bpr").fit(bpr_config, catalog, extractor=None, device=cpu, seed=seed)
    report(f"BPR ({config.dim} factors)", model, info["best_score"], time.perf_counter() - start)
    first = load_recommender(paths.bpr, cpu)
    val = model_meta(paths.bpr)["training"]["best_score"]
    report(f"first-stage BPR ({sweep.first_stage.bpr.factors} factors)", first, val, 0)
    popularity = full_hit_rate(popularity_scores(catalog), catalog)
    print(
        f"popularity: full HR@10 {popularity:.3f}; random {full_random_hit_rate(catalog):.3f}; "
        f"VBPR recipe {config}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
