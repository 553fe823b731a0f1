"""SLURM job arrays: `--shard auto` from the array's environment, the job scripts of `kerabl slurm`,
and the demo study run on a real one-node SLURM cluster (munged, slurmctld, slurmd on loopback):
a 4-task array plus the merge job equals an unsharded run (export CSV byte-identical), also after
one array task is cancelled midway and requeued. The cluster test skips where SLURM cannot be
installed or started, except where KERABL_REQUIRE_SLURM=1 (CI), where it fails."""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from kerabl.cli import app
from kerabl.errors import KerablError
from kerabl.hayne.results import export_csv
from kerabl.slurm import array_shard, option_args, shard_of, stage_commands

from slurm_cluster import ClusterUnavailable, SlurmCluster

STUDY = ["--layers", "conv_5,dense_1", "--probe-fits", "2"]


def array_env(task, first=0, count=4, last=None):
    return {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(first),
            "SLURM_ARRAY_TASK_COUNT": str(count),
            "SLURM_ARRAY_TASK_MAX": str(first + count - 1 if last is None else last)}


def test_array_shard_counts_from_the_first_task():
    assert array_shard(array_env(2)) == (2, 4)
    assert array_shard(array_env(3, first=1)) == (2, 4)
    assert array_shard(array_env(0, count=1)) == (0, 1)
    assert shard_of("auto", array_env(1, first=1, count=3)) == (0, 3)
    assert shard_of("2/8", {}) == (2, 8)


@pytest.mark.parametrize("env, fragment", [
    ({}, "SLURM_ARRAY_TASK_ID is not set"),
    (array_env(3, first=1, count=3, last=5), "without gaps"),
    (array_env(2, first=2, count=1), "scontrol requeue"),
    ({**array_env(1), "SLURM_ARRAY_TASK_COUNT": "x"}, "not integers"),
])
def test_array_shard_refuses_what_is_not_a_plain_array(env, fragment):
    with pytest.raises(KerablError, match=fragment):
        array_shard(env)


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_shard_auto_outside_an_array_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    one_line_error(invoke("study", "--out", tmp_path, "--shard", "auto", *STUDY), "sbatch --array")
    assert not any(tmp_path.iterdir())


def test_option_args_render_what_was_given():
    assert option_args({"layers": "a,b", "clip": False, "srs": True, "images": None,
                        "probe_fits": 2}) == ["--layers", "a,b", "--no-clip", "--srs",
                                              "--probe-fits", "2"]


def test_slurm_study_writes_three_dependent_jobs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("slurm", "study", "--array", "3", "--out", "run", *STUDY, "--no-clip",
                    "--partition", "short", "--time", "0:30:00", "--cpus", "2", "--mem", "4G")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "run" / "slurm"
    assert f"submit them with: bash {folder / 'submit.sh'}" in result.output
    python = f"{sys.executable} -m kerabl"
    shards = (folder / "shards.sbatch").read_text()
    assert "#SBATCH --array=0-2" in shards and "#SBATCH --partition=short" in shards
    assert "#SBATCH --cpus-per-task=2" in shards and "#SBATCH --mem=4G" in shards
    assert f"#SBATCH --chdir={tmp_path}" in shards
    assert (f"{python} study --layers conv_5,dense_1 --probe-fits 2 --no-clip --workers 2 "
            "--out run --shard auto\n") in shards   # progress lines go to the log
    cache = (folder / "activations.sbatch").read_text()
    assert (f"{python} activations --layers conv_5,dense_1 --out run/activations.h5\n"
            ) in cache and "--array" not in cache
    merge = (folder / "merge.sbatch").read_text()
    assert (f"{python} merge run/h_results.shard-0-of-3.h5 run/h_results.shard-1-of-3.h5 "
            "run/h_results.shard-2-of-3.h5 --out run/h_results.h5") in merge
    assert f"{python} figures run/h_results.h5 --out run/figures" in merge
    submit = (folder / "submit.sh").read_text()
    assert "--dependency=afterok:$activations shards.sbatch" in submit
    assert "--dependency=afterok:$shards merge.sbatch" in submit


def test_slurm_reproduce_fixes_the_probe_fits_of_the_shards():
    jobs = stage_commands("reproduce", {"probe_fits": 10, "z": False}, Path("o"), 2)
    assert jobs["shards"][0][:5] == ["study", "--probe-fits", "10", "--workers", "1"]
    assert jobs["merge"][1][:5] == ["reproduce", "--probe-fits", "10", "--no-z", "--workers"]


@pytest.mark.parametrize("args, fragment", [
    (["units", "--array", "2"], "not sharded"),
    (["study", "--array", "2", "--shard", "1/2"], "set by the job array"),
    (["study", "--array", "2", "--no-such-option"], "No such option"),
    (["study", "--array", "0"], "at least 1"),
])
def test_slurm_refuses_bad_options(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("slurm", *args), fragment)


def test_slurm_submit_without_sbatch_says_where_to_submit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("slurm", "units", "--submit", env={"PATH": str(tmp_path)}),
                   "sbatch is not on PATH")
    assert (tmp_path / "kerabl-out" / "slurm" / "units.sbatch").is_file()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    try:
        running = SlurmCluster.start(tmp_path_factory.mktemp("slurm"), cpus=6)
    except (ClusterUnavailable, OSError, subprocess.CalledProcessError) as err:
        if os.environ.get("KERABL_REQUIRE_SLURM") == "1":
            pytest.fail(f"SLURM is required here but does not start: {err}")
        pytest.skip(f"no SLURM cluster: {err}")
    yield running
    running.run("scancel", "--user", "root")
    running.stop()


def pairs_done(partial: Path) -> int:
    """Pairs stored in a results file being written by another process (0 while unreadable)."""
    try:
        with h5py.File(partial, "r", locking=False) as f:
            return int(f["done"][()].sum())
    except (OSError, KeyError):
        return 0


def until(condition, seconds: float, what: str):
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.1)


@pytest.mark.slow
def test_array_on_slurm_equals_unsharded_run_after_a_cancelled_task(cluster, tmp_path):
    start = time.monotonic()
    env = {**cluster.env, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
    ref = tmp_path / "ref"
    reference = cluster.run("sbatch", "--parsable", f"--chdir={tmp_path}", "--output=ref.log",
                            "--wrap", shlex.join(
                                [sys.executable, "-m", "kerabl", "study", "--out", str(ref),
                                 *STUDY, "--workers", "1", "--no-progress"])).strip()
    submitted = subprocess.run(
        [sys.executable, "-m", "kerabl", "slurm", "study", "--array", "4", "--out", "run",
         *STUDY, "--time", "0:10:00", "--submit"],
        cwd=tmp_path, env=env, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    jobs = dict(line.split(" job: ") for line in submitted.stdout.splitlines() if " job: " in line)
    assert list(jobs) == ["activations", "shards", "merge"]
    assert f"check on them: squeue -j {','.join(jobs.values())}" in submitted.stdout

    run = tmp_path / "run"
    partial = run / "h_results.shard-2-of-4.h5.partial"
    until(lambda: pairs_done(partial) >= 1, 120, f"shard 2 never started: {cluster.log_tail()}")
    task = f"{jobs['shards']}_2"
    cluster.run("scancel", task)
    until(lambda: cluster.states(task).get(task) == "CANCELLED", 30, "scancel did not stop it")
    done_before = pairs_done(partial)
    assert 1 <= done_before < 5 and not (run / "h_results.shard-2-of-4.h5").exists()
    cluster.run("scontrol", "requeue", task)  # starts after the credential lifetime (10 s here)
    # the array's afterok stays failed after a cancelled task: the merge job waits on each task
    tasks = ":".join(f"{jobs['shards']}_{i}" for i in range(4))
    cluster.run("scontrol", "update", f"JobId={jobs['merge']}", f"Dependency=afterok:{tasks}")

    states = cluster.wait([reference, *jobs.values()], seconds=150)
    logs = sorted((run / "slurm" / "logs").iterdir())
    assert set(states.values()) == {"COMPLETED"}, (states, [p.read_text()[-1500:] for p in logs])
    assert f"{jobs['shards']}_2" in states and len(states) == 1 + 1 + 4 + 1
    # the shards' logs show their progress, a line per pair (a log is no terminal)
    assert any("H study: class x layer" in p.read_text() for p in logs if "shards" in p.name)
    export_csv(ref / "h_results.h5", tmp_path / "ref.csv")
    export_csv(run / "h_results.h5", tmp_path / "array.csv")
    ref_csv, array_csv = (tmp_path / "ref.csv").read_bytes(), (tmp_path / "array.csv").read_bytes()
    assert array_csv == ref_csv and ref_csv.count(b"\n") == 1 + 10 * 2 * 16
    assert (run / "figures").is_dir() and any((run / "figures").glob("*.png"))
    print(f"\nSLURM array test: {time.monotonic() - start:.1f} s wall; states {states}; shard 2 "
          f"cancelled after {done_before} of 5 pairs; CSV {len(ref_csv)} bytes, identical")
