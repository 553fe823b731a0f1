"""The H study's protocol options, declared and checked once.

- `HConfig`: every protocol choice of the paper; defaults = the authors' choices except the
  grid bounds (`legacy_bounds=True` gives theirs) and the srs matrices (`srs_matrix="full"`);
  `HConfig.authors(network)` = every choice of the authors' code for that network. Each field
  carries its command-line help and its choices (`option_help`, `option_choices`): the command
  line's H options are built from these fields, so a new option is one new field.
- `HConfig.from_options(options, protocol=..., network=...)`: the config from option values as
  the command line passes them ("4x4" grids, Enum choices); `__post_init__` checks every field,
  the one place the H options are checked.
- `AUTHORS_INPUTS`, `authors_inputs(...)`: the input options `protocol="authors"` fills in.

Example:
    HConfig.from_options({"grid": "2x2", "engine": "paper"})   # HConfig(grid=(2, 2), engine="paper", ...)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from kerabl.choices import engine_kind
from kerabl.errors import KerablError
from kerabl.images import check_preprocess
from kerabl.replacement import METHODS, check_method
from kerabl.validate import check_at_least, check_precision

UNITS = ("element", "channel")
CONTROLS = ("none", "permuted-labels")
# The H study's engines as its command line and results files spell them (`kerabl.choices`).
ENGINE_OPTIONS = ("fast", "paper")
SOLVERS = ("batched", "sklearn")
OBJECTIVES = ("liblinear", "lbfgs", "unpenalised")
SRS_MATRICES = ("upper", "full")
PROTOCOLS = ("default", "authors")
OTHER_IMAGES = ("studied", "all")
MEANS = ("float64", "float32")
EMPTY_CELLS = ("nan", "zero")
# The choices of the authors' MobileNetV2 and ResNet scripts that differ from their AlexNet one's
AUTHORS_BY_NETWORK = {
    "mobilenet_v2": dict(other_images="all", probe_objective="unpenalised", empty_cells="zero"),
    "resnet50_torchvision": dict(other_images="all", probe_objective="unpenalised",
                                 empty_cells="zero", ablation_preprocess="torchvision232")}
_RANDOM_MODE = re.compile(r"random-(\d+)")


def _option(help: str, choices: tuple[str, ...] | None = None, **kwargs) -> Any:
    """A field with its command-line help and choices in the field's metadata."""
    return field(metadata={"help": help, "choices": choices}, **kwargs)


@dataclass(frozen=True)
class HConfig:
    """Protocol options of the H study; defaults are the authors' choices except where theirs
    is a bug (docs/protocol.md lists each difference, per network).

    Example:
        HConfig(grid=(4, 4), others="all", probe_fits=50)
        HConfig.authors("alexnet")       # alexnet_ablation.py exactly, bugs included
    """

    grid: tuple[int, int] = _option("Grid shape: selectivity strips x magnitude cells.",
                                    default=(4, 4))
    unit: str = _option("element: every activation; channel: spatial mean.", UNITS,
                        default="element")
    others: str = _option("Other classes per target: random-10 (seeded) or all.",
                          default="random-10")
    seed: int = _option("Seed of every random choice (recorded in results).", default=0)
    clip: bool = _option("Clip negative rank deficits to 0 (the authors' choice).", default=True)
    legacy_bounds: bool = _option(
        "The authors' inclusive grid bounds (a boundary unit can fall in two cells).",
        default=False)
    probe_fits: int = _option("Probe fits per cell (the authors: 200).", default=200)
    probe_max_units: int = _option("Units per probe fit (the authors: 100).", default=100)
    heldout_folds: int = _option("Folds of the held-out probe metric.", default=5)
    srs: bool = _option("Compute the representational-similarity scores.", default=True)
    engine: str = _option(
        "fast: cached activations, tail only; paper: Lambda mask rebuilt per cell, full forward.",
        ENGINE_OPTIONS, default="fast")
    probe_solver: str = _option(
        "batched: the exact optimum of every probe fit at once; sklearn: scikit-learn's own "
        "LogisticRegression per fit, as the authors ran it (liblinear stops at tol 1e-4, so a "
        "prediction can differ from the optimum's; --protocol authors' choice).", SOLVERS,
        default="batched")
    control: str = _option(
        "permuted-labels: the whole study with the class labels shuffled among the images "
        "(seeded by --seed, recorded in the results): a sound held-out probe sits at chance.",
        CONTROLS, default="none")
    probe_objective: str = _option(
        "Probe objective: liblinear (the authors' scikit-learn <= 0.20: intercept penalised), "
        "lbfgs (L2, unpenalised intercept) or unpenalised (no penalty: their MobileNetV2 and "
        "ResNet code; needs --probe-solver sklearn).", OBJECTIVES,
        default="liblinear")
    srs_matrix: str = _option(
        "srs over the RDMs' upper triangles, or the authors' full matrices (diagonal "
        "included; NaN for a zero-variance image).", SRS_MATRICES, default="upper")
    precision: str = _option(
        "Arithmetic of the H study's ablated tail (--engine fast): float32, or bfloat16 "
        "(mixed precision: faster where the CPU has bfloat16 units, ranks may move slightly; "
        "`kerabl bench` prints the largest rank and deficit change). Recorded in the results. "
        "The Z study (`kerabl units`, reproduce's Z part) stays float32: its exact Dense "
        "shortcut has no bfloat16 path.", default="float32")
    ablation: str = _option(
        "How a removed unit is removed: zero (both papers; --protocol authors), mean (its mean "
        "activation over the study's images, stored in the results) or resample (its value in "
        "another image of the study, outside the target class; the draws are stored). "
        "Recorded in the results. all: `kerabl reproduce` runs the three, OUT/<method>, and "
        "compares them.", METHODS, default="zero")
    # What the authors' scripts do per network (`authors`): the "other" images, the precision of
    # the class means, an empty cell's srs, and a second recipe for the ranks.
    other_images: str = _option(
        "The probes' and means' other images: those of the other studied classes (chosen by "
        "--others), or all: every image of the folder not of the target class, studied or not "
        "(the authors' MobileNetV2 and ResNet scripts; --others then does not apply).",
        OTHER_IMAGES, default="studied")
    means: str = _option(
        "Precision of the class means behind selectivity and magnitude: float64, or float32 "
        "(the authors' np.mean of float32 activations).", MEANS, default="float64")
    empty_cells: str = _option(
        "srs of a cell without units (legacy bounds): nan, or zero (the authors' MobileNetV2 "
        "and ResNet scripts). Its deficit is 0 and its probe NaN either way.", EMPTY_CELLS,
        default="nan")
    ablation_preprocess: str = _option(
        "Preprocessing of the baseline and ablated ranks when it differs from the activations' "
        "(--preprocess), e.g. torchvision232 (the authors' ResNet script); default: the same.",
        default="")

    @classmethod
    def authors(cls, network: str = "alexnet", **changes) -> "HConfig":
        """Every choice of the authors' script for `network`, bugs included; `changes` override
        single fields.

        Every network: their grid bounds, full-matrix srs, float32 means, scikit-learn's own
        probe fits (`probe_solver="sklearn"`). "alexnet" (`alexnet_ablation.py`; also every
        network whose script was not published: vgg16, resnet101, ...): the liblinear probe,
        10 random other classes, an empty cell's srs NaN. "mobilenet_v2"
        (`mobilenetv2_ablation.py`): every other image of the set, the unpenalised probe, an
        empty cell's srs 0. "resnet50_torchvision" (`resnet_ablation.py`): as MobileNetV2, and
        the ranks from `ResNet50_Weights.IMAGENET1K_V2.transforms()` ("torchvision232").

        Example:
            HConfig.authors("mobilenet_v2").other_images    # "all"
        """
        choices = dict(legacy_bounds=True, srs_matrix="full", probe_objective="liblinear",
                       probe_solver="sklearn", others="random-10", grid=(4, 4), unit="element",
                       clip=True, probe_fits=200, probe_max_units=100, means="float32")
        choices.update(AUTHORS_BY_NETWORK.get(network, {}))
        return cls(**{**choices, **changes})

    @classmethod
    def from_options(cls, options: Mapping[str, Any], protocol: str = "default",
                     network: str = "alexnet") -> "HConfig":
        """The config of option values as the command line passes them: a grid as "4x4",
        choices as Enums or strings; keys that are no field are ignored. Under
        `protocol="authors"`, `HConfig.authors(network)` with every option given a value other
        than its default kept.

        Example:
            HConfig.from_options({"grid": "2x2", "probe_fits": 10})        # grid=(2, 2)
            HConfig.from_options({}, protocol="authors", network="vgg16")  # the authors' choices
        """
        protocol = _value(protocol)
        if protocol not in PROTOCOLS:
            raise KerablError(f"unknown protocol {protocol!r}: use default or authors")
        values = {f.name: _value(options[f.name]) for f in dataclasses.fields(cls)
                  if f.name in options}
        if isinstance(values.get("grid"), str):
            values["grid"] = parse_grid(values["grid"])
        config = cls(**values)
        if protocol == "authors":
            default = cls()
            changed = {k: v for k, v in dataclasses.asdict(config).items()
                       if v != getattr(default, k)}
            config = dataclasses.replace(cls.authors(network), **changed)
        return config

    def __post_init__(self):
        if self.unit not in UNITS:
            raise KerablError(f"unknown unit kind {self.unit!r}: use one of {', '.join(UNITS)}")
        engine_kind(self.engine)
        if self.probe_solver not in SOLVERS:
            raise KerablError(f"unknown probe solver {self.probe_solver!r}: use batched or sklearn")
        if self.control not in CONTROLS:
            raise KerablError(f"unknown control {self.control!r}: use none or permuted-labels")
        if self.probe_objective not in OBJECTIVES:
            raise KerablError(f"unknown probe objective {self.probe_objective!r}: "
                              f"use one of {', '.join(OBJECTIVES)}")
        check_method(self.ablation)
        for name, allowed in (("other_images", OTHER_IMAGES), ("means", MEANS),
                              ("empty_cells", EMPTY_CELLS)):
            if getattr(self, name) not in allowed:
                raise KerablError(f"unknown {name.replace('_', ' ')} {getattr(self, name)!r}: "
                                  f"use one of {', '.join(allowed)}")
        if self.ablation_preprocess:
            check_preprocess(self.ablation_preprocess)
        if self.probe_objective == "unpenalised" and self.probe_solver != "sklearn":
            raise KerablError("the unpenalised probe has no optimum on a separable cell, so the "
                              "batched solver cannot give it: use --probe-solver sklearn (or "
                              "--protocol authors)")
        if self.srs_matrix not in SRS_MATRICES:
            raise KerablError(f"unknown srs matrix {self.srs_matrix!r}: use upper or full")
        check_precision(self.precision, self.engine)
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise KerablError(f"grid must be two positive integers, got {self.grid}")
        others_count(self.others)
        check_at_least(self.seed, 0, "--seed")
        check_at_least(self.probe_fits, 1, "--probe-fits")
        check_at_least(self.probe_max_units, 1, "--probe-max-units")
        check_at_least(self.heldout_folds, 2, "--heldout-folds")

    def as_dict(self) -> dict:
        """The fields as plain JSON values (the grid as a list), as results files record them.

        Example:
            HConfig(grid=(2, 2)).as_dict()["grid"]    # [2, 2]
        """
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    def changes(self) -> dict:
        """The fields whose values differ from `HConfig()`'s.

        Example:
            HConfig.authors("vgg16").changes()   # {'legacy_bounds': True, 'srs_matrix': 'full'}
        """
        default = HConfig()
        return {k: v for k, v in dataclasses.asdict(self).items() if v != getattr(default, k)}

    def not_the_authors(self, network: str = "alexnet") -> dict:
        """The fields whose values differ from `HConfig.authors(network)`'s, each as (this
        config's value, the authors'): what a run under `--protocol authors` changed.

        Example:
            HConfig.authors("alexnet", probe_fits=10).not_the_authors()   # {'probe_fits': (10, 200)}
        """
        theirs = dataclasses.asdict(HConfig.authors(network))
        return {k: (v, theirs[k]) for k, v in dataclasses.asdict(self).items() if v != theirs[k]}


def option_help(name: str) -> str:
    """The command-line help of `HConfig` field `name`.

    Example:
        option_help("heldout_folds")    # 'Folds of the held-out probe metric.'
    """
    return _field(name).metadata["help"]


def option_choices(name: str) -> tuple[str, ...] | None:
    """The values `HConfig` field `name` takes as a command-line choice (None: free text or a
    number).

    Example:
        option_choices("engine")    # ('fast', 'paper')
    """
    return _field(name).metadata["choices"]


def option_default(name: str) -> Any:
    """`HConfig` field `name`'s default, as the command line shows it (a grid as "4x4").

    Example:
        option_default("grid")    # '4x4'
    """
    default = _field(name).default
    return "x".join(map(str, default)) if name == "grid" else default


def _field(name: str) -> dataclasses.Field:
    fields = {f.name: f for f in dataclasses.fields(HConfig)}
    if name not in fields:
        raise KerablError(f"HConfig has no field {name!r}")
    return fields[name]


def parse_grid(text: str) -> tuple[int, int]:
    """A grid shape written as on the command line.

    Example:
        parse_grid("4x4")    # (4, 4); "4by4" is a KerablError
    """
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise KerablError(f"--grid must be two positive integers like 4x4, got {text!r}")
    return int(parts[0]), int(parts[1])


def others_count(mode: str) -> int | None:
    """K of an others mode "random-K" (at least 1), None for "all".

    Example:
        others_count("random-10")   # 10
        others_count("all")         # None
        others_count("random-0")    # KerablError: K must be at least 1
    """
    if mode == "all":
        return None
    match = _RANDOM_MODE.fullmatch(mode)
    if match is None:
        raise KerablError(f"--others must be 'all' or 'random-K' (e.g. random-10), got {mode!r}")
    if int(match.group(1)) < 1:
        raise KerablError(f"--others {mode} draws no other class: K must be at least 1 "
                          "(e.g. random-10), or use all")
    return int(match.group(1))


def _value(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


# The authors' inputs under protocol "authors" where classes / preprocess are not given
AUTHORS_INPUTS = {"mobilenet_v2": {"classes": "hayne10", "preprocess": "mobilenet_v2_authors"},
                  "resnet50_torchvision": {"classes": "hayne10", "preprocess": "torchvision"}}


def authors_inputs(protocol: str, model: str, given: Mapping[str, Any],
                   paper_layout: bool) -> dict:
    """The input options protocol "authors" fills in where `given` has None (for their
    MobileNetV2 and ResNet runs: hayne10, only on the paper layout with no class index, and
    the activations' preprocessing); {} under the default protocol.

    Example:
        authors_inputs("authors", "mobilenet_v2", {"classes": None, "preprocess": None}, True)
        # {'classes': 'hayne10', 'preprocess': 'mobilenet_v2_authors'}
    """
    if _value(protocol) != "authors":
        return {}
    filled = {k: v for k, v in AUTHORS_INPUTS.get(model, {}).items() if given.get(k) is None}
    if "classes" in filled and not (paper_layout and given.get("class_index") is None):
        del filled["classes"]                 # hayne10 is defined by the paper layout's list
    return filled
