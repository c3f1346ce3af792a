import subprocess
import sys
from pathlib import Path

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


@pytest.fixture
def run_script():
    """``run_script("grid_cost.py", *args)``: the stdout of ``scripts/<name>`` run from the
    repository root (a non-zero exit fails the test with its stderr)."""
    root = Path(__file__).resolve().parents[1]

    def run(name: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, f"scripts/{name}", *args], cwd=root, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run
