"""The linear probe that tells what a feature space carries (scripts/testbed.py)."""

from __future__ import annotations

import numpy as np
import torch

from aipray.metrics.probe import probe_accuracy


def test_probe_reads_a_linearly_coded_attribute_and_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=500)
    noise = torch.as_tensor(rng.normal(size=(500, 16)), dtype=torch.float32)
    coded = noise.clone()
    coded[:, :4] += 6.0 * torch.nn.functional.one_hot(torch.as_tensor(labels), 4)
    assert probe_accuracy(coded, labels) > 0.97
    # held out: features that say nothing about the labels read at about chance (0.25)
    assert probe_accuracy(noise, labels) < 0.4
    assert probe_accuracy(coded, labels) == probe_accuracy(coded, labels)  # seeded
