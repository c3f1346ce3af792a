"""What a feature space carries: the held-out accuracy of a linear probe.

A probe is a softmax regression trained on standardised features of four fifths of the items
and scored on the rest; if it reads an attribute off the features, the features carry it
linearly, which is what a linear recommender on top of them (VBPR's ``E f``) can use.
"""

from __future__ import annotations

import numpy as np
import torch


def probe_accuracy(features: torch.Tensor, labels: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy (a seeded fifth of the rows) of a linear softmax probe that reads
    ``labels [N]`` (integers from 0) off ``features [N, D]``: 300 full-batch Adam steps (lr 0.01,
    weight decay 1e-4) on standardised features."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(labels.size)
    test, train = order[: labels.size // 5], order[labels.size // 5 :]
    x = (features - features[train].mean(0)) / (features[train].std(0) + 1e-6)
    y = torch.as_tensor(labels)
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], int(labels.max()) + 1)
    opt = torch.optim.Adam(probe.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(probe(x[train]), y[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((probe(x[test]).argmax(1) == y[test]).float().mean())
