"""The command line's shared options, declared once: value choices, option annotations, and the
option groups that several commands take (`INPUT_OPTIONS`: what to study; `H_OPTIONS`: the H
protocol), appended to a command's signature by `with_options`.

Example:
    @app.command()
    @with_options(INPUT_OPTIONS, H_OPTIONS)
    def study(out: Path = Path("kerabl-out"), **options): ...   # --model, --grid, ... all there
"""

from __future__ import annotations

import inspect
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


def choices(name: str, *values: str) -> type[Enum]:
    """A str Enum of an option's values (typer lists them in --help); "-" becomes "_" in names.

    Example:
        Control = choices("Control", "none", "permuted-labels")
        Control.permuted_labels == "permuted-labels"   # True
    """
    kind = Enum(name, {value.replace("-", "_"): value for value in values}, type=str)
    kind.__doc__ = (f"The values of one option: {', '.join(values)}.\n\nExample:\n"
                    f"    {name}({values[0]!r}) is {name}.{values[0].replace('-', '_')}   # True")
    return kind


Model = choices("Model", "alexnet", "vgg16", "mobilenet_v2", "resnet101", "demo",
                "alexnet_torchvision", "resnet50_torchvision", "efficientnet_lite0",
                "efficientnet_lite1", "efficientnet_lite2")
Unit = choices("Unit", "element", "channel")
Solver = choices("Solver", "batched", "sklearn")
Engine = choices("Engine", "fast", "paper")
Control = choices("Control", "none", "permuted-labels")
Protocol = choices("Protocol", "default", "authors")
Objective = choices("Objective", "liblinear", "lbfgs")
SrsMatrix = choices("SrsMatrix", "upper", "full")


ModelOpt = Annotated[str, typer.Option(
    help="A zoo network (alexnet, vgg16, mobilenet_v2, resnet101, demo, efficientnet_lite0/1/2: "
         "kerabl[lite]), a keras.applications "
         "name (ResNet50, EfficientNetB0, ...) or a .keras model file.")]
WeightsOpt = Annotated[str, typer.Option(
    help="'default' (shipped demo weights; Keras's ImageNet weights for keras.applications), "
         "'random' (seeded random weights), or a weights file path (.pth: a torchvision state "
         "dict, needs kerabl[torch]).")]
AlphaOpt = Annotated[float, typer.Option(help="MobileNetV2 width multiplier.")]
ImagesOpt = Annotated[Optional[Path], typer.Option(
    help="ImageNet images: the paper's layout (folder with images/, the ground-truth file, "
         "meta_clsloc.mat, 50_classes.json) or synset folders (val/n01440764/*.JPEG). "
         "Or class folders (any names, image_dataset_from_directory convention). "
         "Default: the digits test split (demo model only).")]
ClassesOpt = Annotated[Optional[str], typer.Option(
    help="Study classes: hayne50, hayne8, hayne10 (the first 10 of the authors' list), or "
         "comma-separated names/WNIDs (class folders: folder names). "
         "Default: hayne50 for alexnet, hayne8 for the other ImageNet networks "
         "(hayne10 for mobilenet_v2 under --protocol authors).")]
LayersOpt = Annotated[Optional[str], typer.Option(
    help="Comma-separated target layers (default: the model's default targets).")]
UnitOpt = Annotated[Unit, typer.Option(help="element: every activation; channel: spatial mean.")]
PreprocessOpt = Annotated[Optional[str], typer.Option(
    help="paper, heuritech, torchvision, efficientnet_lite (crop 0.875, bicubic, (x - 127) / 128), "
         "centre_crop (the same crop, 0..255), none, scale (/255), caffe, tf, torch, or a "
         "keras.applications name (resnet50, ...); default: the model's own (.keras files: none; "
         "torchvision for .pth weights).")]
CustomOpt = Annotated[Optional[str], typer.Option(
    help="Custom objects of a .keras file: module:name, comma-separated (a module alone is "
         "imported, registering its serialisables; a module may be a .py path).")]
ClassIndexOpt = Annotated[Optional[Path], typer.Option(
    help="Class folders: JSON object folder name -> model output index (default: sorted "
         "folder order).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of every random choice (recorded in results).")]
ProgressOpt = Annotated[bool, typer.Option(help="Show progress bars.")]


INPUT_OPTIONS = (  # what to study: shared by activations, study, units and reproduce
    ("model", ModelOpt, "demo"), ("weights", WeightsOpt, "default"), ("alpha", AlphaOpt, 0.35),
    ("images", ImagesOpt, None), ("classes", ClassesOpt, None), ("layers", LayersOpt, None),
    ("preprocess", PreprocessOpt, None), ("seed", SeedOpt, 0),
    ("custom_objects", CustomOpt, None), ("class_index", ClassIndexOpt, None))


def with_options(*groups):
    """Declare shared options once: each (name, annotation, default) is appended to the command's
    signature as a keyword-only option, and reaches the command through its `**options`.

    Example:
        @app.command()
        @with_options(INPUT_OPTIONS)
        def layers_of(out: Path = Path("x"), **options): ...   # options["model"], options["seed"], ...
    """
    def add(fn):
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                    annotation=annotation)
                  for group in groups for name, annotation, default in group]
        fn.__signature__ = signature.replace(parameters=own + shared)
        return fn
    return add


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
         "LogisticRegression loop (it may stop early, so a prediction can differ).")]
ProtocolOpt = Annotated[Protocol, typer.Option(
    help="authors: every choice of the authors' code for this model (their grid bounds, "
         "full-matrix srs, liblinear or lbfgs probe, others; mobilenet_v2: its 104 Conv/BN "
         "targets); options given other values than their defaults still apply.")]
ObjectiveOpt = Annotated[Objective, typer.Option(
    help="Probe objective: liblinear (the authors' scikit-learn <= 0.20: intercept penalised) "
         "or lbfgs (unpenalised intercept; their MobileNetV2 code).")]
SrsMatrixOpt = Annotated[SrsMatrix, typer.Option(
    help="srs over the RDMs' upper triangles, or the authors' full matrices (diagonal "
         "included; NaN for a zero-variance image).")]
PrecisionOpt = Annotated[str, typer.Option(
    help="Arithmetic of the H study's ablated tail (--engine fast): float32, or bfloat16 "
         "(mixed precision: faster where the CPU has bfloat16 units, ranks may move slightly; "
         "`kerabl bench` prints the largest rank and deficit change). Recorded in the results. "
         "The Z study (`kerabl units`, reproduce's Z part) stays float32: its exact Dense "
         "shortcut has no bfloat16 path.")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    help="Processes fitting the probes (default: one per CPU core); results do not depend on it.")]
ControlOpt = Annotated[Control, typer.Option(
    help="permuted-labels: the whole study with the class labels shuffled among the images "
         "(seeded by --seed, recorded in the results): a sound held-out probe sits at chance.")]
ShardOpt = Annotated[Optional[str], typer.Option(
    help="Run shard i of n (0-based, e.g. 3/8), or 'auto' (this SLURM array task's shard); "
         "join the shard files with `kerabl merge`.")]

H_OPTIONS = (  # the H protocol: shared by study and reproduce
    ("unit", UnitOpt, Unit.element), ("grid", GridOpt, "4x4"),
    ("others", OthersOpt, "random-10"), ("clip", ClipOpt, True),
    ("legacy_bounds", LegacyOpt, False), ("probe_max_units", MaxUnitsOpt, 100),
    ("heldout_folds", FoldsOpt, 5), ("srs", SrsOpt, True), ("engine", EngineOpt, Engine.fast),
    ("probe_solver", SolverOpt, Solver.batched), ("control", ControlOpt, Control.none),
    ("workers", WorkersOpt, None), ("protocol", ProtocolOpt, Protocol.default),
    ("probe_objective", ObjectiveOpt, Objective.liblinear),
    ("srs_matrix", SrsMatrixOpt, SrsMatrix.upper), ("precision", PrecisionOpt, "float32"))
