"""Shared test setup: Keras's home in a temporary folder (nothing downloads), quiet TensorFlow,
and the path of the paper's image set (tests that need it skip when it is absent)."""

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="kerabl-keras-home-")

HAYNE50 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-val-hayne50"


@pytest.fixture(scope="session")
def hayne50() -> Path:
    """The paper's 2,500 validation images; skips the test when ../shared is absent."""
    if not (HAYNE50 / "images").is_dir():
        pytest.skip("../shared/data/imagenet-val-hayne50 is absent")
    return HAYNE50
