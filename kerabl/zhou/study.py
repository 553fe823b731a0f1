"""The Z study of several layers, into one resumable HDF5 results file.

- `run_z_study(net, imageset, out_dir, *, layers=None, config=ZConfig(), log=print)`: per layer,
  single-unit and random-direction ablation and the unit attributes; then greedy and random-order
  curves for one layer. Mirrors `kerabl.hayne.study.run_h_study`.
- `ZConfig`: every choice of the run, stored in the results file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kerabl.contents import array_table, contents_digest, describe_changes, image_files
from kerabl.engine import (DEFAULT_BATCH, HEAD_BATCH, ChannelEngine, TailAblator, channel_engine,
                           check_live_outputs, predict_batched)
from kerabl.errors import KerablError
from kerabl.graph import as_model
from kerabl.progress import progress_bar
from kerabl.replacement import check_method
from kerabl.nested import flat_network, resolve_layer, resolve_layers
from kerabl.space import check_room, no_space_file
from kerabl.store import (config_differences, differing_keys, finish_partial, library_versions,
                          open_h5, partial_path)
from kerabl.zhou.ablation import (direction_drops, greedy, layer_replacement, random_order,
                                  unit_drops)
from kerabl.zhou.attributes import (TOP_K, attribute_drop_correlations, class_correlation,
                                    class_means, l1_norms, selectivity_index, top_activating)
from kerabl.zhou.heldout import most_hurt_class, split_greedy
from kerabl.zhou.results import Z_KIND, Z_SCHEMA, display_images, read_config


THUMBNAIL_MAX = 64


def _json_default(value):
    return value.tolist() if isinstance(value, np.ndarray) else value.item()


def _digest(array: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


@dataclass
class _StudyData:
    labels: np.ndarray
    classes: np.ndarray
    class_names: list[str]
    imageset: Any
    network: Any

    def images(self) -> np.ndarray:
        return np.asarray(self.imageset.load(self.network.input_size, self.network.preprocess),
                          dtype=np.float32)


def _study_data(network, imageset) -> _StudyData:
    labels = np.asarray(imageset.labels).astype(np.int64)
    classes = np.asarray(imageset.classes)
    if not np.issubdtype(classes.dtype, np.integer):
        raise KerablError("imageset.classes must be the model output indices of the studied classes")
    names = [str(n) for n in getattr(imageset, "class_names", classes)]
    return _StudyData(labels, classes.astype(np.int64), names, imageset, network)


def _study_config(network, data: _StudyData, layers: Sequence[str], seed: int, greedy_layer: str,
                  greedy_steps: int, greedy_seeds: int, top_k: int,
                  ablation: str = "zero") -> dict[str, Any]:
    return {"network": network.name, "weights": network.weights_id, "layers": list(layers),
            "imageset": getattr(data.imageset, "name", type(data.imageset).__name__),
            "labels": _digest(data.labels), "n_images": int(len(data.labels)),
            "classes": data.classes.tolist(), "unit": "channel", "seed": int(seed),
            "input_size": list(network.input_size), "preprocess": network.preprocess,
            "greedy_layer": greedy_layer, "greedy_steps": int(greedy_steps),
            "greedy_seeds": list(range(int(greedy_seeds))), "top_k": int(top_k),
            "greedy_split": "halves", "tie_break": "random", "ablation": ablation}


def _check_config(path: Path, stored: dict[str, Any], wanted: dict[str, Any],
                  note: str = "the image contents changed", log=None) -> bool:
    """True when `path` holds this run. A file that differs only in the image contents, or a
    partial file that holds no finished layer, is removed (and that is said): False."""
    changes = config_differences(stored, wanted)
    if not changes:
        return True
    keys = set(differing_keys(stored, wanted))
    if keys == {"contents"}:
        (log or print)(f"{note} since {path} was written: recomputing it")
    elif path.name.endswith(".partial") and not _done_groups(path):
        (log or print)(f"replacing {path}: it holds no finished layer and was made with other "
                       f"options ({'; '.join(changes)})")
    else:
        raise KerablError(f"{path} was made with other options ({'; '.join(changes)}): "
                          "pass the same options or another output folder")
    path.unlink()
    return False


def _default_greedy_layer(model, layers: Sequence[str]) -> str:
    spatial = [name for name in layers if len(model.get_layer(name).output.shape) == 4]
    return (spatial or list(layers))[-1]


def _create_partial(partial: Path, config: dict[str, Any], data: _StudyData,
                    images: np.ndarray) -> None:
    import h5py

    check_room(partial, images.nbytes)
    with h5py.File(partial, "w") as f:
        f.attrs["kind"] = Z_KIND
        f.attrs["schema"] = Z_SCHEMA
        f.attrs["config"] = json.dumps(config)
        f.attrs["versions"] = json.dumps(library_versions())
        f.create_dataset("labels", data=data.labels)
        f.create_dataset("classes", data=data.classes)
        f.create_dataset("class_names", data=np.array(data.class_names, dtype=object),
                         dtype=h5py.string_dtype())
        if images.ndim == 4 and max(images.shape[1:3]) <= THUMBNAIL_MAX:
            f.create_dataset("thumbnails", data=display_images(images), compression="gzip")


def _done_groups(partial: Path) -> set[str]:
    import h5py

    with open_h5(partial) as f:
        return {name for name, group in f.items()
                if isinstance(group, h5py.Group) and group.attrs.get("done", False)}


def _salvage(partial: Path, log: Callable[[str], None]) -> None:
    """Rewrite `partial` with what reads back whole: its top-level datasets and attributes and
    each finished group, every array read (a run stopped mid-write, by a full disk or a kill,
    can leave a group or the file's index cut off); a group that fails is dropped, to be
    computed again, and a file whose top level fails is removed. Each loss is said."""
    import h5py

    fresh = partial.with_name(partial.name + ".tmp")
    dropped = []
    try:
        with open_h5(partial) as src, h5py.File(fresh, "w") as dst:
            dst.attrs.update(dict(src.attrs))
            for name in list(src):
                if not name.startswith("layer_") and name != "greedy":   # labels, classes...
                    src[name][()]
                    src.copy(name, dst, name)
                    continue
                try:
                    group = src[name]
                    if not group.attrs.get("done", False):
                        continue               # begun, not finished: computed again
                    for ds in group.values():
                        ds[()]
                except (OSError, RuntimeError, KeyError, ValueError):
                    dropped.append(name)
                    continue
                src.copy(group, dst, name)
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        fresh.unlink(missing_ok=True)
        if no_space_file(err) is not None:
            raise
        log(f"discarding {partial} (unreadable, cut off mid-write: {str(err)[:80]}): starting "
            "afresh")
        partial.unlink()
        return
    os.replace(fresh, partial)
    for name in dropped:
        log(f"{partial}: {name} was cut off mid-write: computing it again")


def _write_group(partial: Path, name: str, arrays: Mapping[str, np.ndarray],
                 attrs: Mapping[str, Any]) -> None:
    check_room(partial, sum(np.asarray(a).nbytes for a in arrays.values()))
    with open_h5(partial, "a") as f:
        if name in f:
            del f[name]
        group = f.create_group(name)
        for key, value in arrays.items():
            group.create_dataset(key, data=value)
        for key, value in attrs.items():
            group.attrs[key] = value
        group.attrs["done"] = True


def _layer_results(model, eng: TailAblator, data: _StudyData, probs: np.ndarray, layer: str,
                   seed: int, top_k: int, progress: bool) -> tuple[dict, dict]:
    units = unit_drops(eng, data.labels, data.classes, None, progress, f"units {layer}")
    directions = direction_drops(eng, data.labels, data.classes, seed, None, progress,
                                  f"random directions {layer}")
    corr = class_correlation(eng.acts, probs[:, data.classes])
    attrs = {"l1": l1_norms(model, layer),
             "max_class_corr": np.where(np.isnan(corr).all(axis=1), np.nan,
                                        np.nanmax(np.nan_to_num(corr, nan=-np.inf), axis=1)),
             "selectivity": selectivity_index(eng.acts, data.labels, data.classes)}
    top, maps = top_activating(eng.acts, min(top_k, len(data.labels)))
    arrays = {key: units[key] for key in ("class_acc", "base_class_acc", "overall_drop",
                                          "class_drop", "max_class_drop", "argmax_class")}
    arrays["hurt_class"], arrays["hurt_ties"] = most_hurt_class(units["class_drop"], seed)
    arrays.update(attrs, class_corr=corr, class_means=class_means(eng.acts, data.labels, data.classes),
                  top_images=top, top_maps=maps,
                  rand_max_class_drop=directions["max_class_drop"],
                  rand_overall_drop=directions["overall_drop"], rotation=directions["rotation"])
    corrs = attribute_drop_correlations(attrs, units["overall_drop"], units["max_class_drop"])
    return arrays, {"base_acc": units["base_acc"], "correlations": json.dumps(corrs)}


def _greedy_results(eng: ChannelEngine, data: _StudyData, steps: int, n_seeds: int,
                    progress: bool, seed: int = 0) -> dict[str, np.ndarray]:
    curves, orders, random, split = [], [], [], []
    with progress_bar("greedy ablation", len(data.classes), enabled=progress,
                      transient=True) as advance:
        for class_ in data.classes:
            curve, order = greedy(eng, data.labels, int(class_), steps, None)
            curves.append(curve)
            orders.append(order)
            random.append(random_order(eng, data.labels, int(class_), steps, range(n_seeds), None))
            split.append(split_greedy(eng, data.labels, int(class_), steps, seed))
            advance(1)
    return {"curves": np.stack(curves), "order": np.stack(orders), "random": np.stack(random),
            "curves_choosing_half": np.stack([s[0] for s in split]),
            "curves_heldout_half": np.stack([s[1] for s in split]),
            "order_choosing_half": np.stack([s[2] for s in split])}


@dataclass(frozen=True)
class ZConfig:
    """Protocol options of the Z study; stored in the results file (a rerun with others is refused).

    Example:
        ZConfig(greedy_steps=5, greedy_seeds=3)

    Attributes:
        seed: seed of the random rotations.
        greedy_layer: layer of the greedy curves (default: the last spatial layer of the targets).
        greedy_steps: units ablated greedily per class.
        greedy_seeds: random orders (seeds 0..greedy_seeds-1) for the baseline curves.
        top_k: top-activating images stored per unit.
        ablation: how a unit is removed, "zero", "mean" or "resample" (`kerabl.replacement`,
            `kerabl.zhou.ablation.layer_replacement`; stored with each layer's means or draws).
        batch_size: masked copies per tail call (None: by float count, see `DEFAULT_BATCH`);
            it changes the speed only, and is not stored.
    """

    seed: int = 0
    greedy_layer: str | None = None
    greedy_steps: int = 10
    greedy_seeds: int = 5
    top_k: int = TOP_K
    batch_size: int | None = DEFAULT_BATCH
    ablation: str = "zero"

    def __post_init__(self):
        check_method(self.ablation)


RESULTS_NAME = "z_results.h5"


def run_z_study(network, imageset, out_dir: str | os.PathLike, *, layers: Sequence[str] | None = None,
                config: ZConfig = ZConfig(), progress: bool = True,
                log: Callable[[str], None] = print) -> Path:
    """Run (or resume, or skip when finished) the Z study and return `out_dir/z_results.h5`.

    Example:
        net = load_network("demo")
        path = run_z_study(net, digits_imageset(), "out", config=ZConfig(greedy_steps=5))
        ZResults.open(path).layer("conv_3")["max_class_drop"]

    Per layer: single-unit ablation, random-direction ablation (seed `config.seed`), L1 norms,
    class correlations, selectivity, class means, top-activating images; then greedy and
    random-order ablation for every class on `config.greedy_layer`. Results go to
    `z_results.h5.partial` layer by layer; an interrupted run resumes there (finished layers are
    not recomputed) and the file is renamed when complete. A rerun of a finished file computes
    nothing.

    Args:
        network: a `kerabl.models.Network`.
        imageset: a `kerabl.data.ImageSet` (labels and classes are model output indices).
        out_dir: folder of the results file.
        layers: target layer names (default: the network's targets).
        config: protocol options.
        progress: show progress bars.
        log: where the one-line notes go (resuming, skipping a finished file).

    Raises:
        KerablError: an existing file or partial file made with other arguments (the keys are named).
    """
    seed, greedy_layer, greedy_steps = config.seed, config.greedy_layer, config.greedy_steps
    greedy_seeds, top_k, batch_size = config.greedy_seeds, config.top_k, config.batch_size
    out_path = Path(out_dir) / RESULTS_NAME
    network = flat_network(network)   # a model calling other models: one graph
    model = as_model(network)
    layers = resolve_layers(model, network.targets if layers is None else layers)
    greedy_layer = greedy_layer and resolve_layer(model, greedy_layer)
    greedy_layer = greedy_layer or _default_greedy_layer(model, layers)
    data = _study_data(network, imageset)
    images = None
    if getattr(imageset, "paths", None) is None:   # in memory: hashed as loaded
        images = data.images()
        files, note = array_table(images), describe_changes([])
    else:
        files, note = image_files(imageset, Path(out_dir) / "activations.h5",
                                  network.preprocess, log)
    wanted = _study_config(network, data, layers, seed, greedy_layer, greedy_steps, greedy_seeds,
                           top_k, config.ablation)
    wanted["contents"] = contents_digest(files)
    out = Path(out_path)
    if out.exists() and _check_config(out, read_config(out), wanted, note, log):
        log(f"{out} is complete with these options: nothing to compute")
        return out
    partial = partial_path(out)
    images = data.images() if images is None else images
    check_live_outputs(network, images=images, labels=data.labels)
    if partial.exists():
        _salvage(partial, log)
    if partial.exists() and _check_config(partial, read_config(partial), wanted, note, log):
        log(f"resuming {partial}")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        _create_partial(partial, wanted, data, images)
    done = _done_groups(partial)
    probs = None
    todo = [layer for layer in layers if f"layer_{layer}" not in done]
    with progress_bar("Z study: layers", len(layers), enabled=progress,
                      done=len(layers) - len(todo), every=0) as advance:
        for layer in todo:
            if probs is None:
                probs = predict_batched(model, images, HEAD_BATCH)[0]
            eng = channel_engine(model, images, layer, "tail", batch_size)
            _, stored = layer_replacement(eng, data.labels, layer, config.ablation, seed)
            arrays, attrs = _layer_results(model, eng, data, probs, layer, seed, top_k, progress)
            arrays.update(stored)
            _write_group(partial, f"layer_{layer}", arrays, {**attrs, "layer": layer})
            advance(1)
    if "greedy" not in done:
        eng = channel_engine(model, images, greedy_layer, "tail", batch_size)
        _, stored = layer_replacement(eng, data.labels, greedy_layer, config.ablation, seed)
        _write_group(partial, "greedy",
                     {**_greedy_results(eng, data, greedy_steps, greedy_seeds, progress, seed),
                      **stored}, {"layer": greedy_layer, "split_seed": seed})
    return finish_partial(out)
