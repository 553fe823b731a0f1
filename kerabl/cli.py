"""The `kerabl` command line: one command per pipeline stage, options named as the library's
keyword arguments. Each command is a thin wrapper: parse, call the library, print where results went.
Bad input raises `KerablError`, printed as one line with exit status 2."""

from __future__ import annotations

import functools
import inspect
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from kerabl.errors import KerablError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Unit-ablation studies of image CNNs (Hayne et al. 2022; Zhou et al. 2018).\n\n"
         "Stages: activations -> study (grid, probes, cell ablation: the H study); units (the Z "
         "study); figures, export, merge; reproduce chains them; slurm runs them as SLURM jobs; "
         "bench measures speed.")


DEMO_PROBE_FITS = 10


class Model(str, Enum):
    alexnet = "alexnet"
    vgg16 = "vgg16"
    mobilenet_v2 = "mobilenet_v2"
    resnet101 = "resnet101"
    demo = "demo"


class Unit(str, Enum):
    element = "element"
    channel = "channel"


class Solver(str, Enum):
    batched = "batched"
    sklearn = "sklearn"


class Engine(str, Enum):
    fast = "fast"
    paper = "paper"


def command(fn=None, **settings):
    """Register a stage: a `KerablError` becomes one line on stderr and exit status 2."""
    if fn is None:
        return functools.partial(command, **settings)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KerablError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
    return app.command(**settings)(run)


ModelOpt = Annotated[Model, typer.Option(help="Network of the model zoo.")]
WeightsOpt = Annotated[str, typer.Option(
    help="'default' (shipped demo weights; Keras's ImageNet weights for keras.applications), "
         "'random' (seeded random weights), or a weights file path.")]
AlphaOpt = Annotated[float, typer.Option(help="MobileNetV2 width multiplier.")]
ImagesOpt = Annotated[Optional[Path], typer.Option(
    help="ImageNet images: the paper's layout (folder with images/, the ground-truth file, "
         "meta_clsloc.mat, 50_classes.json) or synset folders (val/n01440764/*.JPEG). "
         "Default: the digits test split (demo model only).")]
ClassesOpt = Annotated[Optional[str], typer.Option(
    help="Study classes: hayne50, hayne8, or comma-separated names/WNIDs. "
         "Default: hayne50 for alexnet, hayne8 for the other ImageNet networks.")]
LayersOpt = Annotated[Optional[str], typer.Option(
    help="Comma-separated target layers (default: the model's default targets).")]
UnitOpt = Annotated[Unit, typer.Option(help="element: every activation; channel: spatial mean.")]
PreprocessOpt = Annotated[Optional[str], typer.Option(
    help="paper, heuritech, vgg16, resnet101, mobilenet_v2 or none (default: the model's own).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of every random choice (recorded in results).")]
ProgressOpt = Annotated[bool, typer.Option(help="Show progress bars.")]


def _network(model: Model, weights: str, alpha: float, seed: int, preprocess: Optional[str]):
    import dataclasses

    from kerabl.models import load_network

    chosen = None if weights == "random" else weights
    if chosen not in (None, "default"):
        chosen = Path(weights)
    net = load_network(model.value, chosen, alpha=alpha, seed=seed)
    if chosen is None:
        typer.echo(f"note: {model.value} uses random weights ({net.weights_id}); "
                   "results test the pipeline, not the science", err=True)
    return dataclasses.replace(net, preprocess=preprocess) if preprocess else net


def _imageset(model: Model, images: Optional[Path], classes: Optional[str]):
    from kerabl import data

    if images is None:
        if model is not Model.demo:
            raise KerablError(f"--images is required for {model.value}: pass the ImageNet "
                              "validation folder (paper layout or synset folders)")
        if classes:
            raise KerablError("--classes applies to ImageNet images; the demo uses all 10 digits")
        return data.digits_imageset()
    if not images.exists():
        raise KerablError(f"image folder {images} does not exist: pass an existing folder")
    chosen = classes or ("hayne50" if model is Model.alexnet else "hayne8")
    paper_layout = (images / "images").is_dir() or any(images.glob("ILSVRC2012_val_*"))
    if paper_layout:
        listed = chosen if chosen in ("hayne50", "hayne8") else chosen.split(",")
        return data.paper_imageset(images, classes=listed)
    listed = None if classes is None else classes.split(",")
    return data.synset_imageset(images, classes=listed)


def _layers(text: Optional[str]):
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


INPUT_OPTIONS = (  # what to study: shared by activations, study, units and reproduce
    ("model", ModelOpt, Model.demo), ("weights", WeightsOpt, "default"), ("alpha", AlphaOpt, 0.35),
    ("images", ImagesOpt, None), ("classes", ClassesOpt, None), ("layers", LayersOpt, None),
    ("preprocess", PreprocessOpt, None), ("seed", SeedOpt, 0))


def with_options(*groups):
    """Declare shared options once: each (name, annotation, default) is appended to the command's
    signature as a keyword-only option, and reaches the command through its `**options`."""
    def add(fn):
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                    annotation=annotation)
                  for group in groups for name, annotation, default in group]
        fn.__signature__ = signature.replace(parameters=own + shared)
        return fn
    return add


def _inputs_of(options: dict) -> dict:
    return {name: options[name] for name, _, _ in INPUT_OPTIONS}


@command
@with_options(INPUT_OPTIONS)
def activations(
    out: Annotated[Path, typer.Option(help="Activation cache file (HDF5).")] = Path("activations.h5"),
    unit: UnitOpt = Unit.element,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    dtype: Annotated[str, typer.Option(help="Storage dtype: float32 or float16.")] = "float32",
    progress: ProgressOpt = True, **options,
) -> None:
    """Record target-layer activations of every image into a self-describing HDF5 cache."""
    from kerabl.activations import record_activations

    net, imageset = _inputs(**_inputs_of(options))
    cache = record_activations(net, imageset, _layers(options["layers"]) or list(net.targets),
                               out, unit=unit.value, preprocess=net.preprocess,
                               batch_size=batch_size, dtype=dtype, progress=progress,
                               log=lambda message: typer.echo(message, err=True))
    typer.echo(f"activations: {cache.path}")


def _study_config(grid: str, unit: Unit, others: str, seed: int, clip: bool, legacy_bounds: bool,
                  probe_fits: int, probe_max_units: int, heldout_folds: int, srs: bool,
                  engine: Engine, probe_solver: Solver):
    from kerabl.hayne.study import HConfig

    try:
        shape = tuple(int(v) for v in grid.lower().split("x"))
    except ValueError:
        raise KerablError(f"--grid must look like 4x4, got {grid!r}") from None
    if others != "all" and not (others.startswith("random-") and others[7:].isdigit()):
        raise KerablError(f"--others must be 'all' or 'random-K' (e.g. random-10), got {others!r}")
    return HConfig(grid=shape, unit=unit.value, others=others, seed=seed, clip=clip,
                   legacy_bounds=legacy_bounds, probe_fits=probe_fits,
                   probe_max_units=probe_max_units, heldout_folds=heldout_folds, srs=srs,
                   engine=engine.value, probe_solver=probe_solver.value)


GridOpt = Annotated[str, typer.Option(help="Grid shape: selectivity strips x magnitude cells.")]
OthersOpt = Annotated[str, typer.Option(help="Other classes per target: random-10 (seeded) or all.")]
ClipOpt = Annotated[bool, typer.Option(help="Clip negative rank deficits to 0 (the authors' choice).")]
LegacyOpt = Annotated[bool, typer.Option(
    help="The authors' inclusive grid bounds (a boundary unit can fall in two cells).")]
FitsOpt = Annotated[int, typer.Option(help="Probe fits per cell (the authors: 200).")]
MaxUnitsOpt = Annotated[int, typer.Option(help="Units per probe fit (the authors: 100).")]
FoldsOpt = Annotated[int, typer.Option(help="Folds of the held-out probe metric.")]
SrsOpt = Annotated[bool, typer.Option(help="Compute the representational-similarity scores.")]
EngineOpt = Annotated[Engine, typer.Option(
    help="fast: cached activations, tail only; paper: Lambda mask rebuilt per cell, full forward.")]
SolverOpt = Annotated[Solver, typer.Option(
    help="batched: the exact optimum of every probe fit at once; sklearn: the authors' "
         "LogisticRegression loop (lbfgs may stop early, so a prediction can differ).")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    help="Processes fitting the probes (default: one per CPU core); results do not depend on it.")]
ShardOpt = Annotated[Optional[str], typer.Option(
    help="Run shard i of n (0-based, e.g. 3/8), or 'auto' (this SLURM array task's shard); "
         "join the shard files with `kerabl merge`.")]

H_OPTIONS = (  # the H protocol: shared by study and reproduce
    ("unit", UnitOpt, Unit.element), ("grid", GridOpt, "4x4"),
    ("others", OthersOpt, "random-10"), ("clip", ClipOpt, True),
    ("legacy_bounds", LegacyOpt, False), ("probe_max_units", MaxUnitsOpt, 100),
    ("heldout_folds", FoldsOpt, 5), ("srs", SrsOpt, True), ("engine", EngineOpt, Engine.fast),
    ("probe_solver", SolverOpt, Solver.batched), ("workers", WorkersOpt, None))


@command
@with_options(INPUT_OPTIONS, H_OPTIONS)
def study(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("kerabl-out"),
    probe_fits: FitsOpt = 200, shard: ShardOpt = None, progress: ProgressOpt = True, **options,
) -> None:
    """The H study: grid, probes and cell ablation for every class x layer (resumable)."""
    path = _run_study(out, options, probe_fits, shard, progress)
    typer.echo(f"results: {path}")


def _run_study(out, options: dict, probe_fits: int, shard, progress: bool):
    from kerabl.hayne.study import run_h_study
    from kerabl.slurm import shard_of

    h = {name: options[name] for name, _, _ in H_OPTIONS if name != "workers"}
    config = _study_config(seed=options["seed"], probe_fits=probe_fits, **h)
    shard_ = shard_of(shard) if shard else None
    net, imageset = _inputs(**_inputs_of(options))
    return run_h_study(net, imageset, out, layers=_layers(options["layers"]), config=config,
                       shard=shard_, progress=progress, workers=options["workers"],
                       log=typer.echo)


@functools.lru_cache(maxsize=1)
def _inputs(model, weights, alpha, images, classes, layers, preprocess, seed):
    """The network and the image set of a command (loaded once when reproduce chains stages).
    The image set is checked first: bad image arguments fail before a model is built."""
    imageset = _imageset(model, images, classes)
    return _network(model, weights, alpha, seed, preprocess), imageset


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
    and Fig 3 of all H files side by side in OUT/fig3_networks.
    """
    if len(results) == 1:
        paths = _render(results[0], out, class_name, layer)
    else:
        paths = _render_several(results, out, class_name, layer)
    typer.echo(f"{len(paths)} files in {out}")


def _render_several(results: list[Path], out: Path, class_name, layer) -> list:
    from kerabl.hayne.figures import fig_network_means
    from kerabl.hayne.results import HResults

    paths, h_files, labels = [], [], []
    for n, path in enumerate(results):
        kind = _results_kind(path)
        model = "z" if kind == "kerabl.z-results" else HResults.open(path).config.get("model", "h")
        paths += _render(path, out / f"{n}-{model}", class_name, layer)
        if kind != "kerabl.z-results":
            h_files.append(path)
            labels.append(model)
    if len(h_files) > 1:
        paths += fig_network_means(h_files, labels, out / "fig3_networks")
    return paths


def _results_kind(results: Path) -> str:
    """The `kind` attribute of a results file; a missing or non-HDF5 file is a KerablError."""
    import h5py

    if not results.is_file():
        raise KerablError(f"results file {results} does not exist: run `kerabl study` or "
                          "`kerabl reproduce` first")
    try:
        with h5py.File(results, "r") as f:
            return f.attrs.get("kind", "")
    except OSError:
        raise KerablError(f"{results} is not an HDF5 results file") from None


def _render(results: Path, out: Path, class_name=None, layer=None) -> list:
    kind = _results_kind(results)
    if kind == "kerabl.z-results":
        from kerabl.zhou.figures import render_z_figures
        return render_z_figures(results, out)
    from kerabl.hayne.figures import render_h_figures
    return render_h_figures(results, out, class_name=class_name, layer=layer)


@command
def export(
    results: Annotated[Path, typer.Argument(help="Results file (H or Z).")],
    out: Annotated[Path, typer.Option(help="CSV file to write.")] = Path("results.csv"),
) -> None:
    """Write a results file as CSV (H: one row per class x layer x cell; Z: per layer x unit)."""
    from kerabl.hayne.results import HResults, export_csv

    if _results_kind(results) == "kerabl.z-results":
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
    from kerabl.hayne.results import merge as merge_results

    for shard in shards:
        _results_kind(shard)
    typer.echo(f"merged: {merge_results(shards, out)}")


@command
@with_options(INPUT_OPTIONS)
def units(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("kerabl-out"),
    greedy_layer: Annotated[Optional[str], typer.Option(
        help="Layer of the greedy vs random-order ablation (default: the last conv target).")] = None,
    greedy_steps: Annotated[int, typer.Option(help="Units ablated greedily per class.")] = 10,
    greedy_seeds: Annotated[int, typer.Option(help="Random orders to compare with.")] = 5,
    progress: ProgressOpt = True, **options,
) -> None:
    """The Z study: single-unit ablation, unit attributes, greedy and random-direction baselines."""
    path = _run_units(out, options, greedy_layer, greedy_steps, greedy_seeds, progress)
    typer.echo(f"results: {path}")


def _run_units(out, options: dict, greedy_layer, greedy_steps, greedy_seeds, progress):
    from kerabl.zhou.study import ZConfig, run_z_study

    net, imageset = _inputs(**_inputs_of(options))
    chosen = _layers(options["layers"]) or list(net.targets)
    config = ZConfig(seed=options["seed"], greedy_layer=greedy_layer, greedy_steps=greedy_steps,
                     greedy_seeds=greedy_seeds)
    return run_z_study(net, imageset, out, layers=chosen, config=config, progress=progress,
                       log=typer.echo)


@command
@with_options(INPUT_OPTIONS, H_OPTIONS)
def reproduce(
    out: Annotated[Path, typer.Option(help="Output folder for results and figures.")] = Path("kerabl-out"),
    probe_fits: Annotated[Optional[int], typer.Option(
        help="Probe fits per cell (default: 200, the authors' count; "
             "--probe-fits-demo for the demo model).")] = None,
    probe_fits_demo: Annotated[int, typer.Option(
        help="Probe fits per cell when the model is the demo and --probe-fits is not given "
             "(keeps the demo run near a minute; the paper networks use 200).")] = DEMO_PROBE_FITS,
    z: Annotated[Optional[bool], typer.Option(
        help="Also run the Z study (single units); default: on for the demo, off for the "
             "ImageNet networks (hours on a CPU: run `kerabl units` for chosen layers).")] = None,
    progress: ProgressOpt = True, **options,
) -> None:
    """The whole study: H sweep, its statistics and figures, and the Z study.

    With no arguments: the demo model on the digits test split, written to ./kerabl-out.
    The paper's AlexNet: --model alexnet --weights alexnet_weights.h5 --images DIR.
    """
    import json
    import time

    from kerabl.hayne.results import HResults
    from kerabl.hayne.stats import summary

    start = time.perf_counter()
    model = options["model"]
    _inputs.cache_clear()
    if probe_fits is None:
        probe_fits = probe_fits_demo if model is Model.demo else 200
        typer.echo(f"probe fits per cell: {probe_fits}"
                   + (" (demo default; --probe-fits 200 for the authors' count)"
                      if model is Model.demo and probe_fits != 200 else ""))
    path = _run_study(out, options, probe_fits, None, progress)
    timings = {"H study": time.perf_counter() - start}
    headline = summary(HResults.open(path))
    (Path(out) / "h_summary.json").write_text(json.dumps(headline, indent=2) + "\n")
    files = _render(path, Path(out) / "figures")
    timings["H figures"] = time.perf_counter() - start - sum(timings.values())
    if z is None:
        z = model is Model.demo
        if not z:
            typer.echo(f"Z study not run for {model.value} (hours on a CPU): pass --z, or run "
                       "`kerabl units --layers ...` for chosen layers")
    if z:
        z_path = _run_units(out, options, None, 10, 5, progress)
        timings["Z study"] = time.perf_counter() - start - sum(timings.values())
        files += _render(z_path, Path(out) / "figures")
        timings["Z figures"] = time.perf_counter() - start - sum(timings.values())
    _inputs.cache_clear()
    typer.echo(headline_text(headline))
    typer.echo(f"results: {path} (summary: {Path(out) / 'h_summary.json'})")
    typer.echo(f"figures: {Path(out) / 'figures'} ({len(files)} files)")
    typer.echo(f"wall time: {time.perf_counter() - start:.1f} s ("
               + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")")


def headline_text(headline: dict) -> str:
    """The abstract's numbers in four lines (cells as (selectivity strip, magnitude cell))."""
    deficit, probe = headline["largest_deficit"], headline["highest_probe"]
    reg, corr = headline["regression"], headline["correlation"]["probe"]
    return "\n".join([
        f"largest mean rank deficit: cell {tuple(deficit['cell'])} = {deficit['mean']:.3f}",
        f"highest mean probe score:  cell {tuple(probe['cell'])} = {probe['mean']:.3f}",
        f"deficit ~ sel + mag + sel x mag: R^2 {reg['r2_full']:.3f}; selectivity alone "
        f"{reg['r2_selectivity']:.3f} ({reg['n_cells']} cells)",
        f"probe vs deficit: Pearson r {corr['pearson_r']:.3f}, Spearman rho "
        f"{corr['spearman_rho']:.3f}"])


class Stage(str, Enum):
    study = "study"
    reproduce = "reproduce"
    units = "units"


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
    if stage == "reproduce" and given.get("probe_fits") is None:
        demo = ctx.params["model"] in (Model.demo, "demo")
        given["probe_fits"] = ctx.params["probe_fits_demo"] if demo else 200
        given.pop("probe_fits_demo", None)
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
    from kerabl.bench import run_bench

    run_bench(out, quick=quick, root=images)


def main() -> None:
    """Entry point of the `kerabl` console script and `python -m kerabl`."""
    app()
