"""How many torch CPU threads a stage computes with, wherever it runs (re-exported by
:mod:`aipray.pipeline.stages`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from aipray.config import SweepConfig


def stage_threads(sweep: SweepConfig) -> int:
    """The torch CPU threads every stage computes with: ``resources.train_cpus``, rounded.

    A CPU reduction's float rounding depends on how many threads split it, so a stage trained
    with 2 threads is not the one trained with 1 (DVBPR's loss differs in the 8th digit, its
    chosen epoch can too). The count therefore comes from the sweep, not from the process that
    happens to run the stage: a Ray worker and a script in the driver store the same output
    under the same key."""
    return max(1, round(sweep.resources.train_cpus))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, and restore the process's count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
