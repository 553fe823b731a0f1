"""SLURM job arrays: `--shard auto`, and the scripts that run a study as three dependent jobs.

- `shard_of(text, environ)`: a `--shard` value as (i, n); "auto" is this array task's shard.
- `array_shard(environ)`: (i, n) from SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN and
  SLURM_ARRAY_TASK_COUNT; a KerablError outside a job array or for an array with gaps.
- `write_jobs(stage, options, ...)`: OUT/slurm/ with `activations.sbatch` (the activation cache,
  one job), `shards.sbatch` (the N shards as an array, `--shard auto`), `merge.sbatch` (merge and
  figures) and `submit.sh`, which submits them, each `--dependency=afterok` on the one before.
- `submit(folder)`: runs `submit.sh` (sbatch must be on PATH) and returns the job ids.

Example:
    folder = write_jobs("study", {"model": "demo", "layers": "conv_5"}, out="runs/demo", array=4)
    ids = submit(folder)   # {"activations": "101", "shards": "102", "merge": "103"}

A rerun of an array task (`scontrol requeue JOB_TASK`, or SLURM's own requeue after a preemption)
has the same task id, so `--shard auto` picks the same shard and the study resumes from its
`.partial` file.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from kerabl.errors import KerablError
from kerabl.store import parse_shard

STAGES = ("study", "reproduce", "units")


def array_shard(environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """This SLURM array task's shard: (task id - first task id, number of tasks).

    Example:
        array_shard({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1",
                     "SLURM_ARRAY_TASK_MAX": "4", "SLURM_ARRAY_TASK_COUNT": "4"})   # (2, 4)
    """
    if "SLURM_ARRAY_TASK_ID" not in environ:
        raise KerablError("--shard auto needs a SLURM job array (SLURM_ARRAY_TASK_ID is not set): "
                          "submit with sbatch --array=0-N, or pass --shard i/n")
    try:
        task, first, count = (int(environ[k]) for k in (
            "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT"))
        last = int(environ.get("SLURM_ARRAY_TASK_MAX", first + count - 1))
    except (KeyError, ValueError):
        raise KerablError("--shard auto: SLURM_ARRAY_TASK_ID/_MIN/_COUNT are missing or not "
                          "integers; pass --shard i/n") from None
    if last - first + 1 != count:
        raise KerablError(f"--shard auto needs an array without gaps, got {count} tasks with ids "
                          f"{first}..{last}: submit --array={first}-{first + count - 1}, or pass "
                          "--shard i/n")
    if count == 1 and task != 0:
        raise KerablError(f"--shard auto in an array of one task (id {task}) would run every pair "
                          f"as shard 0/1: rerun task {task} of an array with scontrol requeue "
                          "JOB_TASK, or pass --shard i/n")
    return task - first, count


def shard_of(text: str, environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """A `--shard` value ("i/n" or "auto") as (i, n).

    Example:
        shard_of("2/8")   # (2, 8)
    """
    return array_shard(environ) if text.strip() == "auto" else parse_shard(text)


@dataclass(frozen=True)
class Resources:
    """What each job asks SLURM for (None: the cluster's default).

    Example:
        Resources(time="1:00:00", cpus=4).directives()
        # ["#SBATCH --time=1:00:00", "#SBATCH --cpus-per-task=4"]
    """

    partition: Optional[str] = None
    time: Optional[str] = None
    cpus: Optional[int] = None
    mem: Optional[str] = None

    def directives(self) -> list[str]:
        pairs = (("partition", self.partition), ("time", self.time),
                 ("cpus-per-task", self.cpus), ("mem", self.mem))
        return [f"#SBATCH --{key}={value}" for key, value in pairs if value is not None]


def option_args(options: Mapping[str, object]) -> list[str]:
    """Command-line arguments for option values: booleans as --x/--no-x, None left out.

    Example:
        option_args({"layers": "conv_5", "clip": False, "images": None})
        # ['--layers', 'conv_5', '--no-clip']
    """
    args: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(getattr(value, "value", value))]
    return args


CACHE_OPTIONS = ("model", "weights", "alpha", "images", "classes", "layers", "preprocess",
                 "seed", "unit")


def stage_commands(stage: str, options: Mapping[str, object], out: Path, array: int,
                   cpus: Optional[int] = None) -> dict[str, list[list[str]]]:
    """The kerabl command lines (without the program) of each job of a stage.

    Example:
        stage_commands("study", {"layers": "conv_5"}, Path("runs/a"), 2)["merge"][0]
        # ["merge", "runs/a/h_results.shard-0-of-2.h5", "runs/a/h_results.shard-1-of-2.h5", ...]

    `options` are the stage's options as given (out and shard excluded); `reproduce` must hold
    its `probe_fits` already resolved. The Z study (`units`) is not sharded: one job.
    """
    if stage not in STAGES:
        raise KerablError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
    options = dict(options)
    if stage == "units":
        if array != 1:
            raise KerablError("the Z study (units) is not sharded: pass --array 1, or run the H "
                              "study as an array (kerabl slurm study)")
        return {"units": [["units", *option_args(options), "--out", str(out)],
                          ["figures", str(out / "z_results.h5"), "--out", str(out / "figures")]]}
    if array < 1:
        raise KerablError(f"--array must be at least 1, got {array}")
    if options.get("workers") is None:
        options["workers"] = cpus or 1  # os.cpu_count() sees the node, not the allocation
    study = {k: v for k, v in options.items() if k != "z"}
    cache = {k: v for k, v in options.items() if k in CACHE_OPTIONS}
    shards = [str(out / f"h_results.shard-{i}-of-{array}.h5") for i in range(array)]
    merged = out / "h_results.h5"
    last = (["reproduce", *option_args(options), "--out", str(out)]
            if stage == "reproduce" else ["figures", str(merged), "--out", str(out / "figures")])
    return {
        "activations": [["activations", *option_args(cache), "--out", str(out / "activations.h5")]],
        "shards": [["study", *option_args(study), "--out", str(out), "--shard", "auto"]],
        "merge": [["merge", *shards, "--out", str(merged)], last]}


def _script(name: str, commands: list[list[str]], folder: Path, resources: Resources,
            array: Optional[int], workdir: Path) -> str:
    program = [sys.executable, "-m", "kerabl"]
    log = folder / "logs" / (f"{name}-%A_%a.log" if array else f"{name}-%j.log")
    lines = ["#!/bin/bash", f"#SBATCH --job-name=kerabl-{name}",
             f"#SBATCH --chdir={shlex.quote(str(workdir))}",
             f"#SBATCH --output={shlex.quote(str(log))}", "#SBATCH --open-mode=append",
             *resources.directives()]
    if array:
        lines += [f"#SBATCH --array=0-{array - 1}",
                  f"# Task i runs shard i of {array}. A rerun of a task (scontrol requeue JOB_i) "
                  "resumes its .partial file."]
    lines += ["set -euo pipefail"]
    lines += [shlex.join(program + command) for command in commands]
    return "\n".join(lines) + "\n"


SUBMIT = """\
#!/bin/bash
# Submits this run's jobs, each after the one before succeeded (sbatch --dependency=afterok).
set -euo pipefail
cd "$(dirname "$0")"
{body}
"""


def _submit_script(jobs: list[str]) -> str:
    body, before = [], None
    for name in jobs:
        after = f" --dependency=afterok:${before}" if before else ""
        body.append(f'{name}=$(sbatch --parsable{after} {name}.sbatch | cut -d";" -f1)')
        body.append(f'echo "{name} job: ${name}"')
        before = name
    ids = ",".join(f"${name}" for name in jobs)
    body.append(f'echo "check on them: squeue -j {ids} (when done: sacct -X -j {ids})"')
    return SUBMIT.format(body="\n".join(body))


def write_jobs(stage: str, options: Mapping[str, object], *, out, array: int,
               resources: Resources = Resources(), workdir=None) -> Path:
    """Write OUT/slurm/ (the job scripts and submit.sh) and return that folder.

    Example:
        write_jobs("study", {"layers": "conv_5,dense_1"}, out=Path("runs/demo"), array=4)

    Args:
        stage: study, reproduce or units.
        options: the stage's options as given on the command line (out and shard excluded).
        out: the stage's output folder; the scripts go to OUT/slurm/, their logs to OUT/slurm/logs/.
        array: number of shards (array tasks); 1 for units.
        resources: partition, time, cpus and memory of every job.
        workdir: the jobs' working directory (default: the current one), where relative paths
            in `options` resolve.
    """
    out = Path(out)
    commands = stage_commands(stage, options, out, array, resources.cpus)
    workdir = Path(workdir or os.getcwd()).resolve()
    folder = (workdir / out / "slurm").resolve()
    try:
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        for name, lines in commands.items():
            text = _script(name, lines, folder, resources, array if name == "shards" else None,
                           workdir)
            (folder / f"{name}.sbatch").write_text(text)
        (folder / "submit.sh").write_text(_submit_script(list(commands)))
        (folder / "submit.sh").chmod(0o755)
    except OSError as err:
        raise KerablError(f"cannot write the job scripts to {folder} ({err.strerror}): choose "
                          "a writable --out") from None
    return folder


def submit(folder, environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """Run FOLDER/submit.sh (sbatch) and return {job name: job id} in submission order.

    Example:
        submit(Path("runs/demo/slurm"))   # {"activations": "101", "shards": "102", "merge": "103"}
    """
    folder = Path(folder)
    env = dict(os.environ if environ is None else environ)
    if shutil.which("sbatch", path=env.get("PATH")) is None:
        raise KerablError(f"sbatch is not on PATH: run {folder / 'submit.sh'} on the cluster's "
                          "login node")
    done = subprocess.run(["bash", str(folder / "submit.sh")], env=env, capture_output=True,
                          text=True)
    ids = dict(re.findall(r"^(\w+) job: (\S+)$", done.stdout, flags=re.M))
    if done.returncode:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        queued = " ".join(ids.values())
        undo = f"scancel {queued}, " if queued else ""
        raise KerablError(f"sbatch refused a job ({reason}): {undo}fix the options (--partition, "
                          "--time, ...) and rerun")
    return ids
