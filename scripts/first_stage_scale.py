"""Does a first-stage recipe train at real size? BPR on the synthetic marketplace at AIP's Amazon
Men size (34,244 users, 110,636 items), each recipe's health printed as measured.

    python scripts/first_stage_scale.py                       # full.yaml's recipe and AIP's
    python scripts/first_stage_scale.py --users 5000 --items 16000
    python scripts/first_stage_scale.py --sweep sweeps/quick.yaml  # a sweep's marketplace and BPR

Prints, per recipe: validation HR@10 over the full ranking (what training selects on), HR@10 of the
validation item among all warm items (and the popularity ranker's), the share of test items in
the top-C (and the popularity ranker's), the mean user-vector norm and the training time. Images
are tiny (BPR never sees them), except with ``--sweep``: the sweep's own synthetic marketplace,
first-stage recipe and C, so that its stage's numbers are reproduced.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

try:
    import aipray  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aipray.config import load_sweep
from aipray.data.catalog import Catalog
from aipray.data.synthetic import SyntheticConfig, make_synthetic
from aipray.models.bpr import BPRConfig
from aipray.protocol import aip

RECIPES = {
    # sweeps/full.yaml: Adam, BPR-Opt's λ on each triple's rows
    "full.yaml": BPRConfig(factors=64, lr=0.01, reg=0.03, optimizer="adam", epochs=20),
    # AIP's: SGD lr 0.01 on the batch-mean loss, λ 1e-3
    "AIP (SGD)": BPRConfig(factors=64, lr=0.01, reg=1e-3, optimizer="sgd", epochs=20),
    # candidates for real size: a smaller λ (rare items' rows are seldom sampled) and more steps
    "adam-reg0.003-b1024": BPRConfig(
        factors=64, lr=0.01, reg=0.003, optimizer="adam", epochs=20, batch_size=1024
    ),
    "adam-reg0.01-b1024": BPRConfig(
        factors=64, lr=0.01, reg=0.01, optimizer="adam", epochs=20, batch_size=1024
    ),
    "adam-reg0.1": BPRConfig(factors=64, lr=0.01, reg=0.1, optimizer="adam", epochs=20),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=34244)
    parser.add_argument("--items", type=int, default=110636)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument(
        "--recipes", default="full.yaml,AIP (SGD)", help=f"comma-separated: {', '.join(RECIPES)}"
    )
    parser.add_argument(
        "--catalog",
        type=Path,
        default=None,
        help="folder to keep the generated marketplace in and reuse it from (5 min to make)",
    )
    parser.add_argument(
        "--sweep",
        type=Path,
        default=None,
        help="use this sweep's synthetic marketplace, first-stage recipe and C instead",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    recipes = {name: RECIPES[name] for name in args.recipes.split(",")}
    if args.sweep is not None:
        sweep = load_sweep(args.sweep)
        synthetic = [d for d in sweep.datasets if d.name == "synthetic"]
        if not synthetic:
            raise SystemExit(f"--sweep {args.sweep}: has no synthetic dataset")
        catalog = make_synthetic(synthetic[0].config)
        recipes = {f"{sweep.name} first stage": sweep.first_stage.bpr}
        args.candidates = sweep.first_stage.candidates
    elif args.catalog is not None and (args.catalog / "catalog.json").is_file():
        catalog = Catalog.load(args.catalog)
    else:
        catalog = make_synthetic(
            SyntheticConfig(
                n_users=args.users, n_items=args.items, n_cold=1000, image_size=16, seed=0
            )
        )
        if args.catalog is not None:
            catalog.save(args.catalog)
    print(
        f"synthetic marketplace: {catalog.n_users} users, {catalog.n_items} items, "
        f"{catalog.train_items.size} training interactions ({time.perf_counter() - start:.0f}s)",
        flush=True,
    )
    for name, config in recipes.items():
        start = time.perf_counter()
        first = aip.first_stage(catalog, config, candidates=args.candidates, seed=0)
        seconds = time.perf_counter() - start
        h = first.health
        norm = float(first.model.user_emb.weight.detach().norm(dim=1).mean())
        print(
            f"{name}: val HR@10 {h['val_hr_at_10']:.3f} (random {h['val_random_hr_at_10']:.3f}), "
            f"full HR@10 {h['full_hr_at_10']:.3f} "
            f"(popularity {h['full_popularity_hr_at_10']:.3f}), "
            f"test item in top-{int(h['C'])} {h['test_in_top_c']:.3f} "
            f"(popularity {h['popularity_test_in_top_c']:.3f}), mean user norm {norm:.3g}, "
            f"{seconds:.0f}s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
