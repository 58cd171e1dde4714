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
