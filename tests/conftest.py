import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - code under test may use the legacy global generator


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of many tiny steps: more threads only add contention on
    a shared 2-core machine (a 0.5 s test took 10–27 s with the default)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
