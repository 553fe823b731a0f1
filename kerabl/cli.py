"""The `kerabl` command line: one command per pipeline stage, options named as the library's
keyword arguments. Each command is a thin wrapper: parse, call the library, print where results went.
Bad input raises `KerablError`, printed as one line with exit status 2.

Here: the app, the `command` decorator, a command's inputs (network and image set, loaded and
checked once) and the study stages (activations, study, grid, probe, ablate, units, reproduce);
the commands on stored results, weights, ports, SLURM and speed are in `kerabl.cli_tools`.
The library modules that load TensorFlow are imported inside the command that needs them, so
`kerabl --help` starts in a fraction of a second.

Example:
    kerabl reproduce                                  # the demo study into ./kerabl-out
    kerabl study --model alexnet --weights alexnet_weights.h5 --images DIR --layers conv_5
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from kerabl import cli_tools
from kerabl.errors import KerablError
from kerabl.hayne.config import HConfig, authors_inputs
from kerabl.imagenet import is_paper_layout
from kerabl.lock import output_lock
from kerabl.options import (H_OPTIONS, INPUT_OPTIONS, Ablation, AblationOpt, FitsOpt,
                            ProgressOpt, Protocol, ShardOpt, Unit, UnitOpt, with_options)
from kerabl.replacement import check_method
from kerabl.slurm import shard_of
from kerabl.space import no_space_file, no_space_line
from kerabl.validate import (check_at_least, check_listed_once, check_output_file,
                             check_study_images, import_tensorflow, onednn_by_default,
                             os_error_line, quiet_tensorflow)

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
        stop = _Stop()
        try:
            with stop.catching(), _full_disk_quiet():
                return fn(*args, **kwargs)
        except Exception as err:
            if stop.received:  # the interrupt, turned into another error by the library it hit
                _interrupted()
            if no_space_file(err) is not None:
                _no_space(no_space_file(err))
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


@contextlib.contextmanager
def _full_disk_quiet():
    """While a command runs, h5py's errors from releasing objects of a file the full disk stopped
    writing (it prints one traceback per object) are dropped; others are printed as usual."""
    import sys

    previous, printed = sys.unraisablehook, sys.excepthook

    def hook(unraisable):
        if no_space_file(unraisable.exc_value) is None:
            previous(unraisable)

    def print_hook(kind, value, trace):   # h5py prints the traceback too, through this hook
        if no_space_file(value) is None:
            printed(kind, value, trace)

    sys.unraisablehook, sys.excepthook = hook, print_hook
    try:
        yield
    finally:
        sys.unraisablehook, sys.excepthook = previous, printed


def _no_space(file: str):
    """A full disk: one line, then the process ends at once with status 2 (closing an HDF5 file
    whose writes failed retries them, which prints tracebacks and can crash the interpreter; the
    `.partial` files stay as a kill would leave them, and the next run resumes or discards each)."""
    import os
    import sys

    typer.echo(f"error: {no_space_line(file)}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)


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


def _print_version(value: bool) -> None:
    if value:
        from kerabl import __version__

        typer.echo(f"kerabl {__version__}")
        raise typer.Exit()


@app.callback()
def _options(verbose: Annotated[bool, typer.Option(
        help="Show TensorFlow's own log output (start-up lines, warnings).")] = False,
        version: Annotated[bool, typer.Option(
            "--version", is_eager=True, callback=_print_version,
            help="Print kerabl's version and exit.")] = False) -> None:
    """Quiet TensorFlow unless --verbose, and its oneDNN kernels on (both set before TensorFlow
    is imported; values the user set in TF_CPP_MIN_LOG_LEVEL or TF_ENABLE_ONEDNN_OPTS are kept)."""
    onednn_by_default()
    if not verbose:
        quiet_tensorflow()


def _network(model: str, weights: str, alpha: float, seed: int, preprocess: Optional[str],
             custom_objects: Optional[str] = None):
    """The network and its notes for the user (printed once the inputs are checked)."""
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
    """`kerabl.folders.study_imageset`, kept for the command's stages (loaded once)."""
    from kerabl.folders import study_imageset

    return study_imageset(model, images, classes, class_index)


def _authors_inputs(options: dict) -> dict:
    """The input options `--protocol authors` fills in (`kerabl.hayne.config.authors_inputs`)."""
    images = options.get("images")
    return authors_inputs(options.get("protocol", Protocol.default), options["model"], options,
                          bool(images and is_paper_layout(images)))


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


def _study_config(options: dict, probe_fits: int) -> HConfig:
    """The H options as an `HConfig` (checked there), with the protocol's choices printed."""
    config = HConfig.from_options({**options, "probe_fits": probe_fits}, options["protocol"],
                                  network=options["model"])
    if options["protocol"] is Protocol.authors:
        yours = config.not_the_authors(options["model"])
        listed = ", ".join([f"{k}={v}" for k, v in config.changes().items() if k not in yours]
                           + [f"{k}={v}" for k, v in _authors_inputs(options).items()])
        typer.echo(f"protocol authors ({options['model']}): {listed}", err=True)
        if yours:
            changed = ", ".join(f"{k}={v} (protocol: {t})" for k, (v, t) in yours.items())
            typer.echo(f"your options change the protocol's choices: {changed}", err=True)
    return config


@command
@with_options(INPUT_OPTIONS, H_OPTIONS)
def study(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("kerabl-out"),
    probe_fits: FitsOpt = HConfig.probe_fits, shard: ShardOpt = None, progress: ProgressOpt = True, **options,
) -> None:
    """The H study: grid, probes and cell ablation for every class x layer (resumable)."""
    _check_study(options, probe_fits)
    with output_lock(out, "kerabl study", shard=shard_of(shard) if shard else None):
        path = _run_study(out, options, probe_fits, shard, progress)
    typer.echo(f"results: {path}")


def _check_inputs(options: dict, study: bool = False) -> None:
    """The shared options, checked before a model is built or a file is created (TensorFlow,
    which the demo's image set loads, is started quietly first)."""
    import_tensorflow()
    check_listed_once(options["classes"], "--classes")
    check_listed_once(options["layers"], "--layers")
    check_at_least(options["seed"], 0, "--seed")
    if study:
        classes = _authors_inputs(options).get("classes", options["classes"])
        check_study_images(_imageset(options["model"], options["images"], classes,
                                     options["class_index"])[0])


def _check_study(options: dict, probe_fits: int) -> HConfig:
    """The H options and the inputs, checked before a model is built; the run's `HConfig`."""
    config = HConfig.from_options({**options, "probe_fits": probe_fits})
    check_at_least(options["workers"], 1, "--workers")
    _check_inputs(options, study=True)
    return config


def _run_study(out, options: dict, probe_fits: int, shard, progress: bool, stage=None):
    from kerabl.hayne.stages import run_h_stage
    from kerabl.hayne.study import run_h_study

    config = _study_config(options, probe_fits)
    net, imageset, layers = _study_inputs(options, config)
    run = functools.partial(run_h_stage, stage) if stage else functools.partial(
        run_h_study, shard=shard_of(shard) if shard else None)
    return run(net, imageset, out, layers=layers, config=config,
               progress=progress, workers=options["workers"], log=typer.echo,
               cache=options["cache"].value)


def _study_inputs(options: dict, config: HConfig | None = None):
    """The network, the image set (with every image of the folder as "other" pool under
    `config.other_images == "all"`) and the H study's target layers (None: the network's)."""
    from kerabl.models import paper_targets

    inputs = _authors_inputs(options)
    if "preprocess" in inputs and "classes" not in inputs and options["classes"] is None:
        typer.echo("note: not the authors' 10 classes (hayne10 needs the paper layout's class "
                   "list): pass --classes with their 10 WNIDs", err=True)
    net, imageset = _inputs(**_inputs_of(options))
    if config is not None and config.other_images == "all":
        from kerabl.folders import with_other_pool

        imageset, note = with_other_pool(imageset, options["images"], options["model"],
                                         options["class_index"])
        typer.echo(note, err=True)
    layers = _layers(options["layers"])
    if layers is None and options["protocol"] is Protocol.authors \
            and options["model"] == "mobilenet_v2":   # their Conv and BN outputs
        layers = list(paper_targets(options["model"], net.model))
    return net, imageset, layers


def _stage_command(stage: str, doc: str) -> None:
    """Register `kerabl <stage>`: one H stage with the options of `kerabl study`."""
    @with_options(INPUT_OPTIONS, H_OPTIONS)
    def run(out: Annotated[Path, typer.Option(help="Output folder (as `kerabl study`).")]
            = Path("kerabl-out"),
            probe_fits: FitsOpt = HConfig.probe_fits, progress: ProgressOpt = True, **options) -> None:
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
    ablation: AblationOpt = Ablation.zero,
    progress: ProgressOpt = True, **options,
) -> None:
    """The Z study: single-unit ablation, unit attributes, greedy and random-direction baselines."""
    check_method(ablation.value)   # "all" is reproduce's: one line, before any file
    options["ablation"] = ablation
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
                     greedy_seeds=greedy_seeds, ablation=options["ablation"].value)
    return run_z_study(net, imageset, out, layers=chosen, config=config, progress=progress,
                       log=typer.echo)


@command
@with_options(INPUT_OPTIONS, H_OPTIONS)
def reproduce(
    out: Annotated[Path, typer.Option(help="Output folder for results and figures.")] = Path("kerabl-out"),
    probe_fits: FitsOpt = HConfig.probe_fits,
    z: Annotated[Optional[bool], typer.Option(
        help="Also run the Z study (single units); default: on for the demo, off for the "
             "ImageNet networks (hours on a CPU: run `kerabl units` for chosen layers).")] = None,
    progress: ProgressOpt = True, **options,
) -> None:
    """The whole study: H sweep, its statistics and figures, and the Z study.

    With no arguments: the demo model on the digits test split, written to ./kerabl-out.
    The paper's AlexNet: --model alexnet --weights alexnet_weights.h5 --images DIR.
    """
    start = time.perf_counter()
    _forget_inputs()
    all_methods = options["ablation"] is Ablation.all   # the three methods, side by side
    config = _check_study({**options, "ablation": Ablation.zero} if all_methods else options,
                          probe_fits)
    with output_lock(out, "kerabl reproduce"):
        net, imageset, layers = _study_inputs(options, config)   # TensorFlow imported quietly here
        from kerabl.reproduce import reproduce as run_reproduce
        from kerabl.reproduce import reproduce_methods

        run_reproduce = reproduce_methods if all_methods else run_reproduce

        run_reproduce(net, imageset, out, config, layers=layers, z_layers=_layers(options["layers"]),
                      z=z, workers=options["workers"], progress=progress, log=typer.echo,
                      start=start, cache=options["cache"].value)
    _forget_inputs()


cli_tools.register(command)


def main() -> None:
    """Entry point of the `kerabl` console script and `python -m kerabl`.

    Example:
        main()   # as `kerabl --help` when sys.argv is ["kerabl", "--help"]
    """
    app()
