"""The `kerabl` command line: one command per pipeline stage, options named as the library's
keyword arguments. Each command is a thin wrapper: parse, call the library, print where results went.
Bad input raises `KerablError`, printed as one line with exit status 2.

Here: the app, the `command` decorator, a command's inputs (network and image set, loaded and
checked once) and the study stages (activations, study, grid, probe, ablate, units, reproduce);
the commands on stored results, weights, ports, SLURM and speed are in `kerabl.cli_tools`.

Example:
    kerabl reproduce                                  # the demo study into ./kerabl-out
    kerabl study --model alexnet --weights alexnet_weights.h5 --images DIR --layers conv_5
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from kerabl.errors import KerablError
from kerabl.options import (H_OPTIONS, INPUT_OPTIONS, Control, Engine, FitsOpt, Model,
                            Objective, ProgressOpt, Protocol, ShardOpt, Solver, SrsMatrix, Unit,
                            UnitOpt, with_options)

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Unit-ablation studies of image CNNs (Hayne et al. 2022; Zhou et al. 2018).\n\n"
         "Stages: activations -> study (grid, probes, cell ablation: the H study; or grid -> "
         "probe -> ablate one by one); units (the Z study); figures, export, merge; reproduce "
         "chains them; slurm runs them as SLURM jobs; layers lists a model's layers; bench "
         "measures speed.")


def command(fn=None, **settings):
    """Register a stage: a `KerablError` or an OS error becomes one line on stderr and exit
    status 2; Ctrl-C and SIGTERM stop it with one line and status 130 (finished work is kept).

    Example:
        @command
        def export(results: Path, out: Path = Path("results.csv")) -> None: ...
        @command(context_settings={"allow_extra_args": True})   # settings of app.command
    """
    if fn is None:
        return functools.partial(command, **settings)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        from kerabl.validate import os_error_line

        stop = _Stop()
        try:
            with stop.catching():
                return fn(*args, **kwargs)
        except Exception as err:
            if stop.received:  # the interrupt, turned into another error by the library it hit
                _interrupted()
            if isinstance(err, KerablError):
                typer.echo(f"error: {err}", err=True)
                raise typer.Exit(2) from None
            if isinstance(err, OSError):
                typer.echo(f"error: {os_error_line(err)}", err=True)
                raise typer.Exit(2) from None
            raise
        except KeyboardInterrupt:
            _interrupted()
        finally:
            _forget_inputs()  # a model file may change between two commands of a process
    return app.command(**settings)(run)


def _interrupted():
    typer.echo("interrupted: finished work is kept; rerun the same command to resume", err=True)
    raise typer.Exit(130) from None


class _Stop:
    """Ctrl-C and SIGTERM (what a batch scheduler sends) raise KeyboardInterrupt in the main
    thread while a command runs, and are remembered: a library that catches the interrupt where
    it lands (TensorFlow does, while it traces a function) and raises another error instead still
    ends the command as an interrupt, never with a traceback.

    Example:
        stop = _Stop()
        with stop.catching():
            work()              # a signal here raises KeyboardInterrupt; stop.received is True
    """

    def __init__(self):
        self.received = False

    def _interrupt(self, signum, frame):
        self.received = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def catching(self):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        # Ctrl-C too, unless something other than Python's own handler listens to it
        signums = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT)
                                      is signal.default_int_handler else [])
        previous = {s: signal.signal(s, self._interrupt) for s in signums}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@app.callback()
def _options(verbose: Annotated[bool, typer.Option(
        help="Show TensorFlow's own log output (start-up lines, warnings).")] = False) -> None:
    """Quiet TensorFlow unless --verbose, and its oneDNN kernels on (both set before TensorFlow
    is imported; values the user set in TF_CPP_MIN_LOG_LEVEL or TF_ENABLE_ONEDNN_OPTS are kept)."""
    from kerabl.validate import onednn_by_default, quiet_tensorflow

    onednn_by_default()
    if not verbose:
        quiet_tensorflow()


def _network(model: str, weights: str, alpha: float, seed: int, preprocess: Optional[str],
             custom_objects: Optional[str] = None):
    """The network and its notes for the user (printed once the inputs are checked)."""
    import dataclasses

    from kerabl.validate import import_tensorflow

    import_tensorflow()
    from kerabl.images import check_preprocess
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
        from kerabl.images import RECIPES_NOTE
        notes.append(f"note: --preprocess not given: {model} gets RGB 0..255 images resized to "
                     f"{net.input_size} without keeping the aspect ratio; recipes: {RECIPES_NOTE}")
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
    probe_fits: FitsOpt = 200,
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
    _forget_inputs()
    _check_study(options, probe_fits)
    with output_lock(out, "kerabl reproduce"):
        _reproduce(out, probe_fits, z, progress, options, start)


# The Z figures `kerabl reproduce` draws in the process that drew the H figures (the two that
# took longest on the demo, 6.4 of 11.6 s), while the other two are drawn in the main process.
Z_FIGURES_BESIDE = ("z_greedy", "z_top_images")


def _reproduce(out, probe_fits, z, progress, options: dict, start: float) -> None:
    import json
    import time

    from kerabl.cli_tools import render, render_timed
    from kerabl.hayne.results import HResults
    from kerabl.hayne.stats import summary
    from kerabl.hayne.study import worker_count, worker_pool

    model = options["model"]
    path = _run_study(out, options, probe_fits, None, progress)
    timings = {"H study": time.perf_counter() - start}
    headline = summary(HResults.open(path))
    (Path(out) / "h_summary.json").write_text(json.dumps(headline, indent=2) + "\n")
    figures = Path(out) / "figures"
    if z is None:
        z = model == Model.demo and options["control"] is Control.none
        if not z and options["control"] is not Control.none:
            typer.echo("Z study not run under a control (pass --z to run it on the true labels)")
        elif not z:
            typer.echo(f"Z study not run for {model} (hours on a CPU): pass --z, or run "
                       "`kerabl units --layers ...` for chosen layers")
    # with a Z study and more than one core, the H figures are drawn in a process beside it
    beside = z and worker_count(options["workers"]) > 1
    with worker_pool(1) if beside else contextlib.nullcontext(None) as pool:
        if pool is None:
            files = render(path, figures)
            timings["H figures"] = time.perf_counter() - start - sum(timings.values())
        else:
            h_figures = pool.submit(render_timed, path, figures)
        if z:
            z_path = _run_units(out, options, None, 10, 5, progress)
            timings["Z study"] = time.perf_counter() - start - sum(timings.values())
            if pool is None:
                z_files = render(z_path, figures)
                timings["Z figures"] = time.perf_counter() - start - sum(timings.values())
            else:
                # half the Z figures go to the process of the H figures (done by now on the
                # demo), half are drawn here: each figure's png and pdf take seconds to write
                from kerabl.zhou.figures import FIGURE_NAMES

                there = pool.submit(render, z_path, figures, z_names=Z_FIGURES_BESIDE)
                z_files = render(z_path, figures, z_names=[
                    name for name in FIGURE_NAMES if name not in Z_FIGURES_BESIDE])
                files, seconds = h_figures.result()
                z_files += there.result()
                timings["Z figures (half beside)"] = (time.perf_counter() - start
                                                      - sum(timings.values()))
                timings["H figures (beside the Z study)"] = seconds
            files += z_files
    _forget_inputs()
    typer.echo(headline_text(headline))
    typer.echo(f"results: {path} (summary: {Path(out) / 'h_summary.json'})")
    typer.echo(f"figures: {Path(out) / 'figures'} ({len(files)} files)")
    typer.echo(f"wall time: {time.perf_counter() - start:.1f} s ("
               + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")")


def headline_text(headline: dict) -> str:
    """The abstract's numbers (cells as (selectivity strip, magnitude cell)), the nested test of
    the interaction and the class-bootstrap intervals.

    Example:
        typer.echo(headline_text(summary(HResults.open("kerabl-out/h_results.h5"))))
        # largest mean rank deficit: cell (3, 3) = 0.425 ...
    """
    from kerabl.hayne.baseline import Baseline

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
        + ([f"control: {headline['control']}"] if headline.get("control", "none") != "none" else [])
        + (Baseline.from_dict(headline["baseline"]).lines(per_class=True)
           if "baseline" in headline else []))


from kerabl import cli_tools  # noqa: E402,F401 - registers the other commands on `app`


def main() -> None:
    """Entry point of the `kerabl` console script and `python -m kerabl`.

    Example:
        main()   # as `kerabl --help` when sys.argv is ["kerabl", "--help"]
    """
    app()
