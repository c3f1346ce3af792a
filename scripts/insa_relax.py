#!/usr/bin/env python
"""INSA's relaxed top-k temperature against a graph ranker, chosen on warm items, not cold ones.

    python scripts/insa_relax.py sweeps/multimodal_synthetic.yaml --models freedom lattice \\
        --where cold_code=neighbours --relax 1 5 25 100 --seeds 0

A FREEDOM or LATTICE cold item's score depends on its image through a discrete neighbour set;
INSA differentiates a relaxed top-k instead (``relax``: its temperature, in mean similarity
gaps). Too sharp a relaxation gives gradients only to the items at the edge of the set, too soft
a one averages over the whole catalog: the temperature decides how strong the white-box attack
is. Like any attack hyper-parameter it is chosen on data the evaluation does not use: here
``--items`` warm items (a seeded draw) are attacked *as if cold* (scored from their images alone,
:meth:`~aipray.models.base.Recommender.score_images`) with the sweep's INSA settings at
``--eps``, and their HR@50 over each user's full ranking is printed per temperature, beside the
clean images'. Reads the sweep's stored stages (training them if missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

try:
    import aipray  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aipray.config import load_sweep
from aipray.data import Catalog
from aipray.metrics.ranking import hit_rates, injected_ranks
from aipray.models import load_recommender
from aipray.pipeline import stages
from aipray.pixels import to_float
from aipray.protocol import aip
from aipray.sweep import with_seed


def measure(
    sweep, name: str, where: dict[str, str], relaxes, eps: float, n_items: int
) -> list[str]:
    device = torch.device("cpu")

    def matches(trial) -> bool:
        config = trial.model.config
        return all(str(getattr(config, k, None)) == v for k, v in where.items())

    trials = [t for t in sweep.trials() if t.model.name == name and matches(t)]
    if not trials:
        raise SystemExit(f"--models {name} --where {where}: no such ranker in the sweep")
    trial = trials[0]
    insa = next((t.attack for t in sweep.trials() if t.attack.name == "insa"), None)
    if insa is None:
        raise SystemExit("the sweep has no INSA attack to take its settings from")
    paths = stages.stage_paths(sweep, trial)
    for kind in ("dataset", "bpr", "candidates", "extractor", "ranker", "context_undefended"):
        stages.compute_stage(kind, sweep, trial, paths, device)
    model = load_recommender(paths.model, device)
    catalog = Catalog.load(paths.dataset)
    full = stages.load_context(paths.context_undefended, device, full=True)
    rng = np.random.default_rng(sweep.seed)
    ids = np.sort(rng.choice(np.flatnonzero(catalog.warm_mask()), n_items, replace=False))
    x = to_float(catalog.images[ids], device)
    users = torch.arange(model.n_users, device=device)

    @torch.no_grad()
    def hr50(images: torch.Tensor) -> float:
        ranks = injected_ranks(full, model.score_images(users, images))
        return float(hit_rates(ranks, (50,))[50].mean())

    settings = dataclasses.asdict(insa.config)
    kwargs = {k: settings[k] for k in ("epochs", "user_batch", "lr") if k in settings}
    cells = [f"clean {hr50(x):.3f}"]
    for relax in relaxes:
        relaxed = type(model)(**{**model.init_args, "relax": relax})
        relaxed.load_state_dict(model.state_dict())
        relaxed.eval().requires_grad_(False)
        with stages.torch_threads(stages.stage_threads(sweep)):
            attack = aip.attack("insa", relaxed, catalog, eps=eps, **kwargs)
            adversarial = attack(x, torch.as_tensor(ids))
        cells.append(f"relax {relax:g} {hr50(adversarial):.3f}")
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--models", nargs="+", default=["freedom", "lattice"])
    parser.add_argument(
        "--where", nargs="*", default=[], help="KEY=VALUE settings the ranker must have"
    )
    parser.add_argument("--relax", type=float, nargs="+", default=[1.0, 5.0, 25.0, 100.0])
    parser.add_argument("--eps", type=float, default=32.0)
    parser.add_argument("--items", type=int, default=40, help="warm items attacked as if cold")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    bad = [w for w in args.where if "=" not in w]
    if bad:
        raise SystemExit(f"--where {' '.join(bad)}: expected KEY=VALUE")
    where = dict(w.split("=", 1) for w in args.where)
    base = load_sweep(args.sweep)
    print(f"INSA at eps {args.eps:g} on {args.items} warm items scored as cold: full HR@50")
    for seed in args.seeds:
        sweep = with_seed(base, seed)
        for name in args.models:
            cells = measure(sweep, name, where, args.relax, args.eps, args.items)
            print(f"seed {seed} {name:<8} " + ", ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
