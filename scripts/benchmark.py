#!/usr/bin/env python
"""Time aipray's algebra against the straightforward per-user / per-item way, on the same machine
and the same inputs, and print the measured ratios.

    python scripts/benchmark.py [--users 4000] [--items 64] [--candidates 1000] [--device cpu]

1. AlexRank INSA objective + gradient for a batch of images over all users: the weighted form
   (one distance per profile item) vs a loop over users (one objective per user, as the authors'
   code did), same value checked;
2. VBPR INSA: (Σ_u θ_u)·E Φ(x) vs Σ_u θ_u·E Φ(x) per user;
3. ranking injected items: one ``searchsorted`` over sorted candidate scores vs an argsort of
   every user's set per item (the reference evaluation).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

try:
    import aipray  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aipray.metrics.ranking import CandidateScores, hit_rates, injected_ranks
from aipray.models.alexrank import AlexRank
from aipray.models.extractor import build_extractor, make_spec
from aipray.models.vbpr import VBPR


def timed(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def world(n_users: int, n_items: int, image_size: int, device: torch.device):
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 12, size=n_users)  # Amazon-like: a few items per user
    items = np.concatenate([rng.choice(n_items, size=c, replace=False) for c in counts])
    indptr = np.concatenate([[0], np.cumsum(counts)])
    spec = make_spec(
        "alexnet", 8, layout="aipray", input_size=None, image_size=image_size, width=0.25
    )
    torch.manual_seed(0)
    ext = build_extractor(spec).eval().requires_grad_(False).to(device)
    images = rng.integers(0, 256, size=(n_items, 3, image_size, image_size), dtype=np.uint8)
    alexrank = AlexRank.from_profiles(indptr, items, n_items, ext, images).eval().to(device)
    vbpr = VBPR.on(ext, n_users, n_items, 100).eval().requires_grad_(False).to(device)
    torch.nn.init.normal_(vbpr.theta_user.weight, std=0.1)
    torch.nn.init.normal_(vbpr.E.weight, std=0.1)
    return indptr, items, alexrank, vbpr


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    """Equal up to float32 summation order, relative to the largest entry."""
    return bool((a - b).abs().max() <= tol * b.abs().max())


def grad_of(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(objective(x).sum(), x)
    return g


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=3000, help="catalog items")
    parser.add_argument("--batch", type=int, default=16, help="attacked images per batch")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--ranked", type=int, default=32, help="injected items to rank")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_grad_enabled(True)
    indptr, items, alexrank, vbpr = world(args.users, args.items, args.image_size, device)
    users = torch.arange(args.users, device=device)
    x = torch.rand(args.batch, 3, args.image_size, args.image_size, device=device)
    rows: list[tuple[str, float, float]] = []

    # 1 AlexRank: weighted sum over profile items vs one objective per user
    t_fast, g_fast = timed(lambda: grad_of(lambda xa: alexrank.preference(users, xa), x))

    def per_user(xa: torch.Tensor) -> torch.Tensor:
        f = alexrank.extractor.features(xa)
        total = xa.new_zeros(xa.shape[0])
        feats = alexrank.profile_features
        for u in range(args.users):
            mine = torch.as_tensor(
                np.searchsorted(
                    alexrank.profile_items.cpu().numpy(), items[indptr[u] : indptr[u + 1]]
                ),
                device=device,
            )
            total = total - torch.cdist(f, feats[mine]).mean(1)
        return total

    t_slow, g_slow = timed(lambda: grad_of(per_user, x), repeat=1)
    assert close(g_fast, g_slow), "AlexRank gradients differ"
    rows.append(("AlexRank INSA objective+gradient, all users", t_slow, t_fast))

    # 2 VBPR: linear objective vs per-user dot products
    t_fast, g_fast = timed(lambda: grad_of(lambda xa: vbpr.preference(users, xa), x))

    def vbpr_per_user(xa: torch.Tensor) -> torch.Tensor:
        emb = vbpr.E(vbpr.extractor.features(xa))
        return sum(emb @ vbpr.theta_user.weight[u] for u in range(args.users))

    t_slow, g_slow = timed(lambda: grad_of(vbpr_per_user, x), repeat=1)
    assert close(g_fast, g_slow), "VBPR gradients differ"
    rows.append(("VBPR INSA objective+gradient, all users", t_slow, t_fast))

    # 3 ranking: searchsorted over sorted candidates vs per-item argsort of every user's set
    gen = torch.Generator().manual_seed(1)
    fixed = torch.randn(args.users, args.candidates + 1, generator=gen)
    valid = torch.ones_like(fixed, dtype=torch.bool)
    injected = torch.randn(args.users, args.ranked, generator=gen)
    ctx = CandidateScores.build(fixed, valid, fixed[:, -1])
    t_fast, hr_fast = timed(lambda: hit_rates(injected_ranks(ctx, injected))[5])

    def argsort_hr() -> torch.Tensor:
        out = torch.zeros(args.ranked)
        for b in range(args.ranked):
            full = torch.cat([fixed, injected[:, b : b + 1]], dim=1)
            order = torch.argsort(-full, dim=1, stable=True)
            pos = (order == full.shape[1] - 1).float().argmax(1)
            out[b] = (pos < 5).float().mean()
        return out

    t_slow, hr_slow = timed(argsort_hr, repeat=1)
    assert torch.allclose(hr_fast, hr_slow), "hit rates differ"
    rows.append(
        (f"HR@5 of {args.ranked} items, {args.users} users x {args.candidates}", t_slow, t_fast)
    )

    print(f"device {device}; {args.users} users, batch of {args.batch} images")
    print(f"{'what':55s} {'reference s':>12s} {'aipray s':>10s} {'speed-up':>9s}")
    for what, slow, fast in rows:
        print(f"{what:55s} {slow:12.4f} {fast:10.4f} {slow / fast:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
