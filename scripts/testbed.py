#!/usr/bin/env python
"""Is the synthetic testbed an instrument? Its properties over training seeds, before any attack.

    python scripts/testbed.py sweeps/quick.yaml --seeds 0 1 2
    python scripts/testbed.py sweeps/quick.yaml --seeds 0 1 2 --robust free  # + a robust one
    python scripts/testbed.py sweeps/multimodal_synthetic.yaml --models vbpr freedom lattice

For every seed this computes (or reads back from the sweep's store: the same stages the sweep
runs, so a later ``python -m aipray.sweep SWEEP --seed N`` reuses them) the dataset, the first
stage, the extractor and the sweep's rankers (``--models``: only those named), and prints:

- **what the features carry**: held-out accuracy of linear probes that read each item's shape,
  hue (in sixths of the hue circle) and texture off the extractor's features (a fifth of the
  items held out; majority class beside it); with titles and a CLIP-style extractor, the same
  probes on the text tower's features of the titles (``probe/<attribute>_text``);
- **the rankers against the baselines**: HR@10 (``full/``) and HR@50 (``full50/``) of each
  user's *test* item over the full ranking of warm items, with the HR@10's standard error over
  users and a random ranking's level, for every visual ranker of the sweep, the first-stage BPR,
  a BPR with VBPR's number of factors (the first stage's recipe otherwise), the popularity
  ranker, and the generator's own ranking (``generator``: the synthetic users' true logits, the
  ceiling of what a ranker can learn from the interactions); and the first stage's share of
  test items among its top-C beside popularity's;
- **what the image alone carries**: for every visual ranker, HR@10 over the full ranking when
  every warm item is scored from its image alone, as a cold item is (``image/``; beside
  ``full/random``): the taste a cold item's image can convey, apart from the scale of its score;
- **cold items from the image alone**: for every visual ranker, the mean over cold items of
  their HR@10 among each user's top-C candidates (AIP's yardstick) and of their HR@50 over the
  full ranking (Denoise-to-protect's), shown with their clean images, beside a random ranking's;
  and, for the users who chose each cold item before its interactions were removed, its HR@50
  over the full ranking (``cold_buyers/``, cold-start recall) and its HR@10 among the cold items
  only (``cold_among/``, the item cold-start yardstick: whether the image carries taste even
  where the ranker scores every cold item below the warm ones);
- **how easily the classifier is fooled**: targeted PGD at ε = 8 (10 steps of ε/6, no random
  start, 8-bit rounding) towards the extractor's TAaMR target class (the class it predicts most
  over training interactions), the share of warm items not already of that class it turns; and,
  with ``--robust free`` (or ``adversarial``), the same for the extractor trained robustly with
  the sweep's settings (``adv_eps``: 4 unless the sweep says otherwise). Free AT (Shafahi et al.
  2019, m = 4) costs what standard training costs; Madry's PGD training about ``adv_steps + 1``
  times as much.

Then a summary over seeds (mean, min, max) and the issue's targets: probes >= 0.9; VBPR above
BPR of its size and above the first stage by two standard errors; DVBPR above popularity;
FREEDOM and LATTICE above popularity, BPR and VBPR at HR@10 and at HR@50 (as in their papers);
every ranker's cold items above random by each cold yardstick; first stage above popularity at
top-C; PGD success >= 0.8 standard, <= 0.3 robust.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

try:
    import aipray  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aipray.attacks.base import linf_ascent
from aipray.config import load_sweep
from aipray.data import Catalog
from aipray.data.surrogate import SurrogateConfig, make_surrogate
from aipray.data.synthetic import cold_buyers, make_synthetic, style_labels, true_preferences
from aipray.grid import Component
from aipray.metrics.full_ranking import (
    full_hit_rate,
    full_random_hit_rate,
    model_scores,
    popularity_scores,
)
from aipray.metrics.probe import probe_accuracy
from aipray.metrics.ranking import hit_rates, injected_ranks, random_hit_rate, ranks_among
from aipray.models import MODELS, load_recommender
from aipray.models.extractor import extract_features, load_extractor, read_extractor_info
from aipray.pipeline import stages
from aipray.pixels import to_float
from aipray.protocol import aip
from aipray.store import atomic_dir, done
from aipray.sweep import with_seed

PGD_EPS, PGD_STEPS = 8.0, 10
#: the graph multimodal rankers, judged against popularity, BPR and VBPR as in their papers
GRAPH_RANKERS = {"freedom": "FREEDOM", "lattice": "LATTICE"}


def pgd_success(extractor, catalog: Catalog, target: int, *, limit: int, seed: int) -> float:
    """Share of (at most ``limit``, drawn with ``seed``) warm items not already classified as
    ``target`` that targeted PGD ε = 8 (10 steps of ε/6) turns into ``target``, after 8-bit
    rounding."""
    warm = np.flatnonzero(catalog.warm_mask())
    images = torch.as_tensor(np.asarray(catalog.images[warm])).float() / 255.0
    with torch.no_grad():
        before = torch.cat([extractor(images[i : i + 256]) for i in range(0, len(images), 256)])
    candidates = np.flatnonzero(before.argmax(1).numpy() != target)
    rng = np.random.default_rng(seed)
    pick = rng.choice(candidates, size=min(limit, candidates.size), replace=False)
    x = images[pick]

    def toward_target(x_adv: torch.Tensor, step: int) -> torch.Tensor:
        labels = torch.full((x_adv.shape[0],), target, dtype=torch.long)
        return -torch.nn.functional.cross_entropy(extractor(x_adv), labels, reduction="none")

    hits = 0
    for i in range(0, len(x), 64):
        adv = linf_ascent(
            x[i : i + 64],
            toward_target,
            eps=PGD_EPS,
            steps=PGD_STEPS,
            lr=PGD_EPS / 6 / 255.0,
            method="sign",
        )
        with torch.no_grad():
            hits += int((extractor(adv).argmax(1) == target).sum())
    return hits / max(1, len(x))


@torch.no_grad()
def cold_hit_rates(
    model, catalog: Catalog, paths, device, buyers: tuple[np.ndarray, np.ndarray]
) -> dict[str, float]:
    """Mean over cold items, shown with their clean images, of HR@10 among each user's top-C
    candidates and HR@50 over the full ranking (``cold/``, ``cold_full/``), with a random
    ranking's (``random``), from the ranker's stored undefended context; and the cold-start
    recall (``cold_buyers/``): HR@50 over the full ranking of each cold item among the users
    who chose it before its interactions were removed (``buyers``: ``(users, items)`` pairs),
    mean over the pairs, with a random ranking's; and the item cold-start yardstick
    (``cold_among/``): the same pairs' HR@10 among the cold items only."""
    context = stages.load_context(paths.context_undefended, device)
    full = stages.load_context(paths.context_undefended, device, full=True)
    users = torch.arange(model.n_users, device=device)
    buyer_users = torch.as_tensor(buyers[0], device=device)
    column = {int(item): index for index, item in enumerate(catalog.cold_items)}
    buyer_cols = torch.as_tensor([column[int(i)] for i in buyers[1]], device=device)
    top_c, whole, ranks, cold_scores = [], [], [], []
    for start in range(0, catalog.cold_items.size, 64):
        ids = catalog.cold_items[start : start + 64]
        pixels = to_float(catalog.images[ids], device)
        scores = model.score_images(users, pixels, torch.as_tensor(ids, device=device))
        cold_scores.append(scores)
        top_c.append(hit_rates(injected_ranks(context, scores), (10,))[10])
        ranks.append(injected_ranks(full, scores))
        whole.append(hit_rates(ranks[-1], (50,))[50])
    buyer_ranks = torch.cat(ranks, dim=1)[buyer_users, buyer_cols]
    sizes = full.set_sizes[buyer_users].double() + 1
    among = ranks_among(torch.cat(cold_scores, dim=1), buyer_users, buyer_cols)
    n_cold = catalog.cold_items.size
    return {
        "cold": float(torch.cat(top_c).mean()),
        "cold_random": random_hit_rate(context.set_sizes, (10,))[10],
        "cold_full": float(torch.cat(whole).mean()),
        "cold_full_random": random_hit_rate(full.set_sizes, (50,))[50],
        "cold_buyers": float((buyer_ranks < 50).double().mean()),
        "cold_buyers_random": float((torch.clamp(sizes, max=50) / sizes).mean()),
        "cold_among": float((among < 10).double().mean()),
        "cold_among_random": min(10, n_cold) / n_cold,
    }


def robust_extractor(sweep, trial, paths, device, training: str) -> Path:
    """The sweep's extractor trained robustly (``training``: ``free`` or ``adversarial``, with the
    sweep's ``adv_eps``), stored beside the standard one."""
    config = dataclasses.replace(trial.extractor_config, training=training)
    robust_trial = dataclasses.replace(trial, extractor=Component("extractor", config.arch, config))
    out = stages.stage_paths(sweep, robust_trial).extractor
    stages.compute_stage(
        "extractor", sweep, robust_trial, dataclasses.replace(paths, extractor=out), device
    )
    return out


def rankers(sweep, names: list[str] | None = None) -> dict[str, object]:
    """The sweep's rankers, each with its first trial, in the sweep's order, by name (a ranker
    the sweep trains with several settings once per setting, ``name[key=value]`` with the
    settings that differ); only those named in ``names`` unless it is ``None`` (a name the
    sweep lacks is an error that lists them)."""
    by_config: dict[str, dict[str, object]] = {}
    for trial in sweep.trials():
        by_config.setdefault(trial.model.name, {}).setdefault(trial.model.label, trial)
    unknown = sorted(set(names or ()) - set(by_config))
    if unknown:
        raise SystemExit(
            f"--models {' '.join(unknown)}: not in the sweep; it has {sorted(by_config)}"
        )
    visual = {}
    for name, trials in by_config.items():
        if names is not None and name not in names:
            continue
        configs = [dataclasses.asdict(t.model.config) for t in trials.values()]
        differ = [k for k in configs[0] if len({repr(c[k]) for c in configs}) > 1]
        for trial, config in zip(trials.values(), configs, strict=True):
            tag = ",".join(f"{k}={config[k]}" for k in differ)
            visual[f"{name}[{tag}]" if tag else name] = trial
    return visual


def titled(extractor, catalog: Catalog) -> bool:
    """Whether the extractor has a text tower and the catalog titles for it to read."""
    return bool(getattr(extractor, "has_text", False)) and catalog.titles is not None


def measure(
    sweep, *, robust: str | None, limit: int, models: list[str] | None = None
) -> dict[str, float]:
    device = torch.device("cpu")
    visual = rankers(sweep, models)
    first = next(iter(visual.values()))
    paths = stages.stage_paths(sweep, first)
    # through compute_stage, as a sweep's workers do: the same thread count, so the same
    # stored output under each key
    for kind in ("dataset", "bpr", "candidates", "extractor"):
        stages.compute_stage(kind, sweep, first, paths, device)
    row: dict[str, float] = {}
    catalog = Catalog.load(paths.dataset)
    extractor = load_extractor(paths.extractor, device)
    features = extract_features(extractor, catalog.images, device=device)
    with torch.no_grad():
        text = extractor.text_features(catalog.titles) if titled(extractor, catalog) else None
    for name, labels in style_labels(first.dataset.config).items():
        row[f"probe/{name}"] = probe_accuracy(features, labels)
        row[f"probe/{name}_majority"] = np.bincount(labels).max() / labels.size
        if text is not None:  # what the titles' features carry, by the same probe
            row[f"probe/{name}_text"] = probe_accuracy(text, labels)

    replayed, *buyers = cold_buyers(first.dataset.config)
    if not np.array_equal(replayed.cold_items, catalog.cold_items):
        raise SystemExit("the stored catalog is not the one its config generates")

    def full(name: str, scores_of) -> None:
        for k, kind in ((10, "full"), (50, "full50")):
            row[f"{kind}/{name}"] = full_hit_rate(scores_of, catalog, k=k, held_out="test")

    for name, trial in visual.items():
        model_paths = stages.stage_paths(sweep, trial)
        stages.compute_stage("ranker", sweep, trial, model_paths, device)
        model = load_recommender(model_paths.model, device)
        full(name, aip.served_scores(model, catalog, device=device))
        as_cold = aip.served_scores(model, catalog, device=device, as_cold=True)
        row[f"image/{name}"] = full_hit_rate(as_cold, catalog, k=10, held_out="test")
        stages.compute_stage("context_undefended", sweep, trial, model_paths, device)
        cold = cold_hit_rates(model, catalog, model_paths, device, buyers)
        for kind in ("cold", "cold_full", "cold_buyers", "cold_among"):
            row[f"{kind}/{name}"], row[f"{kind}/random"] = cold[kind], cold[f"{kind}_random"]
    bpr = load_recommender(paths.bpr, device)
    full("bpr_first_stage", model_scores(bpr, catalog, device))
    dim = getattr(visual.get("vbpr", first).model.config, "dim", None)
    if dim is not None:
        small = paths.bpr.with_name(paths.bpr.name + f"-factors{dim}")
        if not done(small):
            config = dataclasses.replace(sweep.first_stage.bpr, factors=dim)
            with stages.torch_threads(stages.stage_threads(sweep)):
                model, info = MODELS.get("bpr").fit(
                    config, catalog, extractor=None, device=device, seed=sweep.seed
                )
            with atomic_dir(small) as tmp:
                model.cpu().save(tmp, {"training": info})
        full("bpr_same_size", model_scores(load_recommender(small, device), catalog))
    full("popularity", popularity_scores(catalog))
    full("generator", generator_scores(first.dataset.config, catalog))
    row["full/random"] = full_random_hit_rate(catalog, k=10)
    row["full50/random"] = full_random_hit_rate(catalog, k=50)
    h = row["full/bpr_first_stage"]  # the standard error of an HR@10 at the first stage's level
    row["full/se"] = float(np.sqrt(h * (1 - h) / catalog.n_users))
    health = stages.first_stage_health(paths)
    row["top_c/bpr"] = health["test_in_top_c"]
    row["top_c/popularity"] = health["popularity_test_in_top_c"]
    target = int(read_extractor_info(paths.extractor)["target_class"])
    row["pgd8/standard"] = pgd_success(extractor, catalog, target, limit=limit, seed=sweep.seed)
    if robust:
        robust_path = robust_extractor(sweep, first, paths, device, robust)
        robust_net = load_extractor(robust_path, device)
        target = int(read_extractor_info(robust_path)["target_class"])
        row["pgd8/robust"] = pgd_success(robust_net, catalog, target, limit=limit, seed=sweep.seed)
    return row


def generator_scores(config, catalog: Catalog):
    """The synthetic users' own logits as a ranker: the marketplace's ceiling."""
    replayed, logits = true_preferences(config)
    if not np.array_equal(replayed.test_items, catalog.test_items):
        raise SystemExit("the stored catalog is not the one its config generates")

    def scores_of(users: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(logits(users.cpu().numpy()), dtype=torch.float32)

    return scores_of


def write_figure(sweep, path: Path, per_row: int = 12) -> None:
    """A PNG of what the extractor learns from and what it is applied to: two rows of surrogate
    images (random classes) above two rows of the marketplace's product images, 4× enlarged."""
    from PIL import Image

    trial = sweep.trials()[0]
    config = trial.extractor_config
    size = trial.dataset.config.image_size
    surrogate, _ = make_surrogate(
        SurrogateConfig(per_class=2, image_size=size, clutter=config.surrogate_clutter)
    )
    catalog = make_synthetic(dataclasses.replace(trial.dataset.config, n_users=50))
    rows = [surrogate[: 2 * per_row], np.asarray(catalog.images[: 2 * per_row])]
    tiles = np.concatenate(rows).reshape(4, per_row, 3, size, size)
    grid = tiles.transpose(0, 3, 1, 4, 2).reshape(4 * size, per_row * size, 3)
    image = Image.fromarray(grid).resize((per_row * size * 4, 4 * size * 4), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    print(f"wrote {path}")


def summary(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"mean": table.mean(), "min": table.min(), "max": table.max()})


def targets(table: pd.DataFrame) -> list[tuple[str, bool, str]]:
    """Each target of the testbed, whether it holds under every seed, and the numbers."""
    out = []
    for name in ("shape", "hue", "texture"):
        col = table[f"probe/{name}"]
        out.append((f"probe {name} >= 0.9", bool((col >= 0.9).all()), f"min {col.min():.3f}"))
    se = table["full/se"]
    if "full/vbpr" in table:
        for ref in ("bpr_same_size", "bpr_first_stage"):
            if ref in {c.split("/")[1] for c in table}:
                gap = table["full/vbpr"] - table[f"full/{ref}"]
                ok = bool((gap >= 2 * se).all())
                bound = f"2 SE <= {2 * se.max():.3f}"
                out.append((f"VBPR > {ref} by 2 SE", ok, f"gaps {_fmt(gap, True)} ({bound})"))
    if "full/dvbpr" in table:
        gap = table["full/dvbpr"] - table["full/popularity"]
        out.append(("DVBPR > popularity", bool((gap > 0).all()), f"gaps {_fmt(gap, True)}"))
        gap = table["full/dvbpr"] - table["full/bpr_first_stage"]
        out.append(("DVBPR - first-stage BPR (reported)", True, f"gaps {_fmt(gap, True)}"))
    for name, label in GRAPH_RANKERS.items():
        for kind, at in (("full", ""), ("full50", " (HR@50)")):
            # one column per setting the sweep trains the ranker with (``name[key=value]``)
            for column in (c for c in table if c.split("[")[0] == f"{kind}/{name}"):
                shown = label + column[len(f"{kind}/{name}") :]
                for ref in ("popularity", "bpr_first_stage", "bpr_same_size", "vbpr"):
                    if f"{kind}/{ref}" in table:
                        gap = table[column] - table[f"{kind}/{ref}"]
                        ok = bool((gap > 0).all())
                        out.append((f"{shown} > {ref}{at}", ok, f"gaps {_fmt(gap, True)}"))
    cold_kinds = {
        "cold": "HR@10 among top-C",
        "cold_full": "HR@50 over the full ranking",
        "cold_buyers": "HR@50 among its held-out buyers",
        "cold_among": "HR@10 among the cold items, for its held-out buyers",
    }
    for column in sorted(c for c in table if c.split("/")[0] in cold_kinds):
        kind, name = column.split("/")
        if name == "random":
            continue
        gap = table[column] - table[f"{kind}/random"]
        what = cold_kinds[kind]
        ok = bool((gap > 0).all())
        out.append((f"{name} cold items above random ({what})", ok, f"gaps {_fmt(gap, True)}"))
    gap = table["top_c/bpr"] - table["top_c/popularity"]
    out.append(
        ("first stage > popularity at top-C", bool((gap > 0).all()), f"gaps {_fmt(gap, True)}")
    )
    col = table["pgd8/standard"]
    out.append(("PGD eps 8 fools >= 0.8 (standard)", bool((col >= 0.8).all()), _fmt(col)))
    if "pgd8/robust" in table:
        col = table["pgd8/robust"]
        out.append(("PGD eps 8 fools <= 0.3 (robust)", bool((col <= 0.3).all()), _fmt(col)))
    return out


def _fmt(values: pd.Series, signed: bool = False) -> str:
    return " / ".join(f"{v:+.3f}" if signed else f"{v:.3f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="none: figure only")
    parser.add_argument(
        "--robust", choices=("free", "adversarial"), default=None, help="also a robust extractor"
    )
    parser.add_argument("--pgd-items", type=int, default=300, help="items PGD attacks per seed")
    parser.add_argument("--figure", type=Path, default=None, help="PNG: surrogate vs catalog")
    parser.add_argument(
        "--models", nargs="+", default=None, help="only these of the sweep's rankers (default: all)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    sweep = load_sweep(args.sweep)
    if args.figure is not None:
        write_figure(sweep, args.figure)
    if not args.seeds:
        return 0
    if sweep.protocol != "aip" or not any(t.dataset.name == "synthetic" for t in sweep.trials()):
        raise SystemExit(f"{args.sweep}: needs an AIP sweep on the synthetic marketplace")
    rankers(sweep, args.models)  # an unknown name fails before anything is trained
    rows = {}
    for seed in args.seeds:
        rows[seed] = measure(
            with_seed(sweep, seed), robust=args.robust, limit=args.pgd_items, models=args.models
        )
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[seed].items()))
    table = pd.DataFrame(rows).T
    table.index.name = "seed"
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(table.T)
        print(summary(table))
    for name, ok, numbers in targets(table):
        print(f"{'holds' if ok else 'MISSED':7} {name}: {numbers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
