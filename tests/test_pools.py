"""Tests of where the probes run (kerabl.hayne.pools): worker processes where this process can
spawn them, threads where it cannot (a plain script), the same numbers either way, and the
README's Library snippet run as a plain script."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kerabl.hayne.pools import _inside_main_guard, bounded_map, probe_pool
from kerabl.hayne.study import HConfig, cell_probe_scores, cell_seed, pair_fold_probe

ROOT = Path(__file__).resolve().parents[1]


def _tasks(config):
    rng = np.random.default_rng(3)
    acts = rng.normal(size=(48, 30)).astype(np.float32)
    acts[:16] += 0.4 * rng.normal(size=30).astype(np.float32)   # the target class differs a bit
    y = np.r_[np.ones(16, dtype=np.int64), np.zeros(32, dtype=np.int64)]
    cells = [np.arange(k, 30, 5) for k in range(5)] + [np.array([], dtype=np.int64)]
    return acts, y, [(acts[:, units], y, config, cell_seed(0, 1, 2, k))
                     for k, units in enumerate(cells)]


def _run(kind, config):
    acts, y, tasks = _tasks(config)
    fold_task = (acts, 16, config, cell_seed(0, 1, 2, 2 ** 31 - 1))
    with probe_pool(2 if kind else 1, kind) as pool:
        scores = list(bounded_map(pool, cell_probe_scores, tasks, 4))
        folds = pool.submit(pair_fold_probe, fold_task).result() if pool else \
            pair_fold_probe(fold_task)
    return np.array(scores), folds


@pytest.mark.slow
def test_threads_processes_and_one_thread_give_the_same_bits():
    config = HConfig(probe_fits=6, heldout_folds=3)
    one, one_folds = _run(None, config)
    assert np.isfinite(one[:5]).all() and np.isnan(one[5]).all()   # the empty cell is NaN
    for kind in ("threads", "processes"):
        scores, folds = _run(kind, config)
        np.testing.assert_array_equal(scores, one, err_msg=kind)
        for got, want in zip(folds, one_folds):
            np.testing.assert_array_equal(got, want, err_msg=kind)


def test_main_guard_lines(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(textwrap.dedent("""\
        import os
        run()
        if __name__ == "__main__":
            run()

            done()
        if "__main__" == __name__:
            run()
        if __name__ == "other":
            run()
        """))
    assert [n for n in range(1, 11) if _inside_main_guard(str(script), n)] == [4, 5, 6, 8]


SPAWN_SAFE = "from kerabl.hayne.pools import spawn_is_safe; print(spawn_is_safe())"


@pytest.mark.parametrize("guard, expected", [(False, "False"), (True, "True")])
def test_spawn_is_safe_in_a_script_only_under_the_guard(tmp_path, guard, expected):
    body = f'if __name__ == "__main__":\n    {SPAWN_SAFE}\n' if guard else SPAWN_SAFE + "\n"
    (tmp_path / "script.py").write_text(body)
    out = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == expected, out.stderr


def test_spawn_is_safe_without_a_script_file_not_from_stdin(tmp_path):
    # -c, like a notebook, has no main file: a spawned process runs nothing again; a program
    # read from stdin names "<stdin>", which a spawned process would try to run as a file
    for argv, stdin, expected in (([sys.executable, "-c", SPAWN_SAFE], None, "True"),
                                  ([sys.executable, "-"], SPAWN_SAFE, "False")):
        out = subprocess.run(argv, input=stdin, cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
        assert out.stdout.strip() == expected, (argv, out.stderr)


def library_snippet(readme: Path = ROOT / "README.md") -> str:
    """The README's ```python block that runs `run_h_study` (under "## Library")."""
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    found = [b for b in blocks if "run_h_study" in b]
    assert found, "README.md has no ```python block calling run_h_study"
    return found[0]


# Loaded before the snippet by Python's `site` (and in any process the snippet starts): the demo
# digits cut to two classes, so that the test runs the snippet's every line in seconds.
SMALL_DIGITS = """\
import numpy as np
import kerabl.data as data

_full = data.digits_imageset


def digits_imageset(seed=data.DIGITS_SEED):
    full = _full(seed)
    rows = np.concatenate([full.rows_of(0), full.rows_of(1)])
    return data.ImageSet(name=full.name + ":classes-0-1", labels=full.labels[rows],
                         classes=[0, 1], class_names=["0", "1"], images=full.images[rows])


data.digits_imageset = digits_imageset
"""


@pytest.mark.slow
def test_readme_library_snippet_runs_as_a_plain_script(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    snippet = library_snippet()
    snippet = re.sub(r"probe_fits=\d+", "probe_fits=2", snippet)
    snippet = re.sub(r"greedy_steps=\d+", "greedy_steps=2", snippet)
    assert "__main__" not in snippet or "if __name__" in snippet
    (tmp_path / "snippet.py").write_text(snippet)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SMALL_DIGITS)
    for name in re.findall(r'load_image\("([^"]+)"\)', snippet):   # the snippet's own image
        digit = (load_digits().images[0] * 15).astype(np.uint8)
        Image.fromarray(digit).convert("RGB").save(tmp_path / name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path / "site"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "KERAS_HOME": str(tmp_path / "keras")}
    out = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "bootstrapping" not in out.stderr and "BrokenProcessPool" not in out.stderr
    from kerabl.hayne.results import HResults
    res = HResults.open(tmp_path / "out" / "h_results.h5")
    assert res.classes == ["0", "1"] and res.done.all() and np.isfinite(res.deficit).any()
    if "run_z_study" in snippet:
        assert (tmp_path / "out" / "z_results.h5").is_file()
    if (os.cpu_count() or 1) > 1 and "if __name__" not in snippet:
        assert "threads of this process" in out.stdout


def test_spawn_is_safe_in_a_spawned_process_of_a_guarded_script(tmp_path):
    # a `kerabl bench` case runs in a spawned process of the `kerabl` script; its own probe
    # workers are processes too
    (tmp_path / "script.py").write_text(textwrap.dedent("""\
        import multiprocessing
        from kerabl.hayne.pools import spawn_is_safe

        if __name__ == "__main__":
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                print(spawn_is_safe(), pool.apply(spawn_is_safe))
        """))
    out = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == "True True", out.stderr
