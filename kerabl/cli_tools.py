"""The `kerabl` commands beside the study stages: on stored results (`figures`, `export`,
`merge`), a model's layers (`layers`), weights (`convert`), PyTorch ports (`crosscheck`,
`compare`), SLURM jobs (`slurm`) and speed (`bench`). `kerabl.cli` adds them to its app with
`register(command)`, its `command` decorator (one-line errors, exit status 2). The library
modules that load TensorFlow, matplotlib or h5py are imported inside the command that runs them,
so `kerabl --help` starts in a fraction of a second.

Example:
    kerabl export kerabl-out/h_results.h5 --out h.csv
    kerabl figures kerabl-out/h_results.h5 control/h_results.h5 --out figures
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kerabl.errors import KerablError
from kerabl.options import AlphaOpt, CustomOpt, Model, ProgressOpt, choices
from kerabl.store import results_kind
from kerabl.validate import check_output_file, import_tensorflow

# The commands of this module with their settings, in --help order: `register` adds them.
COMMANDS: list = []


def command(fn=None, **settings):
    """Mark a function as a command of this module (`settings`: those of typer's `app.command`).

    Example:
        @command
        def export(results: Path, out: Path = Path("results.csv")) -> None: ...
    """
    if fn is None:
        return lambda fn: command(fn, **settings)
    COMMANDS.append((fn, settings))
    return fn


def register(cli_command) -> None:
    """Add this module's commands to the app with `cli_command`, the app's command decorator
    (`kerabl.cli.command`).

    Example:
        register(command)    # in kerabl.cli, after `command` is defined
    """
    for fn, settings in COMMANDS:
        cli_command(fn, **settings) if not settings else cli_command(**settings)(fn)


@command
def layers(
    model: Annotated[str, typer.Argument(help="A zoo name, keras.applications name or .keras file.")],
    alpha: AlphaOpt = 0.35,
    custom_objects: CustomOpt = None,
) -> None:
    """Print every layer of a model: kind, output shape, units, cut point, default target."""
    import_tensorflow()   # quietly, before the models
    from kerabl.models import check_alpha
    from kerabl.networks import layer_table, untrained_model

    check_alpha(model, alpha)
    built, targets = untrained_model(model, alpha=alpha, custom_objects=custom_objects)
    rows = layer_table(built, targets)
    width = max(len(r["name"]) for r in rows)
    inside = sorted({r["inside"] for r in rows if r["inside"]})
    typer.echo(f"{'layer':<{width}}  {'kind':<22} {'output shape':<22} {'units':>10}  cut  target"
               + ("  inside" if inside else ""))
    for r in rows:
        shape = "?" if r["shape"] is None else str(tuple(r["shape"][1:]))
        units = "?" if r["units"] is None else str(r["units"])
        target = "yes" if r["target"] else "no"
        typer.echo(f"{r['name']:<{width}}  {r['kind']:<22} {shape:<22} {units:>10}  "
                   f"{'yes' if r['cut_point'] else 'no ':<4} "
                   + (f"{target:<3}     {r['inside']}".rstrip() if inside else target))
    typer.echo(f"{len(rows)} layers, {sum(r['cut_point'] for r in rows)} cut points, "
               f"{len(targets)} default targets: {', '.join(targets)}")
    if inside:
        typer.echo(f"{sum(bool(r['inside']) for r in rows)} layers come from inside "
                   f"{', '.join(inside)}: name them as listed or as {inside[0]}/LAYER")


@command
def figures(
    results: Annotated[list[Path], typer.Argument(
        help="H results files (h_results.h5) and/or Z results files (z_results.h5).")],
    out: Annotated[Path, typer.Option(help="Folder for the PNG and PDF files.")] = Path("figures"),
    class_name: Annotated[Optional[str], typer.Option("--class", help="Class of Fig 1.")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Layer of Fig 1.")] = None,
) -> None:
    """Render the figures of stored results (never recomputes, loads no model).

    One results file: its figures in OUT. Several: each file's figures in OUT/<n>-<model>/,
    and Fig 3, the probe contrast and the interaction coefficients of all H files side by side
    in OUT/fig3_networks, OUT/fig_probe_contrast and OUT/fig_interaction.
    """
    from kerabl.render import render, render_several

    if len(results) == 1:
        paths = render(results[0], out, class_name, layer)
    else:
        paths = render_several(results, out, class_name, layer)
    typer.echo(f"{len(paths)} files in {out}")


@command
def export(
    results: Annotated[Path, typer.Argument(help="Results file (H or Z).")],
    out: Annotated[Path, typer.Option(help="CSV file to write.")] = Path("results.csv"),
) -> None:
    """Write a results file as CSV (H: one row per class x layer x cell; Z: per layer x unit)."""
    from kerabl.hayne.results import HResults, export_csv
    check_output_file(out)
    if results_kind(results) == "kerabl.z-results":
        from kerabl.zhou.results import export_units_csv
        export_units_csv(results, out)
    else:
        HResults.open(results)  # validates the file with a one-line error
        export_csv(results, out)
    typer.echo(f"csv: {out}")


@command
def merge(
    shards: Annotated[list[Path], typer.Argument(help="Shard results files.")],
    out: Annotated[Path, typer.Option(help="Merged results file.")] = Path("h_results.h5"),
) -> None:
    """Join shard results (from `--shard i/n`) into one file; refuses inconsistent shards."""
    from kerabl.hayne.merge import merge as merge_results
    check_output_file(out)
    for shard in shards:
        results_kind(shard)
    typer.echo(f"merged: {merge_results(shards, out)}")


@command
def convert(
    state_dict: Annotated[Path, typer.Argument(help="Torch state dict (.pth) in torchvision's layout.")],
    model: Annotated[Model, typer.Option(help="Network the weights are for (demo, vgg16, "
                                              "alexnet_torchvision, resnet50_torchvision).")],
    out: Annotated[Path, typer.Option(help="Keras weights file to write (.weights.h5).")],
) -> None:
    """Convert a torch state dict into Keras weights once (then --weights FILE.weights.h5)."""
    import_tensorflow()   # quietly, before the models
    from kerabl.convert import convert_file

    typer.echo(f"weights: {convert_file(state_dict, model.value, out)}")


@command
def crosscheck(
    results: Annotated[Path, typer.Argument(help="H results file (h_results.h5).")],
    out: Annotated[Path, typer.Option(help="Folder for port.csv, kerabl.csv and the figure.")] = Path("crosscheck"),
    weights: Annotated[Optional[Path], typer.Option(
        help="The run's weights file (not needed for the shipped demo or random weights).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="The run's image folder (ImageNet runs).")] = None,
    tolerance: Annotated[float, typer.Option(help="Largest |diff| counted as equal in the listing.")] = 1e-9,
    progress: ProgressOpt = True,
) -> None:
    """Re-run the study's baseline and every cell's ablation in PyTorch (forward hooks) and compare."""
    import_tensorflow()   # quietly, before the models
    from kerabl.crosscheck import crosscheck as run_crosscheck

    results_kind(results)
    summary = run_crosscheck(results, out, weights=weights, images=images, tolerance=tolerance,
                             progress=progress, log=typer.echo)
    typer.echo(f"port csv: {summary.port_csv}")
    typer.echo(summary.line())


@command
def compare(
    a: Annotated[Path, typer.Argument(help="Cell CSV (kerabl export's schema).")],
    b: Annotated[Path, typer.Argument(help="Cell CSV to compare with A.")],
    tolerance: Annotated[float, typer.Option(help="Largest |diff| of deficit or probe that passes.")] = 1e-9,
    out: Annotated[Optional[Path], typer.Option(help="Folder for the scatter figure.")] = None,
    columns: Annotated[str, typer.Option(
        help="Comma-separated values to compare: deficit,probe, or deficit alone for a port that "
             "computes no probe (an empty probe is otherwise a difference).")] = "deficit,probe",
) -> None:
    """Join two cell CSVs on (class, layer, cell); exit 1 when a cell differs (a number against
    NaN or empty included) or is missing, or when nothing was compared."""
    from kerabl.compare import compare_csv

    comparison = compare_csv(a, b, tolerance=tolerance, out_dir=out,
                             columns=[c.strip() for c in columns.split(",") if c.strip()])
    for line in comparison.lines():
        typer.echo(line)
    if comparison.figure:
        typer.echo(f"figure: {comparison.figure[0]}")
    if not comparison.ok:
        raise typer.Exit(1)


Stage = choices("Stage", "study", "reproduce", "units")


@command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def slurm(
    ctx: typer.Context,
    stage: Annotated[Stage, typer.Argument(help="The stage to run; its options follow.")],
    array: Annotated[int, typer.Option(help="Shards: tasks of the job array (units: 1).")] = 1,
    partition: Annotated[Optional[str], typer.Option(help="SLURM partition of every job.")] = None,
    time: Annotated[Optional[str], typer.Option(help="Time limit of each job (e.g. 2:00:00).")] = None,
    cpus: Annotated[Optional[int], typer.Option(help="CPUs per job (and probe workers).")] = None,
    mem: Annotated[Optional[str], typer.Option(help="Memory per job (e.g. 16G).")] = None,
    submit: Annotated[bool, typer.Option(help="Submit the jobs with sbatch.")] = False,
) -> None:
    """Write SLURM jobs for a stage: the activation cache, then the shards as a job array, then
    merge and figures, each after the one before succeeded (--submit also submits them).

    Example: kerabl slurm study --array 8 --layers conv_5 --out runs/a --time 1:00:00 --submit
    """
    from kerabl import slurm as jobs

    options, out = _stage_options(ctx.find_root(), stage.value, ctx.args)
    folder = jobs.write_jobs(stage.value, options, out=out, array=array,
                             resources=jobs.Resources(partition, time, cpus, mem))
    typer.echo(f"job scripts: {folder}")
    if not submit:
        typer.echo(f"submit them with: bash {folder / 'submit.sh'}")
        return
    ids = jobs.submit(folder)
    for name, job in ids.items():
        typer.echo(f"{name} job: {job}")
    typer.echo(f"check on them: squeue -j {','.join(ids.values())} "
               f"(when done: sacct -X -j {','.join(ids.values())})")


def _stage_options(root, stage: str, args: list[str]) -> tuple[dict, Path]:
    """The options given to a stage (parsed and checked as `kerabl STAGE` would, by the command
    group of context `root`) and its --out."""
    try:
        ctx = root.command.commands[stage].make_context(stage, list(args))
    except Exception as err:  # click's usage errors (click is vendored by recent typer)
        if not hasattr(err, "format_message"):
            raise
        raise KerablError(f"kerabl {stage}: {err.format_message()}") from None
    given = {name: value for name, value in ctx.params.items()
             if ctx.get_parameter_source(name).name == "COMMANDLINE"}
    if "shard" in given:
        raise KerablError("--shard is set by the job array: drop it, choose --array N")
    for name in ("out", "progress"):
        given.pop(name, None)
    return given, Path(ctx.params["out"])


@command
def bench(
    out: Annotated[Path, typer.Option(help="JSON file for the table.")] = Path("bench.json"),
    quick: Annotated[bool, typer.Option(help="Demo cases only.")] = False,
    images: Annotated[Optional[Path], typer.Option(
        help="The paper's image set (a folder with images/); without it only the demo runs.")] = None,
    cases: Annotated[Optional[str], typer.Option(
        help="Run only these cases, comma-separated (demo, alexnet, vgg16, mobilenet_v2, "
             "resnet101, efficientnet_lite0); default: all.")] = None,
) -> None:
    """Measure the fast engine against the authors' procedure and the machine's matmul floor."""
    from kerabl.bench import bench_cases, run_bench

    names = None if cases is None else [n.strip() for n in cases.split(",") if n.strip()]
    bench_cases(names, quick)   # a bad name fails in one line, before TensorFlow starts
    import_tensorflow()   # quietly, before the models
    run_bench(out, quick=quick, root=images, cases=names)
