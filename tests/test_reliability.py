"""Nothing lost, nothing silently wrong, one line per mistake: each bad input and interruption of
the command line on a tiny image set (real digits written as WNID-named class folders, mapped to
the demo model's outputs by a class index),
answered with one line and exit status 2, or resumed to the numbers of an uninterrupted run."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import kerabl.hayne.study
from kerabl import imagenet
from kerabl.cli import app
from kerabl.data import digits_split, synset_imageset

SMALL = ["--grid", "2x2", "--probe-fits", "2", "--heldout-folds", "2", "--no-progress",
         "--layers", "conv_5,dense_2", "--workers", "1", "--preprocess", "none"]
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def wnid(index: int) -> str:
    return next(w for w, i in imagenet._positions().items() if i == index)


def write_digits(folder: Path, classes=(0, 1, 2), per_class=4, offset=0) -> Path:
    """Digits as 32 x 32 PNGs in WNID-named class folders (class d -> the WNID of ImageNet index
    d), with FOLDER.json mapping each folder to the demo's output d (`--class-index`)."""
    _, _, x, y = digits_split()
    index = folder.with_suffix(".json")
    known = json.loads(index.read_text()) if index.exists() else {}
    index.write_text(json.dumps({**known, **{wnid(d): int(d) for d in classes}}))
    for d in classes:
        (folder / wnid(d)).mkdir(parents=True, exist_ok=True)
        images = x[y == d][offset:offset + per_class]
        for k, image in enumerate(images):
            Image.fromarray((image > 0.5).astype(np.uint8)).save(folder / wnid(d) / f"img{k}.png")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("synsets"))


def study(images, out, *args):
    return invoke("study", "--out", out, "--images", images, "--model", "demo",
                  "--class-index", images.with_suffix(".json"), *SMALL, *args)


def arrays(path: Path, names=("deficit", "probe", "rank_before", "rank_after")) -> dict:
    with h5py.File(path, "r") as f:
        return {n: f[n][()] for n in names}


@pytest.mark.slow
def test_replaced_images_recompute_and_equal_a_fresh_run(tmp_path):
    folder = write_digits(tmp_path / "imgs")
    out = tmp_path / "out"
    assert study(folder, out).exit_code == 0
    write_digits(folder, classes=(1,), offset=10)            # other images, same names
    rerun = study(folder, out)
    assert rerun.exit_code == 0, rerun.output
    assert "4 images changed (img0.png" in rerun.output and "recomputing" in rerun.output
    fresh = study(folder, tmp_path / "fresh")
    assert fresh.exit_code == 0
    for name, value in arrays(out / "h_results.h5").items():
        np.testing.assert_array_equal(value, arrays(tmp_path / "fresh" / "h_results.h5")[name])
    with h5py.File(out / "activations.h5") as a, h5py.File(tmp_path / "fresh/activations.h5") as b:
        np.testing.assert_array_equal(a["layers/conv_5"][()], b["layers/conv_5"][()])


@pytest.mark.parametrize("args, fragment", [
    (["--classes", f"{wnid(0)},{wnid(1)},{wnid(0)}"], "listed twice in --classes"),
    (["--layers", "conv_5,conv_5"], "conv_5 is listed twice in --layers"),
    (["--seed", "-5"], "--seed must be at least 0, got -5"),
    (["--classes", wnid(0)], "at least two"),
    (["--classes", f"{wnid(0)},{wnid(1)}", "--others", "all"], None),
    (["--others", "random-0"], "K must be at least 1"),
    (["--probe-fits", "-1"], "--probe-fits must be at least 1, got -1"),
    (["--grid", "100x100"], "10000 cells but layer"),
    (["--grid", "4by4"], "--grid must be two positive integers"),
])
def test_bad_study_options_are_one_line_and_create_nothing(images, tmp_path, args, fragment):
    out = tmp_path / "out"
    result = study(images, out, *args)
    if fragment is None:   # two classes and --others all: a valid run
        assert result.exit_code == 0, result.output
        return
    one_line_error(result, fragment)
    assert not out.exists() or [p.name for p in out.iterdir()] == [".kerabl.lock"]


def test_a_class_with_one_image_is_one_line(tmp_path):
    folder = write_digits(tmp_path / "imgs", classes=(0, 1), per_class=1)
    one_line_error(study(folder, tmp_path / "out"), "has 1 image")


def test_tench_is_a_class_name_not_an_unknown_wnid(tmp_path):
    for name in ("n01440764", "n01443537"):    # tench, goldfish
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name / "a.png")
    imageset = synset_imageset(tmp_path, classes=["tench", "goldfish"])
    assert imageset.classes == [0, 1] and len(imageset.paths) == 2


def test_export_and_merge_out_into_a_missing_folder_or_onto_a_folder(images, tmp_path):
    out = tmp_path / "out"
    assert study(images, out).exit_code == 0
    results = out / "h_results.h5"
    one_line_error(invoke("export", results, "--out", tmp_path / "none" / "r.csv"), "does not exist")
    one_line_error(invoke("export", results, "--out", tmp_path), "is a folder")
    one_line_error(invoke("merge", results, "--out", tmp_path), "is a folder")
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folders(images, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        one_line_error(study(images, folder / "out"), "ro")
        one_line_error(study(images, folder), "ro")
        one_line_error(invoke("activations", "--out", folder / "a.h5"), "not writable")
        one_line_error(invoke("units", "--out", folder), "ro")
    finally:
        folder.chmod(0o755)


def test_unwritable_output_folders_as_root_sees_them(images, tmp_path, monkeypatch):
    """What a user without write permission gets (root writes anywhere, so it is simulated)."""
    import kerabl.lock
    import kerabl.validate

    def refuse(path, *args):
        raise PermissionError(13, "Permission denied", str(path))

    with monkeypatch.context() as patched:   # os.access is the os module's: patched briefly
        patched.setattr(kerabl.validate.os, "access", lambda path, mode: False)
        activations = invoke("activations", "--out", tmp_path / "a.h5")
        export = invoke("export", tmp_path / "r.h5", "--out", tmp_path / "r.csv")
    one_line_error(activations, "is not writable")
    one_line_error(export, "is not writable")
    monkeypatch.setattr(kerabl.lock.os, "open", refuse)
    for command in ("study", "units", "reproduce"):
        one_line_error(invoke(command, "--out", tmp_path / "out"), "cannot write in",
                       "Permission denied")


def test_a_read_only_results_file_path_is_one_line(images, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out" / "x.h5"))

    monkeypatch.setattr(kerabl.hayne.results, "create_results", refuse)
    one_line_error(study(images, tmp_path / "out"), "x.h5: Permission denied")


def test_second_run_on_one_out_says_who_holds_it(images, tmp_path):
    from kerabl.lock import output_lock

    with output_lock(tmp_path, "kerabl study"):
        one_line_error(study(images, tmp_path), "in use by kerabl study (pid")
    assert study(images, tmp_path).exit_code == 0   # released: the next run goes


def test_shards_of_one_study_lock_only_themselves(images, tmp_path):
    from kerabl.lock import output_lock

    out = tmp_path / "out"
    assert study(images, out, "--layers", "conv_5").exit_code == 0   # the activation cache
    with output_lock(out, "kerabl study", shard=(0, 2)):
        one_line_error(study(images, out, "--shard", "0/2"), "in use by kerabl study (pid")
        assert study(images, out, "--shard", "1/2").exit_code == 0   # its sibling runs


def test_byte_corrupted_activations_is_one_line(images, tmp_path):
    out = tmp_path / "out"
    assert study(images, out).exit_code == 0
    (out / "h_results.h5").unlink()
    cache = out / "activations.h5"
    data = bytearray(cache.read_bytes())
    with h5py.File(cache) as f:
        offset = f["layers/conv_5"].id.get_offset() or 0
    for k in range(offset + 64, min(offset + 4096, len(data))):
        data[k] ^= 0xFF
    cache.write_bytes(bytes(data))
    one_line_error(study(images, out), "activations.h5")


def test_truncated_cache_and_a_z_file_for_merge_say_what_they_are(images, tmp_path):
    out = tmp_path / "out"
    assert study(images, out).exit_code == 0
    cache = out / "activations.h5"
    cache.write_bytes(cache.read_bytes()[:4096])
    (out / "h_results.h5").unlink()
    one_line_error(study(images, out), "damaged HDF5 file (truncated")
    z = tmp_path / "z_results.h5"
    with h5py.File(z, "w") as f:
        f.attrs["kind"] = "kerabl.z-results"
    one_line_error(invoke("merge", z, "--out", tmp_path / "m.h5"), "holds Z results")


def test_a_dead_network_stops_the_study(images, tmp_path):
    from kerabl.models import demo_model

    model = demo_model()
    for v in model.weights:
        v.assign(np.zeros(v.shape, "float32"))
    model.save_weights(tmp_path / "zero.weights.h5")
    result = study(images, tmp_path / "out", "--weights", tmp_path / "zero.weights.h5")
    one_line_error(result, "gives the same outputs")


def test_units_bad_options_are_one_line(images, tmp_path):
    one_line_error(invoke("units", "--out", tmp_path, "--greedy-steps", "0"),
                   "--greedy-steps must be at least 1")
    one_line_error(invoke("units", "--out", tmp_path, "--seed", "-1"), "--seed")


# --- interruptions ---------------------------------------------------------------------------

def _kerabl(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "kerabl", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop_when(proc, ready, sig, timeout=240):
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail(f"the run ended ({proc.returncode}) before it could be interrupted: "
                    f"{proc.stderr.read()[-2000:]}")
    proc.send_signal(sig)
    return proc.wait(60)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _shm_blocks() -> set:
    """Python's shared-memory blocks in /dev/shm (none where there is no such folder)."""
    folder = Path("/dev/shm")
    return {p.name for p in folder.glob("psm_*")} if folder.is_dir() else set()


def _partial_pairs(path: Path) -> int:
    with contextlib.suppress(Exception), h5py.File(path, "r") as f:
        return int(f["done"][()].sum())
    return 0


def _rows_done(path: Path) -> int:
    """The images a `.partial` activation cache holds so far, read without HDF5's file lock
    (its writer holds it and flushes after every batch); 0 until it can be read."""
    with contextlib.suppress(Exception), h5py.File(path, "r", locking=False) as f:
        return int(f.attrs["rows_done"])
    return 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_study_resumes_to_an_uninterrupted_run(tmp_path, sig):
    # 8 classes x 4 layers: the pairs after the first one outlast the signal's way to the run
    images = write_digits(tmp_path / "synsets", classes=range(8))
    args = ["--images", images, "--class-index", images.with_suffix(".json"), "--model", "demo",
            *SMALL[:-4], "--workers", "2",
            "--layers", "conv_3,conv_4,conv_5,dense_2", "--preprocess", "none"]
    whole = invoke("study", "--out", tmp_path / "whole", *args)
    assert whole.exit_code == 0, whole.output
    shm_before = _shm_blocks()
    proc = _kerabl("study", "--out", tmp_path / "cut", *args)
    partial = tmp_path / "cut" / "h_results.h5.partial"
    workers = []

    def ready():
        workers[:] = _children(proc.pid) or workers
        return _partial_pairs(partial) >= 1

    code = _stop_when(proc, ready, sig)
    if sig == signal.SIGTERM:
        err = proc.stderr.read()
        assert code == 130 and "interrupted" in err, (code, err[-3000:])
    time.sleep(2)
    assert workers and not [w for w in workers if Path(f"/proc/{w}").exists()
                            and "zombie" not in Path(f"/proc/{w}/status").read_text()]
    # the pairs' shared-memory block is freed (by the resource tracker after a kill -9)
    deadline = time.time() + 20
    while _shm_blocks() - shm_before and time.time() < deadline:
        time.sleep(0.2)
    assert not _shm_blocks() - shm_before
    rerun = invoke("study", "--out", tmp_path / "cut", *args)
    assert rerun.exit_code == 0, rerun.output
    for name, value in arrays(tmp_path / "whole" / "h_results.h5").items():
        np.testing.assert_array_equal(value, arrays(tmp_path / "cut" / "h_results.h5")[name])


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_activations_resume_to_an_uninterrupted_run(tmp_path, sig):
    # every default target, one image per batch: ~5 s of writing on a fast machine, stopped
    # once the partial holds two images
    args = ["--batch-size", "1", "--no-progress"]
    assert invoke("activations", "--out", tmp_path / "whole.h5", *args).exit_code == 0
    proc = _kerabl("activations", "--out", tmp_path / "cut.h5", *args)
    partial = tmp_path / "cut.h5.partial"

    rows = []

    def ready():   # some images written, not all: read past the writer's lock, flush by flush
        rows.append(_rows_done(partial))
        return rows[-1] >= 2

    code = _stop_when(proc, ready, sig)
    assert 2 <= rows[-1] < 450     # of the demo's 450 images: the run was cut in the middle
    assert code == (130 if sig == signal.SIGTERM else -9)
    assert not (tmp_path / "cut.h5").exists()
    rerun = invoke("activations", "--out", tmp_path / "cut.h5", *args)
    assert rerun.exit_code == 0, rerun.output
    with h5py.File(tmp_path / "whole.h5") as a, h5py.File(tmp_path / "cut.h5") as b:
        assert sorted(a["layers"]) == sorted(b["layers"]) and len(a["layers"]) == 7
        for layer in a["layers"]:
            np.testing.assert_array_equal(a["layers"][layer][()], b["layers"][layer][()])


def test_commands_that_build_models_start_quietly():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "kerabl", "layers", "demo"], text=True,
                          capture_output=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0 and "7 default targets" in done.stdout
    assert done.stderr == ""   # no oneDNN / CUDA / cpu_feature_guard lines


@pytest.mark.parametrize("setting", [None, "0"])
def test_commands_run_onednn_unless_the_user_turned_it_off(setting):
    # TensorFlow itself turns oneDNN on only on CPUs with AVX-512 VNNI / AMX; kerabl asks for it
    # everywhere, and keeps a TF_ENABLE_ONEDNN_OPTS the user set
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    done = subprocess.run([sys.executable, "-m", "kerabl", "--verbose", "layers", "demo"],
                          text=True, capture_output=True, env={**env, "PYTHONPATH": str(ROOT)},
                          timeout=120)
    assert done.returncode == 0 and "7 default targets" in done.stdout
    assert ("oneDNN custom operations are on" in done.stderr) == (setting is None), done.stderr
