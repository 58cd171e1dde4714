import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the `reference` helper module
torch.set_num_threads(min(2, os.cpu_count() or 1))

import mobilenets  # noqa: E402

ALL_MODELS = mobilenets.list_models()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: on a shared 2-core machine two
    spinning OpenMP threads make them many times slower (each parallel region waits for a
    descheduled peer), and in-process runs there compare only with each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
