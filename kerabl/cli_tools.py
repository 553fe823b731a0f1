"""The `kerabl` commands beside the study stages: on stored results (`figures`, `export`,
`merge`), a model's layers (`layers`), weights (`convert`), PyTorch ports (`crosscheck`,
`compare`), SLURM jobs (`slurm`) and speed (`bench`). They register on `kerabl.cli.app` with its
`command` decorator (one-line errors, exit status 2) when `kerabl.cli` is imported.

Example:
    kerabl export kerabl-out/h_results.h5 --out h.csv
    kerabl figures kerabl-out/h_results.h5 control/h_results.h5 --out figures
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kerabl.cli import app, command
from kerabl.errors import KerablError
from kerabl.options import AlphaOpt, CustomOpt, Model, ProgressOpt, choices


@command
def layers(
    model: Annotated[str, typer.Argument(help="A zoo name, keras.applications name or .keras file.")],
    alpha: AlphaOpt = 0.35,
    custom_objects: CustomOpt = None,
) -> None:
    """Print every layer of a model: kind, output shape, units, cut point, default target."""
    from kerabl.validate import import_tensorflow

    import_tensorflow()   # quietly, before the models
    from kerabl.models import check_alpha
    from kerabl.networks import layer_table, untrained_model

    check_alpha(model, alpha)
    built, targets = untrained_model(model, alpha=alpha, custom_objects=custom_objects)
    rows = layer_table(built, targets)
    width = max(len(r["name"]) for r in rows)
    typer.echo(f"{'layer':<{width}}  {'kind':<22} {'output shape':<22} {'units':>10}  cut  target")
    for r in rows:
        shape = "?" if r["shape"] is None else str(tuple(r["shape"][1:]))
        units = "?" if r["units"] is None else str(r["units"])
        typer.echo(f"{r['name']:<{width}}  {r['kind']:<22} {shape:<22} {units:>10}  "
                   f"{'yes' if r['cut_point'] else 'no ':<4} {'yes' if r['target'] else 'no'}")
    typer.echo(f"{len(rows)} layers, {sum(r['cut_point'] for r in rows)} cut points, "
               f"{len(targets)} default targets: {', '.join(targets)}")


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
    if len(results) == 1:
        paths = render(results[0], out, class_name, layer)
    else:
        paths = render_several(results, out, class_name, layer)
    typer.echo(f"{len(paths)} files in {out}")


def render_several(results: list[Path], out: Path, class_name, layer) -> list:
    """Each file's figures in OUT/<n>-<model>/, and the H files' Fig 3, probe contrast and
    interaction coefficients side by side in OUT; the written paths.

    Example:
        render_several([Path("a/h_results.h5"), Path("b/h_results.h5")], Path("figs"), None, None)
    """
    from kerabl.hayne.results import HResults

    paths, h_files, labels = [], [], []
    for n, path in enumerate(results):
        kind = results_kind(path)
        model = "z" if kind == "kerabl.z-results" else HResults.open(path).config.get("model", "h")
        paths += render(path, out / f"{n}-{model}", class_name, layer)
        if kind != "kerabl.z-results":
            h_files.append(path)
            labels.append(model)
    if len(h_files) > 1:
        paths += render_side_by_side(h_files, labels, out)
    return paths


def render_side_by_side(h_files: list[Path], labels: list[str], out: Path) -> list:
    """Fig 3 (a row per file), the probe contrast and the interaction coefficients (with their
    intervals) of several H results files in OUT; rows are named by model, or by run (control,
    ablation method) where files share a model. The written paths.

    Example:
        render_side_by_side([Path(f"out/{m}/h_results.h5") for m in ("zero", "mean")],
                            ["demo", "demo"], Path("out/figures-methods"))
    """
    from kerabl.hayne.figures import (fig_interaction_coefficients, fig_network_means,
                                      fig_probe_contrast)
    from kerabl.hayne.results import HResults
    from kerabl.hayne.stat_figures import run_label

    runs = [run_label(HResults.open(p), name) for p, name in zip(h_files, labels)]
    rows = labels if len(set(labels)) == len(labels) else runs
    return (fig_network_means(h_files, rows, out / "fig3_networks")
            + fig_probe_contrast(h_files, runs, out / "fig_probe_contrast")
            + fig_interaction_coefficients(h_files, runs, out / "fig_interaction"))


def results_kind(results: Path) -> str:
    """The `kind` attribute of a results file; a missing or non-HDF5 file is a KerablError.

    Example:
        results_kind(Path("kerabl-out/h_results.h5"))   # "kerabl.h-results"
    """
    import h5py

    if not results.is_file():
        raise KerablError(f"results file {results} does not exist: run `kerabl study` or "
                          "`kerabl reproduce` first")
    try:
        with h5py.File(results, "r") as f:
            return f.attrs.get("kind", "")
    except OSError:
        raise KerablError(f"{results} is not an HDF5 results file") from None


def render_timed(results: Path, out: Path) -> tuple[list, float]:
    """`render(results, out)` and its seconds: what `kerabl reproduce` runs in a process beside
    the Z study.

    Example:
        files, seconds = render_timed(Path("kerabl-out/h_results.h5"), Path("figures"))
    """
    import time

    start = time.perf_counter()
    files = render(results, out)
    return files, time.perf_counter() - start


def render(results: Path, out: Path, class_name=None, layer=None, z_names=None) -> list:
    """The figures of one results file (H or Z) in `out`; the written paths. `z_names`: which Z
    figures (default all).

    Example:
        render(Path("kerabl-out/z_results.h5"), Path("figures"))   # [..."fig_z_....png", ...]
    """
    kind = results_kind(results)
    if kind == "kerabl.z-results":
        from kerabl.zhou.figures import render_z_figures
        return render_z_figures(results, out, names=z_names)
    from kerabl.hayne.figures import render_h_figures
    return render_h_figures(results, out, class_name=class_name, layer=layer)


@command
def export(
    results: Annotated[Path, typer.Argument(help="Results file (H or Z).")],
    out: Annotated[Path, typer.Option(help="CSV file to write.")] = Path("results.csv"),
) -> None:
    """Write a results file as CSV (H: one row per class x layer x cell; Z: per layer x unit)."""
    from kerabl.hayne.results import HResults, export_csv
    from kerabl.validate import check_output_file

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
    from kerabl.validate import check_output_file

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
    from kerabl.validate import import_tensorflow

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
    from kerabl.validate import import_tensorflow

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
) -> None:
    """Join two cell CSVs on (class, layer, cell); exit 1 when a cell differs or is missing."""
    from kerabl.compare import compare_csv

    comparison = compare_csv(a, b, tolerance=tolerance, out_dir=out)
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

    options, out = _stage_options(stage.value, ctx.args)
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


def _stage_options(stage: str, args: list[str]) -> tuple[dict, Path]:
    """The options given to a stage (parsed and checked as `kerabl STAGE` would) and its --out."""
    try:
        ctx = typer.main.get_command(app).commands[stage].make_context(stage, list(args))
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
) -> None:
    """Measure the fast engine against the authors' procedure and the machine's matmul floor."""
    from kerabl.validate import import_tensorflow

    import_tensorflow()   # quietly, before the models
    from kerabl.bench import run_bench

    run_bench(out, quick=quick, root=images)
