"""Shared test setup: Keras's home in a temporary folder (nothing downloads), quiet TensorFlow
with oneDNN's kernels (as the command runs them),
the path of the paper's image set (tests that need it skip when it is absent), and a process
that holds an HDF5 file open."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN's kernels, as the `kerabl` command runs them: tests compare in-process runs with command
# runs in child processes, which must round alike
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="kerabl-keras-home-")

HAYNE50 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-val-hayne50"


@pytest.fixture(scope="session")
def hayne50() -> Path:
    """The paper's 2,500 validation images; skips the test when ../shared is absent."""
    if not (HAYNE50 / "images").is_dir():
        pytest.skip("../shared/data/imagenet-val-hayne50 is absent")
    return HAYNE50


@pytest.fixture
def hold_open():
    """`hold_open(path, seconds)`: another process holds `path` open for reading (HDF5 locks it
    against writers) for `seconds`; returns it once the file is open, kills it after the test."""
    procs = []

    def start(path, seconds: float) -> subprocess.Popen:
        code = (f"import h5py, time; f = h5py.File({str(path)!r}, 'r'); print('open', flush=True);"
                f" time.sleep({seconds})")
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "open"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
