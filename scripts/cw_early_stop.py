"""Does C&W's per-image early stop (``abort_early``) save time, and what does it cost in L2?

Pretrains the synthetic marketplace's extractor in-process (as a sweep does), then runs the
targeted C&W L2 with Perceptual-Rec's settings (1000 steps, 5 binary steps, c = 1e-2, κ = 0) on
the same images with the early stop off and on, and prints milliseconds per image, the success
rate after the 8-bit round trip, and the L2 of the images both runs fool::

    python scripts/cw_early_stop.py [--images 32] [--steps 1000] [--binary-steps 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from aipray.attacks import ATTACKS, AttackInputs
from aipray.data.synthetic import SyntheticConfig, make_synthetic
from aipray.models.extractor import ExtractorConfig, make_extractor, popular_class


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--binary-steps", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    catalog = make_synthetic(
        SyntheticConfig(n_users=300, n_items=600, n_cold=10, image_size=args.image_size)
    )
    warm = np.flatnonzero(catalog.warm_mask())
    extractor, info = make_extractor(
        ExtractorConfig(width=0.125, epochs=6),
        np.asarray(catalog.images[warm]),
        catalog.categories[warm],
        seed=args.seed,
    )
    extractor.requires_grad_(False)
    target = popular_class(
        extractor, catalog.images, items=np.flatnonzero(catalog.item_popularity())
    )
    x = torch.as_tensor(np.asarray(catalog.images)).float() / 255
    with torch.no_grad():
        others = torch.nonzero(extractor(x).argmax(1) != target)[: args.images, 0]
    x = x[others]
    print(
        f"extractor held-out accuracy {info.get('holdout_accuracy', float('nan')):.3f}; "
        f"{len(x)} images of other classes than the target {target}; "
        f"{args.steps} steps x {args.binary_steps} binary steps"
    )
    cls = ATTACKS.get("cw")
    out = {}
    for abort in (False, True):
        config = cls.Config(steps=args.steps, binary_steps=args.binary_steps, abort_early=abort)
        attack = cls(config, None, AttackInputs(classifier=extractor, target_class=target))
        start = time.perf_counter()
        adv = attack(x)
        seconds = time.perf_counter() - start
        ok = attack.success(adv)  # after the 8-bit round trip: adv is on the grid
        out[abort] = (adv, ok, seconds)
    both = out[False][1] & out[True][1]
    l2 = {a: (out[a][0] - x).flatten(1).norm(dim=1)[both] for a in out}
    for abort in (False, True):
        adv, ok, seconds = out[abort]
        print(
            f"abort_early={abort!s:5}: {1000 * seconds / len(x):7.1f} ms per image, "
            f"success {ok.float().mean():.3f}, mean L2 on the {int(both.sum())} images both fool "
            f"{l2[abort].mean():.4f} (x255: {255 * l2[abort].mean():.2f})"
        )
    if both.any():
        ratio = float(l2[True].mean() / l2[False].mean())
        longer = int((l2[True] > l2[False] + 1e-6).sum())
        shorter = int((l2[True] < l2[False] - 1e-6).sum())
        print(
            f"early stop: mean L2 x{ratio:.3f}; longer on {longer}, shorter on {shorter} "
            f"of {int(both.sum())} images"
        )


if __name__ == "__main__":
    main()
