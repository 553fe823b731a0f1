"""Merging the shard files of one sharded H run (`kerabl study --shard i/n`, `kerabl merge`)
into one complete results file, refusing shards that disagree.

Example:
    merge(["out/h.0.h5", "out/h.1.h5"], "out/h_results.h5")   # Path("out/h_results.h5")
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from kerabl.errors import KerablError
from kerabl.hayne.results import (CELL_ARRAYS, CLASS_ARRAYS, UNIT_ARRAYS, ResultsLayout,
                                  cell_dataset, check_kind, create_results, shard_pairs)
from kerabl.store import parse_shard

__all__ = ["merge"]


def merge(paths, out) -> Path:
    """Join shard files of one run into one complete results file.

    Example:
        merge(["out/h.0.h5", "out/h.1.h5"], "out/h.h5")   # Path("out/h.h5")

    Refuses (KerablError naming the files and the key) when configs differ (the shard is
    ignored), classes or layers differ, a pair is done in two shards with different
    numbers, a class's images differ between shards, or pairs are done in no shard.
    The merged file has `shard` "" and is written under a temporary name, then renamed.
    """
    paths = [Path(p) for p in paths]
    out = Path(out)
    if not paths:
        raise KerablError("no shard files to merge; pass the files the shards wrote")
    tmp = out.with_name(out.name + ".tmp")
    shards = _read_shards(paths)
    try:
        _check_same_run(shards)
        layout = shards[0][2]
        merged = ResultsLayout(**{**layout.__dict__, "shard": ""})
        owner = _pair_owners(shards, merged)
        out.parent.mkdir(parents=True, exist_ok=True)
        create_results(tmp, merged)
        with h5py.File(tmp, "r+") as g:
            _copy_pairs(shards, owner, merged, g)
            g.attrs["complete"] = True
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for _, f, _ in shards:
            f.close()
    os.replace(tmp, out)
    return out


def _pair_values(f: h5py.File, layout: ResultsLayout, ci: int, li: int) -> dict:
    """Every stored number of pair (ci, li)."""
    g = f[f"units/{layout.layers[li]}"]
    values = {name: cell_dataset(f, name, (ci, li))
              for name in CELL_ARRAYS + ("rank_after", "rank_baseline")}
    values.update({f"units/{name}": g[name][ci] for name in UNIT_ARRAYS})
    if "donor_rows" in f:
        values["donor_rows"] = f["donor_rows"][ci, li]
    return values


def _differing(a: dict, b: dict) -> list[str]:
    return [k for k in a if not np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f")]


def _read_shards(paths: list[Path]) -> list[tuple[Path, h5py.File, ResultsLayout]]:
    opened = []
    for p in paths:
        if not p.exists():
            raise KerablError(f"shard file {p} does not exist; pass the files the shards wrote")
        f = h5py.File(p, "r")
        try:
            check_kind(f, p)
        except KerablError:
            f.close()
            for _, g, _ in opened:
                g.close()
            raise
        opened.append((p, f, ResultsLayout.read(f)))
    return opened


def _check_same_run(shards: list[tuple[Path, h5py.File, ResultsLayout]]) -> None:
    p0, _, first = shards[0]
    for p, _, layout in shards[1:]:
        differences = first.differences(layout, ignore_shard=True)
        if differences:
            raise KerablError(f"{p0} and {p} come from different runs ({'; '.join(differences)}); "
                              "merge only shards of one run")


def _missing_pairs_message(missing: list[tuple[int, int]], layout: ResultsLayout,
                           shards: list[tuple[Path, h5py.File, ResultsLayout]]) -> str:
    n_layers = len(layout.layers)
    owners: dict[str, list[str]] = {}
    for ci, li in missing:
        owner = [str(p) for p, _, s in shards if s.shard and
                 (ci * n_layers + li) % parse_shard(s.shard)[1] == parse_shard(s.shard)[0]]
        key = ", ".join(owner) if owner else "a shard not given"
        owners.setdefault(key, []).append(f"({layout.classes[ci]}, {layout.layers[li]})")
    detail = "; ".join(f"{key}: {len(v)} e.g. {' '.join(v[:3])}" for key, v in owners.items())
    return (f"{len(missing)} of {len(layout.classes) * n_layers} pairs are done in no shard "
            f"({detail}); finish those shards (rerun them to resume) and merge again")


def _pair_owners(shards, layout: ResultsLayout) -> dict[tuple[int, int], int]:
    """Which shard supplies each pair; refuses conflicts and missing pairs."""
    owner: dict[tuple[int, int], int] = {}
    missing = []
    for ci, li in shard_pairs(len(layout.classes), len(layout.layers), None):
        holders = [s for s, (_, f, _) in enumerate(shards) if f["done"][ci, li]]
        if not holders:
            missing.append((ci, li))
            continue
        owner[(ci, li)] = holders[0]
        first = _pair_values(shards[holders[0]][1], layout, ci, li)
        for s in holders[1:]:
            bad = _differing(first, _pair_values(shards[s][1], layout, ci, li))
            if bad:
                raise KerablError(f"pair ({layout.classes[ci]}, {layout.layers[li]}) differs between "
                                  f"{shards[holders[0]][0]} and {shards[s][0]} in {', '.join(bad)}; "
                                  "rerun one of the shards")
    if missing:
        raise KerablError(_missing_pairs_message(missing, layout, shards))
    return owner


def _copy_pairs(shards, owner: dict[tuple[int, int], int], layout: ResultsLayout,
                g: h5py.File) -> None:
    for (ci, li), s in owner.items():
        for key, value in _pair_values(shards[s][1], layout, ci, li).items():
            if key.startswith("units/"):
                g[f"units/{layout.layers[li]}/{key[len('units/'):]}"][ci] = value
            else:
                g[key][ci, li] = value
        g["done"][ci, li] = True
        source = shards[s][1]
        name = f"ablation_mean/{layout.layers[li]}"
        if name in source and name not in g:
            source.copy(source[name], g, name=name)
    for ci in range(len(layout.classes)):
        sources = sorted({s for (c, _), s in owner.items() if c == ci})
        rows = [{name: shards[s][1][name][ci] for name in CLASS_ARRAYS} for s in sources]
        for s, other in zip(sources[1:], rows[1:]):
            bad = _differing(rows[0], other)
            if bad:
                raise KerablError(f"class {layout.classes[ci]} has different {', '.join(bad)} in "
                                  f"{shards[sources[0]][0]} and {shards[s][0]}; rerun one shard")
        for name in CLASS_ARRAYS:
            g[name][ci] = rows[0][name]
