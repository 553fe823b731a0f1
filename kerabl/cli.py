"""The `kerabl` command line: one command per pipeline stage, options named as the library's
keyword arguments. Each command is a thin wrapper: parse, call the library, print where results went.
Bad input raises `KerablError`, printed as one line with exit status 2."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from kerabl.errors import KerablError
from kerabl.options import (H_OPTIONS, INPUT_OPTIONS, AlphaOpt, Control, CustomOpt, Engine,
                            FitsOpt, Model, Objective, ProgressOpt, Protocol, ShardOpt, Solver,
                            SrsMatrix, Unit, UnitOpt, choices, with_options)

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Unit-ablation studies of image CNNs (Hayne et al. 2022; Zhou et al. 2018).\n\n"
         "Stages: activations -> study (grid, probes, cell ablation: the H study; or grid -> "
         "probe -> ablate one by one); units (the Z study); figures, export, merge; reproduce "
         "chains them; slurm runs them as SLURM jobs; layers lists a model's layers; bench "
         "measures speed.")


DEMO_PROBE_FITS = 10


def command(fn=None, **settings):
    """Register a stage: a `KerablError` or an OS error becomes one line on stderr and exit
    status 2; Ctrl-C and SIGTERM stop it with one line and status 130 (finished work is kept)."""
    if fn is None:
        return functools.partial(command, **settings)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        from kerabl.validate import os_error_line

        try:
            with _terminate_as_interrupt():
                return fn(*args, **kwargs)
        except KerablError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except OSError as err:
            typer.echo(f"error: {os_error_line(err)}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: finished work is kept; rerun the same command to resume",
                       err=True)
            raise typer.Exit(130) from None
        finally:
            _forget_inputs()  # a model file may change between two commands of a process
    return app.command(**settings)(run)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (what a batch scheduler sends) raises KeyboardInterrupt, as Ctrl-C does."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.callback()
def _options(verbose: Annotated[bool, typer.Option(
        help="Show TensorFlow's own log output (start-up lines, warnings).")] = False) -> None:
    """Quiet TensorFlow unless --verbose (set before TensorFlow is imported; a value the user
    set in TF_CPP_MIN_LOG_LEVEL is kept)."""
    if not verbose:
        from kerabl.validate import quiet_tensorflow
        quiet_tensorflow()


def _network(model: str, weights: str, alpha: float, seed: int, preprocess: Optional[str],
             custom_objects: Optional[str] = None):
    """The network and its notes for the user (printed once the inputs are checked)."""
    import dataclasses

    from kerabl.validate import import_tensorflow

    import_tensorflow()
    from kerabl.data import check_preprocess
    from kerabl.networks import is_model_file, load_any_network

    if preprocess:
        check_preprocess(preprocess)
    chosen = None if weights == "random" else weights
    if chosen not in (None, "default"):
        chosen = Path(weights)
    net = load_any_network(model, chosen, alpha=alpha, seed=seed, custom_objects=custom_objects)
    notes = []
    if chosen is None:
        notes.append(f"note: {model} uses random weights ({net.weights_id}); "
                     "results test the pipeline, not the science")
    if is_model_file(model) and not preprocess:
        notes.append(f"note: --preprocess not given: {model} gets RGB 0..255 images resized to "
                     f"{net.input_size} (pass scale, caffe, tf or torch if it expects others)")
    return (dataclasses.replace(net, preprocess=preprocess) if preprocess else net), notes


@functools.lru_cache(maxsize=1)
def _imageset(model: str, images: Optional[Path], classes: Optional[str],
              class_index: Optional[Path] = None):
    """The image set and the output count its labels imply (None: only the indices must fit)."""
    from kerabl import data, folders

    if class_index is not None and images is None:
        raise KerablError("--class-index applies to class folders: pass --images DIR too")
    if images is None:
        if model != Model.demo:
            raise KerablError(f"--images is required for {model}: pass the ImageNet "
                              "validation folder (paper layout or synset folders) or class "
                              "folders")
        if classes:
            raise KerablError("--classes applies to ImageNet images; the demo uses all 10 digits")
        return data.digits_imageset(), 10
    if not images.is_dir():
        raise KerablError(f"image folder {images} does not exist: pass an existing folder")
    chosen = classes or ("hayne50" if model == Model.alexnet else "hayne8")
    listed = None if classes is None else classes.split(",")
    if class_index is None and _paper_layout(images):
        listed = chosen if chosen in data.PAPER_CLASS_SETS else chosen.split(",")
        return data.paper_imageset(images, classes=listed), 1000
    if class_index is None and folders.is_synset_layout(images):
        return data.synset_imageset(images, classes=listed), 1000
    imageset = folders.folder_imageset(images, classes=listed, class_index=class_index)
    return imageset, None if class_index else len(folders.class_folders(images))


def _paper_layout(images: Path) -> bool:
    return (images / "images").is_dir() or any(images.glob("ILSVRC2012_val_*"))


# The authors' inputs under --protocol authors where --classes / --preprocess are not given
AUTHORS_INPUTS = {"mobilenet_v2": {"classes": "hayne10", "preprocess": "mobilenet_v2_authors"}}


def _authors_inputs(options: dict) -> dict:
    """The input options `--protocol authors` fills in (for their MobileNetV2 run: hayne10, on the
    paper layout, and their Pillow-default resize); {} under the default protocol."""
    if options.get("protocol") is not Protocol.authors:
        return {}
    filled = {k: v for k, v in AUTHORS_INPUTS.get(options["model"], {}).items()
              if options.get(k) is None}
    images = options.get("images")
    if "classes" in filled and not (images and images.is_dir() and _paper_layout(images)
                                    and options.get("class_index") is None):
        del filled["classes"]                 # hayne10 is defined by the paper layout's list
    return filled


def _layers(text: Optional[str]):
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def _inputs_of(options: dict) -> dict:
    return {**{name: options[name] for name, _, _ in INPUT_OPTIONS}, **_authors_inputs(options)}


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
    from kerabl.lock import output_lock
    from kerabl.validate import check_at_least, check_output_file

    _check_inputs(options)
    check_at_least(batch_size, 1, "--batch-size")
    if out.parent.is_dir():
        check_output_file(out)
    with output_lock(out.parent, "kerabl activations"):
        _record(out, unit, batch_size, dtype, progress, options)


def _record(out, unit, batch_size, dtype, progress, options: dict) -> None:
    from kerabl.activations import record_activations

    net, imageset = _inputs(**_inputs_of(options))
    cache = record_activations(net, imageset, _layers(options["layers"]) or list(net.targets),
                               out, unit=unit.value, preprocess=net.preprocess,
                               batch_size=batch_size, dtype=dtype, progress=progress,
                               log=lambda message: typer.echo(message, err=True))
    typer.echo(f"activations: {cache.path}")


def _study_config(grid: str, unit: Unit, others: str, seed: int, clip: bool, legacy_bounds: bool,
                  probe_fits: int, probe_max_units: int, heldout_folds: int, srs: bool,
                  engine: Engine, probe_solver: Solver, control: Control = Control.none,
                  protocol: Protocol = Protocol.default,
                  probe_objective: Objective = Objective.liblinear,
                  srs_matrix: SrsMatrix = SrsMatrix.upper, precision: str = "float32",
                  model: str = "demo",
                  inputs: Optional[dict] = None):
    from kerabl.hayne.study import HConfig
    from kerabl.validate import check_h_options

    shape = check_h_options(grid, others, seed, probe_fits, probe_max_units, heldout_folds, None)
    config = HConfig(grid=shape, unit=unit.value, others=others, seed=seed, clip=clip,
                     legacy_bounds=legacy_bounds, probe_fits=probe_fits,
                     probe_max_units=probe_max_units, heldout_folds=heldout_folds, srs=srs,
                     engine=engine.value, probe_solver=probe_solver.value,
                     control=control.value, probe_objective=probe_objective.value,
                     srs_matrix=srs_matrix.value, precision=precision)
    return _authors_config(config, model, inputs) if protocol is Protocol.authors else config


def _authors_config(config, model: str, inputs: Optional[dict] = None):
    """`HConfig.authors(model)`, keeping every option given a value other than its default;
    `inputs`: the input options the protocol filled in (`_authors_inputs`), printed with it."""
    import dataclasses

    from kerabl.hayne.study import HConfig

    default, authors = HConfig(), HConfig.authors(model)
    changed = {k: v for k, v in dataclasses.asdict(config).items() if v != getattr(default, k)}
    chosen = dataclasses.replace(authors, **changed)
    listed = ", ".join([f"{k}={v}" for k, v in dataclasses.asdict(chosen).items()
                        if v != getattr(default, k)]
                       + [f"{k}={v}" for k, v in (inputs or {}).items()])
    typer.echo(f"protocol authors ({model}): {listed}", err=True)
    return chosen


@command
@with_options(INPUT_OPTIONS, H_OPTIONS)
def study(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("kerabl-out"),
    probe_fits: FitsOpt = 200, shard: ShardOpt = None, progress: ProgressOpt = True, **options,
) -> None:
    """The H study: grid, probes and cell ablation for every class x layer (resumable)."""
    from kerabl.lock import output_lock
    from kerabl.slurm import shard_of

    _check_study(options, probe_fits)
    with output_lock(out, "kerabl study", shard=shard_of(shard) if shard else None):
        path = _run_study(out, options, probe_fits, shard, progress)
    typer.echo(f"results: {path}")


def _check_inputs(options: dict, study: bool = False) -> None:
    """The shared options, checked before a model is built or a file is created."""
    from kerabl.validate import check_at_least, check_listed_once, check_study_images

    check_listed_once(options["classes"], "--classes")
    check_listed_once(options["layers"], "--layers")
    check_at_least(options["seed"], 0, "--seed")
    if study:
        classes = _authors_inputs(options).get("classes", options["classes"])
        check_study_images(_imageset(options["model"], options["images"], classes,
                                     options["class_index"])[0])


def _check_study(options: dict, probe_fits: int) -> None:
    from kerabl.validate import check_h_options, check_precision

    check_precision(options["precision"], options["engine"].value)
    _check_inputs(options, study=True)
    check_h_options(options["grid"], options["others"], options["seed"], probe_fits,
                    options["probe_max_units"], options["heldout_folds"], options["workers"])


def _run_study(out, options: dict, probe_fits: int, shard, progress: bool, stage=None):
    from kerabl.hayne.stages import run_h_stage
    from kerabl.hayne.study import run_h_study
    from kerabl.slurm import shard_of

    h = {name: options[name] for name, _, _ in H_OPTIONS if name != "workers"}
    inputs = _authors_inputs(options)
    config = _study_config(seed=options["seed"], probe_fits=probe_fits, model=options["model"],
                           inputs=inputs, **h)
    if "preprocess" in inputs and "classes" not in inputs and options["classes"] is None:
        typer.echo("note: not the authors' 10 classes (hayne10 needs the paper layout's class "
                   "list): pass --classes with their 10 WNIDs", err=True)
    shard_ = shard_of(shard) if shard else None
    net, imageset = _inputs(**_inputs_of(options))
    run = functools.partial(run_h_stage, stage) if stage else functools.partial(
        run_h_study, shard=shard_)
    layers = _layers(options["layers"])
    if layers is None and options["protocol"] is Protocol.authors \
            and options["model"] == "mobilenet_v2":   # their Conv and BN outputs
        from kerabl.models import paper_targets
        layers = list(paper_targets(options["model"], net.model))
    return run(net, imageset, out, layers=layers, config=config,
               progress=progress, workers=options["workers"], log=typer.echo)


def _stage_command(stage: str, doc: str) -> None:
    """Register `kerabl <stage>`: one H stage with the options of `kerabl study`."""
    @with_options(INPUT_OPTIONS, H_OPTIONS)
    def run(out: Annotated[Path, typer.Option(help="Output folder (as `kerabl study`).")]
            = Path("kerabl-out"),
            probe_fits: FitsOpt = 200, progress: ProgressOpt = True, **options) -> None:
        from kerabl.lock import output_lock

        _check_study(options, probe_fits)
        with output_lock(out, f"kerabl {stage}"):
            path = _run_study(out, options, probe_fits, None, progress, stage=stage)
        typer.echo(f"{stage}: {path}")
    run.__name__, run.__doc__ = stage, doc
    command(run)


_stage_command("grid", "H stage 1: unit coordinates and grid cells from the activation cache "
                       "(recorded if absent), stored in OUT/h_stages.h5.")
_stage_command("probe", "H stage 2: probe scores of the stored cells (after `kerabl grid`).")
_stage_command("ablate", "H stage 3: rank deficits of the stored cells (after `kerabl probe`); "
                         "writes OUT/h_results.h5, as `kerabl study` with the same options.")


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


def _forget_inputs() -> None:
    """Drop the cached image set and network (a command's checks and stages share them)."""
    _imageset.cache_clear()
    _inputs.cache_clear()


@functools.lru_cache(maxsize=1)
def _inputs(model, weights, alpha, images, classes, layers, preprocess, seed, custom_objects=None,
            class_index=None):
    """The network and the image set of a command (loaded once when reproduce chains stages).
    The image set is checked first: bad image arguments fail before a model is built, and the
    model's outputs are checked against the classes before any forward pass."""
    from kerabl.folders import check_outputs

    imageset, expected = _imageset(model, images, classes, class_index)
    net, notes = _network(model, weights, alpha, seed, preprocess, custom_objects)
    check_outputs(imageset, net.n_classes, expected, net.name)
    for note in notes:
        typer.echo(note, err=True)
    return net, imageset


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
        from kerabl.hayne.figures import fig_interaction_coefficients, fig_probe_contrast, _run_label

        runs = [_run_label(HResults.open(p), name) for p, name in zip(h_files, labels)]
        paths += fig_network_means(h_files, labels, out / "fig3_networks")
        paths += fig_probe_contrast(h_files, runs, out / "fig_probe_contrast")
        paths += fig_interaction_coefficients(h_files, runs, out / "fig_interaction")
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
    from kerabl.validate import check_output_file

    check_output_file(out)
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
    from kerabl.validate import check_output_file

    check_output_file(out)
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
    from kerabl.lock import output_lock
    from kerabl.validate import check_at_least

    _check_inputs(options, study=True)
    check_at_least(greedy_steps, 1, "--greedy-steps")
    check_at_least(greedy_seeds, 1, "--greedy-seeds")
    with output_lock(out, "kerabl units"):
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
    import time

    from kerabl.lock import output_lock

    start = time.perf_counter()
    model = options["model"]
    _forget_inputs()
    if probe_fits is None:
        probe_fits = probe_fits_demo if model == Model.demo else 200
        typer.echo(f"probe fits per cell: {probe_fits}"
                   + (" (demo default; --probe-fits 200 for the authors' count)"
                      if model == Model.demo and probe_fits != 200 else ""))
    _check_study(options, probe_fits)
    with output_lock(out, "kerabl reproduce"):
        _reproduce(out, probe_fits, z, progress, options, start)


def _reproduce(out, probe_fits, z, progress, options: dict, start: float) -> None:
    import json
    import time

    from kerabl.hayne.results import HResults
    from kerabl.hayne.stats import summary

    model = options["model"]
    path = _run_study(out, options, probe_fits, None, progress)
    timings = {"H study": time.perf_counter() - start}
    headline = summary(HResults.open(path))
    (Path(out) / "h_summary.json").write_text(json.dumps(headline, indent=2) + "\n")
    files = _render(path, Path(out) / "figures")
    timings["H figures"] = time.perf_counter() - start - sum(timings.values())
    if z is None:
        z = model == Model.demo and options["control"] is Control.none
        if not z and options["control"] is not Control.none:
            typer.echo("Z study not run under a control (pass --z to run it on the true labels)")
        elif not z:
            typer.echo(f"Z study not run for {model} (hours on a CPU): pass --z, or run "
                       "`kerabl units --layers ...` for chosen layers")
    if z:
        z_path = _run_units(out, options, None, 10, 5, progress)
        timings["Z study"] = time.perf_counter() - start - sum(timings.values())
        files += _render(z_path, Path(out) / "figures")
        timings["Z figures"] = time.perf_counter() - start - sum(timings.values())
    _forget_inputs()
    typer.echo(headline_text(headline))
    typer.echo(f"results: {path} (summary: {Path(out) / 'h_summary.json'})")
    typer.echo(f"figures: {Path(out) / 'figures'} ({len(files)} files)")
    typer.echo(f"wall time: {time.perf_counter() - start:.1f} s ("
               + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")")


def headline_text(headline: dict) -> str:
    """The abstract's numbers (cells as (selectivity strip, magnitude cell)), the nested test of
    the interaction and the class-bootstrap intervals."""
    deficit, probe = headline["largest_deficit"], headline["highest_probe"]
    test, corr = headline["interaction"], headline["correlation"]["probe"]
    ci = test["interval"]["selectivity_x_magnitude"]
    lines = [
        f"largest mean rank deficit: cell {tuple(deficit['cell'])} = {deficit['mean']:.3f}",
        f"highest mean probe score:  cell {tuple(probe['cell'])} = {probe['mean']:.3f}"]
    if "highest_probe_fold" in headline:
        fold = headline["highest_probe_fold"]
        lines.append(f"highest held-out probe (grid rebuilt per fold): cell {tuple(fold['cell'])} = "
                     f"{fold['mean']:.3f}" + ("" if headline.get("control", "none") == "none" else
                                              "; largest |class mean - 0.5| "
                                              f"{headline['probe_fold_chance_offset']:.3f}"))
    return "\n".join(lines + [
        f"deficit ~ sel + mag (class, layer effects): R^2 {test['r2_additive']:.3f}; + sel x mag: "
        f"R^2 {test['r2_interaction']:.3f}; F({test['df'][0]}, {test['df'][1]}) = {test['f']:.1f}, "
        f"p = {test['p_value']:.2g} ({test['n_cells']} cells)",
        f"sel x mag coefficient {test['coef_interaction']['selectivity_x_magnitude']:.3f}, 95 % "
        f"interval [{ci[0]:.3f}, {ci[1]:.3f}] (bootstrap over {test['n_classes']} classes)",
        f"probe vs deficit: Pearson r {corr['pearson_r']:.3f} [{corr['pearson_interval'][0]:.3f}, "
        f"{corr['pearson_interval'][1]:.3f}], Spearman rho {corr['spearman_rho']:.3f} "
        f"[{corr['spearman_interval'][0]:.3f}, {corr['spearman_interval'][1]:.3f}]"]
        + ([f"control: {headline['control']}"] if headline.get("control", "none") != "none" else []))


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

    _results_kind(results)
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
    from kerabl.validate import import_tensorflow

    import_tensorflow()   # quietly, before the models
    from kerabl.bench import run_bench

    run_bench(out, quick=quick, root=images)


def main() -> None:
    """Entry point of the `kerabl` console script and `python -m kerabl`."""
    app()
