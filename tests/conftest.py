import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
MODELS = ROOT / "models"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def models_dir():
    return MODELS
