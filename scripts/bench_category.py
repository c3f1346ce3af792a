#!/usr/bin/env python
"""Time CHR@K / nCDCG@K over full rankings at Perceptual-Rec Amazon Men size, and measure memory.

    python scripts/bench_category.py [--users 24379] [--items 7371] [--train 89020]
                                     [--chunks 256 1024 4096] [--device cpu]

The world is random but shaped like the real one: 24,379 users × 7,371 items, 89,020 training
interactions (long-tailed users and items, no cold items, validation and test items rankable),
VBPR-like scores ``β_i + γ_u·γ_i + θ_u·(E f_i)`` with 100-d embeddings and a 100-d visual term,
and one origin category holding ~2 % of the items. The catalog has 1×1 images (the metric never
reads them). For each chunk size, :func:`aipray.metrics.category.category_ranking` is timed for
K up to 100 (best of ``--repeat`` runs).

Memory, what is measured: the process's resident-set high-water mark (``VmHWM`` from
``/proc/self/status``), reset just before each call by writing ``5`` to ``/proc/self/clear_refs``
(Linux); so "peak RSS" is the largest RSS of the whole process *during* the call (Python, torch,
the world's arrays included) and "Δ peak" that peak minus the RSS just before the call, i.e. what
the metric itself added. Without ``clear_refs`` (not Linux) the column falls back to
``ru_maxrss``, the high-water since the process started. The spec's targets: ≤ 2 GB, ≤ 60 s.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import aipray  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aipray.data.catalog import Catalog
from aipray.metrics.category import category_ranking

MB = 1024 * 1024


def status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or ``None``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the RSS high-water mark (Linux ``clear_refs``); whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_bytes(reset_ok: bool) -> int:
    if reset_ok and (hwm := status_kb("VmHWM")) is not None:
        return hwm * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def world(n_users: int, n_items: int, n_train: int, share: float, seed: int):
    """The catalog, a ``scores_of`` and the categories of a VBPR-like random world."""
    rng = np.random.default_rng(seed)
    # users: at least one training item each, long-tailed counts (capped) summing to n_train
    weight = np.minimum(rng.zipf(2.0, size=n_users), 300).astype(np.float64)
    counts = 1 + rng.multinomial(n_train - n_users, weight / weight.sum())
    while (over := counts > n_items // 2).any():  # keep each user's items drawable
        spare = int((counts[over] - n_items // 2).sum())
        counts[over] = n_items // 2
        counts += rng.multinomial(spare, np.full(n_users, 1 / n_users))
    assert counts.sum() == n_train
    popularity = rng.zipf(1.6, size=n_items).astype(np.float64)
    popularity /= popularity.sum()
    users = np.repeat(np.arange(n_users), counts)
    items = np.empty(n_train, dtype=np.int64)
    start = 0
    for c in counts:  # distinct items per user, drawn by popularity
        items[start : start + c] = rng.choice(n_items, size=c, replace=False, p=popularity)
        start += c
    n_classes = 50
    categories = rng.integers(1, n_classes, size=n_items)
    origin = 0
    categories[rng.choice(n_items, size=round(share * n_items), replace=False)] = origin
    catalog = Catalog(
        name="bench_amazon_men_5core",
        train_users=users.astype(np.int64),
        train_items=items,
        val_items=rng.choice(n_items, size=n_users, p=popularity).astype(np.int64),
        test_items=rng.choice(n_items, size=n_users, p=popularity).astype(np.int64),
        cold_items=np.zeros(0, dtype=np.int64),
        categories=categories.astype(np.int64),
        images=np.zeros((n_items, 3, 1, 1), dtype=np.uint8),
    )
    g = torch.Generator().manual_seed(seed)
    dim = 100
    gamma_u = torch.randn(n_users, dim, generator=g) * 0.1
    theta_u = torch.randn(n_users, dim, generator=g) * 0.1
    gamma_i = torch.randn(n_items, dim, generator=g) * 0.1
    features = torch.randn(n_items, 2048, generator=g).relu()  # ResNet50-like pooled features
    visual = features @ (torch.randn(2048, dim, generator=g) * 0.01)  # E f_i, once per item
    beta_i = torch.as_tensor(np.log1p(catalog.item_popularity()), dtype=torch.float32) * 0.1

    def scores_of(u: torch.Tensor) -> torch.Tensor:
        return beta_i + gamma_u[u] @ gamma_i.T + theta_u[u] @ visual.T

    return catalog, scores_of, categories, origin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=24_379)
    parser.add_argument("--items", type=int, default=7_371)
    parser.add_argument("--train", type=int, default=89_020, help="training interactions")
    parser.add_argument("--share", type=float, default=0.02, help="origin category's item share")
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument("--chunks", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    catalog, scores_of, categories, origin = world(
        args.users, args.items, args.train, args.share, args.seed
    )
    built = time.perf_counter() - t0
    baseline = (status_kb("VmRSS") or 0) * 1024
    n_origin = int((categories == origin).sum())
    dense = args.users * args.items
    print(
        f"world: {catalog.n_users:,} users x {catalog.n_items:,} items, "
        f"{catalog.train_items.size:,} training interactions, origin category {n_origin} items "
        f"({n_origin / catalog.n_items:.1%}); built in {built:.1f} s"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
        f"ks {args.ks}. For scale: a dense users x items float32 matrix is "
        f"{dense * 4 / MB:,.0f} MB, its int64 argsort {dense * 8 / MB:,.0f} MB."
    )
    print(f"RSS before any metric call (Python + torch + the world): {baseline / MB:,.0f} MB")
    rows = []
    result = None
    for chunk in args.chunks:
        best, peak, added = float("inf"), 0, 0
        for _ in range(args.repeat):
            before = (status_kb("VmRSS") or 0) * 1024
            reset_ok = reset_peak()
            start = time.perf_counter()
            result = category_ranking(
                scores_of, catalog, categories, origin, ks=args.ks, chunk=chunk, device=args.device
            )
            best = min(best, time.perf_counter() - start)
            high = peak_bytes(reset_ok)
            peak, added = max(peak, high), max(added, high - before)
        rows.append((chunk, best, peak, added, reset_ok))

    print()
    print(f"{'chunk':>6s} {'wall s (best)':>14s} {'peak RSS MB':>12s} {'Δ peak MB':>10s}")
    for chunk, wall, peak, added, reset_ok in rows:
        note = "" if reset_ok else "  (ru_maxrss: since process start)"
        print(f"{chunk:6d} {wall:14.2f} {peak / MB:12.0f} {added / MB:10.0f}{note}")
    print()
    assert result is not None
    print("means (origin category):  " + "  ".join(f"{k}" for k in args.ks))
    for metric in ("chr_count", "chr", "ncdcg"):
        values = "  ".join(f"{result['mean'][f'{metric}@{k}']:.4f}" for k in args.ks)
        print(f"  {metric + '@K':12s} {values}")
    ok_time = all(wall <= 60 for _, wall, _, _, _ in rows)
    ok_mem = all(peak <= 2 * 1024 * MB for _, _, peak, _, _ in rows)
    print(
        f"targets: wall <= 60 s {'met' if ok_time else 'MISSED'}; "
        f"peak RSS <= 2 GB {'met' if ok_mem else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
