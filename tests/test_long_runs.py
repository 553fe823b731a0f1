"""Long runs as they really run: progress in a redirected log, the activation cache sized before
it is written, a study without a cache, a full disk (a small tmpfs: mounting needs root, which CI
has; elsewhere those tests skip and say why) and the reruns after it, the lock file and a quiet
start. Real digits in class folders on the demo model."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from kerabl.activations import cache_bytes, layer_shapes, record_activations
from kerabl.cli import app
from kerabl.data import digits_imageset
from kerabl.models import load_network
from kerabl.progress import progress_line, progress_bar
from kerabl.space import FILE_EXTRA_BYTES, WRITE_MARGIN_BYTES, chunked_bytes, human_bytes, no_space_file, no_space_line
from test_reliability import write_digits

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--grid", "2x2", "--probe-fits", "2", "--heldout-folds", "2", "--workers", "1",
        "--preprocess", "none", "--model", "demo"]
Z_FAST = ["--greedy-steps", "2", "--greedy-seeds", "1", "--layers", "conv_3,conv_5,dense_1"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def quiet_env() -> dict:
    """The environment of a command as a user starts it (kerabl quiets TensorFlow itself)."""
    return {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
            "PYTHONPATH": str(ROOT)}


def kerabl(*args, stdout=subprocess.PIPE) -> subprocess.Popen:
    env = quiet_env()
    return subprocess.Popen([sys.executable, "-m", "kerabl", *map(str, args)], env=env,
                            stdout=stdout, stderr=subprocess.PIPE, text=True)


def run(*args, **kw) -> tuple[int, str, str]:
    proc = kerabl(*args, **kw)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("synsets"), classes=(0, 1, 2), per_class=6)


def inputs(images: Path) -> list:
    return ["--images", images, "--class-index", images.with_suffix(".json")]


def export(results: Path) -> str:
    out = results.with_suffix(".csv")
    done = invoke("export", results, "--out", out)
    assert done.exit_code == 0, done.output
    return out.read_text()


# --- progress off a terminal -------------------------------------------------------------------

def test_progress_off_a_terminal_is_plain_lines(capsys):
    with progress_bar("pairs", 3, every=0) as advance:        # a line per step
        for _ in range(3):
            advance(1)
    with progress_bar("images", 100, done=40, every=3600) as advance:   # only the last line
        advance(60)
    with progress_bar("units", 5, every=3600, transient=True) as advance:   # nothing
        advance(5)
    with progress_bar("off", 5, enabled=False, every=0) as advance:
        advance(5)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "pairs 1/3 (33 %)", "pairs 2/3 (66 %)", "pairs 3/3 (100 %)", "images 100/100 (100 %)"]
    assert "left" in lines[0] and lines[2].endswith(", done")
    # the estimate counts this run's pace only: 2 of 10 done in 60 s, 5 left -> 150 s
    assert progress_line("x", 5, 10, 60.0, 2) == "x 5/10 (50 %), elapsed 0:01:00, about 0:02:30 left"


@pytest.mark.slow
def test_a_redirected_study_log_grows_while_it_runs(images, tmp_path):
    log = tmp_path / "study.log"
    with open(log, "w") as fh:
        proc = kerabl("study", "--out", tmp_path / "out", *inputs(images), *FAST, stdout=fh)
        seen = []
        while proc.poll() is None:
            lines = [l for l in log.read_text().splitlines() if l.startswith("H study: class x")]
            if lines and (not seen or seen[-1] != len(lines)):
                seen.append(len(lines))
            time.sleep(0.1)
        assert proc.wait() == 0, proc.stderr.read()
    final = log.read_text().splitlines()
    assert "H study: class x layer 21/21 (100 %)" in "\n".join(final)
    # read while the run went on: more than one length, the first before the last pair
    assert len(seen) >= 2 and seen[0] < 21, seen


# --- the cache's size, a run without it ----------------------------------------------------------

def test_cache_estimate_is_the_file_size_within_ten_percent_and_64_kB(tmp_path):
    net, imageset = load_network("demo"), digits_imageset()
    said = []
    for unit, layers in (("element", ["conv_1", "conv_5", "dense_2"]), ("channel", ["conv_3"])):
        path = tmp_path / f"{unit}.h5"
        record_activations(net, imageset, layers, path, unit=unit, progress=False, log=said.append)
        estimate = cache_bytes(len(imageset.labels), layer_shapes(net.model, layers), unit)
        size = path.stat().st_size
        assert 0 <= estimate - size < 0.1 * size + FILE_EXTRA_BYTES, (estimate, size)
        assert said[-1].startswith(f"activation cache: {human_bytes(estimate)} (450 images")
    # VGG16's block1_conv1, 100 images: HDF5 stores 128 rows of chunks (1.64 GB, as measured)
    assert chunked_bytes(100, [224 * 224 * 64], 4, 32, 16384) == pytest.approx(1.6443e9, rel=1e-4)


@pytest.mark.slow
def test_a_study_without_a_cache_equals_one_with_it(images, tmp_path):
    cached = invoke("study", "--out", tmp_path / "cached", *inputs(images), *FAST, "--no-progress")
    assert cached.exit_code == 0, cached.output
    none = invoke("study", "--out", tmp_path / "none", *inputs(images), *FAST, "--no-progress",
                  "--cache", "none")
    assert none.exit_code == 0, none.output
    assert "no activation cache" in none.output
    assert sorted(p.name for p in (tmp_path / "none").iterdir()) == ["h_results.h5"]
    assert export(tmp_path / "none" / "h_results.h5") == export(tmp_path / "cached" / "h_results.h5")


# --- a full disk --------------------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(folder: Path, megabytes: int):
    """A tmpfs of `megabytes` at `folder`, unmounted afterwards; skips where mounting is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs",
                           str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root (CI runs as root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """A ballast file filling `folder`'s file system but `leave` bytes."""
    ballast = folder / "ballast"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(ballast, "wb") as fh:
        fh.truncate(0)
        os.posix_fallocate(fh.fileno(), 0, max(free - leave, 0))
    return ballast


def one_no_space_line(code: int, err: str, file: str):
    assert code == 2, err[-3000:]
    lines = err.strip().splitlines()        # kerabl's notes, then the one error line
    assert "Traceback" not in err and lines[-1].startswith("error: no space left on "), err[-3000:]
    assert [line for line in lines if line.startswith("error")] == lines[-1:], err[-3000:]
    assert file in lines[-1] and "free space and rerun" in lines[-1], lines[-1]


def test_no_space_file_reads_h5py_and_os_errors():
    h5 = RuntimeError("Can't decrement id ref count (file write failed: time = x, filename = "
                      "'/mnt/out/a.h5.partial', file descriptor = 4, errno = 28, error message "
                      "= 'No space left on device', buf = 0x1)")
    assert no_space_file(h5) == "/mnt/out/a.h5.partial"
    assert no_space_file(OSError(28, "No space left on device", "/mnt/x.csv")) == "/mnt/x.csv"
    try:
        try:
            raise h5
        except RuntimeError:
            raise KeyError("closing failed")
    except KeyError as chained:
        assert no_space_file(chained) == "/mnt/out/a.h5.partial"
    assert no_space_file(OSError(13, "Permission denied", "x")) is None
    assert no_space_line("/").startswith("no space left on / writing /: free space and rerun")


@pytest.mark.slow
def test_a_cache_too_large_stops_before_writing_anything(tmp_path):
    with tmpfs(tmp_path / "fs", 40) as fs:        # the demo's default cache: 63 MB
        code, out, err = run("study", "--out", fs / "out", "--no-progress")
        assert code == 2 and out == "", err
        assert err.startswith("error: the activation cache (63.3 MB) does not fit in the ")
        assert "--cache none" in err and len(err.strip().splitlines()) == 1
        assert not (fs / "out").exists()


def patched(margin: int, *args) -> tuple[int, str, str]:
    """A command whose size check passes as if the disk were large (another process fills it
    after the check) and whose writes keep `margin` bytes free (0: HDF5 meets the full disk)."""
    code = ("import sys, kerabl.activations as a, kerabl.space as s; "
            f"a.check_free_space = lambda *x, **k: None; s.WRITE_MARGIN_BYTES = {margin}; "
            "from kerabl.cli import main; sys.argv[0] = 'kerabl'; main()")
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], text=True,
                          capture_output=True, env=quiet_env(), timeout=600)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_every_partial_resumes(images, tmp_path):
    """The disk fills while the activations, the H results and the Z results are written: one
    line, exit 2, no crash; a rerun with space resumes (or redoes, saying so) each partial, and
    its exports equal an undisturbed run's."""
    whole = tmp_path / "whole"
    layers = ["conv_1", "dense_2"]         # an 18-image cache of 2.1 MB, 16 kB of it dense_2
    h_args = [*inputs(images), *FAST, "--no-progress", "--layers", ",".join(layers)]

    def cache(out: Path) -> list:     # batches of 4: the same batches resumed or whole
        return ["activations", "--out", out / "activations.h5", *inputs(images), "--preprocess",
                "none", "--layers", ",".join(layers), "--no-progress", "--batch-size", "4"]

    assert run(*cache(whole))[0] == 0
    assert run("study", "--out", whole, *h_args)[0] == 0
    z_args = ["units", *inputs(images), "--preprocess", "none", *Z_FAST, "--no-progress"]
    assert run(*z_args, "--out", whole)[0] == 0
    with tmpfs(tmp_path / "fs", 1) as fs:
        out = fs / "out"
        code, _, err = patched(0, *cache(out))      # HDF5 meets the full disk mid-write
        one_no_space_line(code, err, str(out / "activations.h5.partial"))
        subprocess.run(["mount", "-o", "remount,size=8m", str(fs)], check=True)
        code, log, err = run(*cache(out))
        assert code == 0, err
        assert "resuming" in err or "discarding" in err, err
        # the disk fills while the pairs are written: the run stops before HDF5 meets it
        ballast = fill(fs, WRITE_MARGIN_BYTES + (40 << 10))
        code, log, err = run("study", "--out", out, *h_args)
        one_no_space_line(code, err, str(out / "h_results.h5.partial"))
        assert (out / "h_results.h5.partial").exists()
        ballast.unlink()
        code, log, err = run("study", "--out", out, *h_args)
        assert code == 0, err
        assert export(out / "h_results.h5") == export(whole / "h_results.h5")
        # the Z study stopped after its first layer by HDF5's own error (no margin kept): one
        # line; the rerun keeps what reads back whole, or starts afresh where the file's own
        # index was cut (HDF5's "addr overflow"), saying which
        ballast = fill(fs, 300 << 10)
        code, _, err = patched(0, *z_args, "--out", out)
        one_no_space_line(code, err, str(out / "z_results.h5.partial"))
        ballast.unlink()
        code, log, err = run(*z_args, "--out", out)
        assert code == 0, err
        partial = out / "z_results.h5.partial"
        assert f"resuming {partial}" in log or f"discarding {partial} (unreadable" in log, log
        assert export(out / "z_results.h5") == export(whole / "z_results.h5")
        assert not (out / ".kerabl.lock").exists()


# --- the end of a run ---------------------------------------------------------------------------

@pytest.mark.slow
def test_units_starts_quietly_and_a_finished_run_leaves_no_lock(images, tmp_path):
    code, out, err = run("units", "--out", tmp_path, *inputs(images), "--preprocess", "none",
                         *Z_FAST[:4], "--layers", "conv_5", "--no-progress")
    assert code == 0 and "results:" in out, err
    assert err == ""     # no oneDNN / CUDA / absl start-up lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z_results.h5"]


def test_a_stopped_run_leaves_no_lock_and_the_next_one_runs(images, tmp_path):
    bad = invoke("study", "--out", tmp_path, *inputs(images), *FAST, "--grid", "100x100",
                 "--no-progress")
    assert bad.exit_code == 2
    assert not list(tmp_path.iterdir())
    from kerabl.lock import output_lock

    with output_lock(tmp_path / "a", "kerabl study"):
        (tmp_path / "a" / "h_results.h5").write_text("x")
        assert (tmp_path / "a" / ".kerabl.lock").exists()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["h_results.h5"]
    with output_lock(tmp_path / "a", "kerabl study"):    # taken again after its file went
        pass


def test_an_unreadable_h_partial_is_discarded_with_a_word_a_final_file_is_not(tmp_path):
    from kerabl.errors import KerablError
    from kerabl.hayne.results import HResultsWriter
    from test_results import CONFIG, LAYOUT

    path = tmp_path / "h_results.h5"
    HResultsWriter(path, config=CONFIG, **LAYOUT)
    partial = tmp_path / "h_results.h5.partial"
    partial.write_bytes(partial.read_bytes()[:3000])      # cut off mid-write
    said = []
    writer = HResultsWriter(path, config=CONFIG, log=said.append, **LAYOUT)
    assert len(said) == 1 and said[0].startswith(f"discarding {partial} (unreadable"), said
    assert not writer.complete and not any(writer.is_done(*p) for p in writer.pairs())
    partial.rename(path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(KerablError, match="is damaged .*: delete it and rerun"):
        HResultsWriter(path, config=CONFIG, **LAYOUT)


def test_a_pair_too_large_for_the_memory_stops_before_the_cache(images, tmp_path, monkeypatch):
    import kerabl.hayne.study as study

    monkeypatch.setattr(study, "available_memory", lambda: 100_000)
    result = invoke("study", *inputs(images), *FAST, "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    # 18 images (3 classes x 6), conv_1's 32 x 32 x 16 element units, float32
    assert line == ("error: a class x layer pair holds 1.18 MB of activations (18 images x 16384 "
                    "units of conv_1) and 100 kB of memory is available: free memory, record "
                    "channel units (--unit channel), study fewer or later layers (--layers), or "
                    "take the other images from the studied classes only (--other-images studied)")
    assert not (tmp_path / "out" / "activations.h5").exists()
    assert not list((tmp_path / "out").glob("*.partial"))

    monkeypatch.setattr(study, "available_memory", lambda: 1)
    result = invoke("study", *inputs(images), *FAST, "--out", tmp_path / "out", "--no-progress",
                    "--shard", "6/7")        # pairs k = class * 7 + layer: the 7th layer only
    assert result.exit_code == 2, result.output
    assert "(18 images x 64 units of dense_2)" in result.output.strip().splitlines()[-1]

    monkeypatch.setattr(study, "available_memory", lambda: None)     # not known: no check
    result = invoke("study", *inputs(images), *FAST, "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output
