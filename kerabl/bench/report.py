"""The benchmark's tables: the printed rows, notes and headline, and the paper-scale extrapolation.

- `table_rows(cases, floor)`, `z_notes(cases, floor)`, `headline(cases)`: what `run_bench` prints.
- `extrapolate(cases, workers)`, `fast_cell_over_targets(h)`: full paper-scale study times from
  the measured per-cell times (untimed target layers interpolated in tail FLOPs).
- `torch_cell(column)`, `torch_tables(cases)`: the torch column of the H rows, and per network its
  layers side by side with kerabl's fast engine.
- `format_table(rows, columns)`: a plain-text table.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kerabl.bench.flops import GRID_CELLS, PROBE_WIDTH_CAP, STUDY_CLASSES


def fast_cell_over_targets(h: dict) -> float:
    """Mean fast-engine seconds per cell of `run_h_study` over all default targets, from the
    timed ones.

    Example:
        fast_cell_over_targets(case["h"])   # the mean study_cell_s when every target was timed

    A timed target counts with its measured `study_cell_s` (17 / 16 tails and 1 / 16 of the
    pair's input: its activation cache read, or the head where the layer is not a cut point);
    any other target gets its per-copy tail and pair-input seconds interpolated linearly in tail
    FLOPs between the timed targets (held at the nearest timed target outside their range).
    """
    tails = dict(zip(h["targets"], h["target_tail_gflop"]))
    timed = sorted(h["layers"], key=lambda row: tails[row["layer"]])
    x = [tails[row["layer"]] for row in timed]
    by_layer = {row["layer"]: row["study_cell_s"] for row in timed}

    def interpolated(target, key):
        return float(np.interp(tails[target], x, [r[key] for r in timed]))

    cells = [by_layer[t] if t in by_layer else
             interpolated(t, "tail_s") * (GRID_CELLS + 1) / GRID_CELLS
             + interpolated(t, "pair_input_s") / GRID_CELLS for t in h["targets"]]
    return float(np.mean(cells))


def extrapolate(cases: dict, workers: int) -> list[dict]:
    """Paper-scale study times (hours) of both engines and of the probes, from the measured cases.

    Example:
        rows = extrapolate({"alexnet": alexnet_case, "vgg16": vgg_case}, workers=2)

    Per network: `STUDY_CLASSES` classes x its default targets x 16 cells. Fast engine: the
    mean over the targets of `fast_cell_over_targets` per cell, plus each class's start (its
    images read and ranked by the whole network) and recording the activation cache once (what
    one class adds to a recording, times the classes); authors' procedure: the mean of its timed
    cells (it rebuilds and runs the whole network whatever the layer); probes: the grid and probe
    stages of each pair as the sweep runs them in `workers` processes (`probe_case`), per class
    the sum over the targets (the sweep waits for a pair's probes, then ablates: total = fast +
    probes).
    """
    rows = []
    for name, n_classes in STUDY_CLASSES.items():
        if name not in cases:
            continue
        h, probe = cases[name]["h"], cases[name]["probe"]
        n_layers, n_timed = len(h["targets"]), len(h["layers"])
        cells = n_classes * n_layers * GRID_CELLS
        fast_cell = fast_cell_over_targets(h)
        record_h = n_classes * h["record_s"] / 3600
        start_h = n_classes * h["start_s"] / 3600
        fast_h = cells * fast_cell / 3600 + start_h + record_h
        probe_h = n_classes * probe["class_s"] / 3600
        rows.append(dict(network=name, classes=n_classes, layers=n_layers, cells=cells,
                         fast_cell_s=fast_cell, paper_cell_s=h["paper_cell_s"],
                         probe_pair_s=probe["class_s"] / n_layers, start_s=h["start_s"],
                         record_h=record_h, fast_h=fast_h, probe_h=probe_h,
                         total_h=fast_h + probe_h, paper_h=cells * h["paper_cell_s"] / 3600,
                         timed=f"{n_timed}/{n_layers} layers, {len(h['paper'])} authors' cells",
                         timed_layers=[row["layer"] for row in h["layers"]],
                         probe_extrapolated=probe.get("extrapolated", [])))
    return rows


def extrapolation_note(rows: Sequence[dict], workers: int) -> str:
    """The lines printed under the extrapolation table: what was timed and how it was averaged.

    Example:
        print(extrapolation_note(extrapolate(cases, 2), 2))
    """
    sampled = "; ".join(f"{row['network']}: {', '.join(row['timed_layers'])}" for row in rows
                        if len(row["timed_layers"]) < row["layers"])
    wide = "; ".join(f"{row['network']}: {len(row['probe_extrapolated'])} targets" for row in rows
                     if row.get("probe_extrapolated"))
    return ("fast s/cell: a cell as run_h_study runs it, averaged over all default targets: "
            "17/16 of a tail (the pair's 16 cells and its all-ones baseline in the study's calls) "
            "+ 1/16 of the pair's input (its activation cache read of 550 rows, timed on 50 and "
            "scaled; the head where the layer is not a cut point); targets not timed get tail and "
            "input seconds interpolated in tail FLOPs between the timed ones"
            f"{' (timed: ' + sampled + ')' if sampled else ''}. fast h adds recording the "
            "activation cache once (what a second class adds to a recording, times the classes). "
            "authors s/cell: mean of the timed "
            "authors' cells. probe s/pair: a pair's grid and probe stages as run_h_study runs "
            "them (the default HConfig: per cell 200 fits of <= 100 units, 5-fold held-out, RSA "
            "over all the cell's units; the pair's held-out fold probe beside them; the "
            "activations in shared memory) on 550 random ReLU-like rows (11 classes x 50 images) "
            f"of each target's width, in the default {workers} worker processes "
            "(os.cpu_count()), the mean over the targets; each distinct width up to "
            f"{PROBE_WIDTH_CAP:,} units timed once"
            f"{' (wider targets extrapolated linearly in units: ' + wide + ')' if wide else ''}; "
            "probe h = classes x the pairs' seconds. start s: a class's images read and ranked "
            "by the whole network, in fast h. total h = fast h + probe h (the sweep waits for a "
            "pair's probes, then ablates).")


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows as a plain-text table; columns are (key, header, format spec).

    Example:
        format_table([{"a": 1.5}], [("a", "seconds", ".2f")])   # "seconds\\n-------\\n   1.50"
    """
    cells = [[format(row[key], spec) if row.get(key) is not None else "-"
              for key, _, spec in columns] for row in rows]
    widths = [max([len(head)] + [len(c[i]) for c in cells]) for i, (_, head, _) in
              enumerate(columns)]
    lines = ["  ".join(head.rjust(w) for (_, head, _), w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


MAIN_COLUMNS = (("case", "case", "s"), ("sample", "timed (fast / slow)", "s"),
                ("fast_s", "fast s/item", ".4f"), ("slow_s", "slow s/item", ".3f"),
                ("ratio", "ratio", ".1f"), ("ratio_cached", "ratio, cached acts", ".1f"),
                ("floor_pct", "% floor", ".0f"),
                ("ranks", "ranks equal", "s"), ("bf16", "bf16 tail", "s"),
                ("torch", "torch (lead: hook / tail)", "s"), ("images", "images", "d"),
                ("threads", "threads", "d"), ("rss_mb", "peak MB", ".0f"))
LEGEND = ("H rows: s/item per cell, one class (50 images; demo: one digit class); fast = "
          "TailAblator, tail + 1/16 of the per-class head, the tail timed in the study's call "
          "(the cells' masks and the all-ones baseline, per masked copy; cached acts: tail only, "
          "as run_h_study reads the activation cache); slow = the authors' procedure (rebuild, "
          "reload weights, re-read images, Lambda mask, full forward) on the sampled cells, "
          "whose ranks are compared. Z rows: s/item per unit, channel units; fast = "
          "kerabl.engine's tail engine "
          "with its linear shortcut where the layer feeds a Dense through pooling/flatten and "
          "the Dense layers after it skipping inputs that are zero in every row (sweep + head "
          "pass / channels; cached acts: the sweep alone, tail only, as the study reuses the head "
          "pass for the unit attributes), predictions compared with the plain tail "
          "(TailAblator); slow = full "
          "forward with a UnitMask; model building and tracing untimed on both sides. Every "
          "timed run follows an untimed one at the same shapes (tracing, oneDNN set-up), the "
          "authors' cells one per network. "
          "% floor = tail FLOPs / tail seconds / best matmul GFLOP/s (float32, the best of "
          "TensorFlow and NumPy). bf16 tail: speed-up, largest rank change and largest cell "
          "deficit change against float32 on the bf16-checked cells. torch: the same cells, "
          "images and threads through the PyTorch port (kerabl.crosscheck), lead = torch s/cell "
          "/ fast s/cell (range over the timed layers) of a forward hook in a full forward and "
          "of a cached-output tail (head / 16 + tail), ranks equal to kerabl's on every timed "
          "cell; per layer in the torch table. images: per class; threads: TensorFlow's "
          "intra-op threads (torch set to the same).")
EXTRAPOLATION_COLUMNS = (("network", "network", "s"), ("classes", "classes", "d"),
                         ("layers", "layers", "d"), ("cells", "cells", "d"),
                         ("fast_cell_s", "fast s/cell", ".3f"),
                         ("paper_cell_s", "authors s/cell", ".2f"),
                         ("probe_pair_s", "probe s/pair", ".2f"), ("start_s", "start s", ".2f"),
                         ("record_h", "recording h", ".3f"), ("fast_h", "fast h", ".2f"),
                         ("probe_h", "probe h", ".2f"), ("total_h", "total h", ".2f"),
                         ("paper_h", "authors h", ".1f"), ("timed", "timed", "s"))


def table_rows(cases: dict, floor: float) -> list[dict]:
    """One H row (per cell) and one Z row (per unit) per network.

    Example:
        print(format_table(table_rows(cases, 300.0), MAIN_COLUMNS))
    """
    rows = []
    for name, case in cases.items():
        h, z, n_timed = case["h"], case["z"], len(case["h"]["layers"])
        n_targets = len(h.get("targets", h["layers"]))
        of = f"{n_timed} layers" if n_timed == n_targets else f"{n_timed} of {n_targets} layers"
        rows.append(dict(case=f"H {name} ({of})",
                         sample=f"{n_timed}x{case['plan']['fast_cells']} / {len(h['paper'])} cells",
                         fast_s=h["fast_cell_s"], slow_s=h["paper_cell_s"], ratio=h["ratio"],
                         ratio_cached=h["ratio_cached"],
                         floor_pct=100 * h["tail_gflops"] / floor,
                         ranks=f"{h['same_ranks']:.0%} (max diff {h['max_rank_diff']})",
                         bf16=f"{h['bf16_tail_speedup']:.1f}x, ranks +-{h['bf16_max_rank_diff']}"
                              f", deficit +-{h['bf16_max_deficit_diff']:.3f}",
                         torch=torch_cell(case.get("torch")), images=h["images"],
                         threads=case.get("threads"), rss_mb=case["peak_rss_mb"]))
        if z is not None:
            rows.append(dict(case=f"Z {name} {z['layer']}",
                             sample=f"{z['tail_units']} / {z['full_units']} units",
                             fast_s=z["tail_unit_s"], slow_s=z["full_unit_s"], ratio=z["ratio"],
                             ratio_cached=z["full_unit_s"] / z["sweep_unit_s"],
                             floor_pct=100 * z["tail_gflops"] / floor,
                             ranks=f"{z['same_preds']:.0%} preds = plain tail", bf16="-",
                             images=z["images"], threads=case.get("threads"),
                             rss_mb=case["peak_rss_mb"]))
    return rows


def torch_cell(column: dict | None) -> str | None:
    """The H row's torch column: None where the network has no torch case, "torch not
    installed", or the leads' ranges over the timed layers and the rank agreement.

    Example:
        torch_cell(case["torch"])   # "hook 12-170x, tail 1.1-39x, ranks 100%"
    """
    if column is None:
        return None
    if not column["available"]:
        return column["note"]
    return (f"hook {_span(column['min_hook_lead'], column['max_hook_lead'])}, tail "
            f"{_span(column['min_tail_lead'], column['max_tail_lead'])}, "
            f"ranks {column['same_ranks']:.0%}")


def _span(low: float, high: float) -> str:
    spec = ".2g" if low < 10 else ".0f"
    return f"{low:{spec}}-{high:.3g}x"


TORCH_COLUMNS = (("layer", "layer", "s"), ("cells", "cells", "d"),
                 ("kerabl_cell_s", "kerabl fast s/cell", ".4f"),
                 ("hook_cell_s", "torch hook s/cell", ".3f"),
                 ("tail_cell_s", "torch tail s/cell", ".4f"),
                 ("hook_lead", "hook lead", ".1f"), ("tail_lead", "tail lead", ".2f"),
                 ("tail_only_lead", "tail-only lead", ".2f"),
                 ("same_ranks", "ranks equal", ".0%"))


def torch_tables(cases: dict) -> list[str]:
    """Per network with a torch case: a title line (images, threads, torch version) and a table
    of its layers (kerabl's fast engine against the hook and the cached tail), or one line
    saying torch is not installed.

    Example:
        for line in torch_tables(cases): print(line)
    """
    out = []
    for name, case in cases.items():
        column = case.get("torch")
        if column is None:
            continue
        if not column["available"]:
            out.append(f"\ntorch {name}: {column['note']} (pip install 'kerabl[torch]')")
            continue
        out.append(f"\ntorch {name}: the H cells above, {column['images']} images, "
                   f"{column['threads']} threads each side, torch {column['torch']}; hook cells "
                   f"on {', '.join(column['hook_layers'])} (a full forward costs the same at "
                   "every layer; other layers: their mean); lead = torch s / kerabl s")
        out.append(format_table(column["layers"], TORCH_COLUMNS))
    return out


def z_notes(cases: dict, floor: float) -> list[str]:
    """Per Z case: the share of the dense FLOPs the sweep ran, and the ceiling of an exact dense
    tail (its FLOPs at 100 % of the floor, plus the head pass over the channels) against the full
    forward, the bound that only skipping work can pass.

    Example:
        for note in z_notes(cases, 300.0): print(note)
    """
    notes = []
    for name, case in cases.items():
        z = case["z"]
        if z is None:
            continue
        dense_s = z["dense_unit_flops"] * z["images"] / (floor * 1e9)
        ceiling = z["full_unit_s"] / (dense_s + z["head_s"] / z["channels"])
        notes.append(f"Z {name} {z['layer']}: {z['ratio']:.1f}x with the head pass, "
                     f"{z['full_unit_s'] / z['sweep_unit_s']:.1f}x tail only; the sweep ran "
                     f"{z['flops_run']:.0%} of the dense FLOPs; an exact dense tail at 100 % "
                     f"of the floor would reach {ceiling:.1f}x")
    return notes


def headline(cases: dict) -> str:
    """The last printed line: the per-cell ratio of the largest measured H case (AlexNet, else
    VGG16, else demo, else the first case run).

    Example:
        headline({"demo": run_case("demo")})   # 'headline: demo H sweep, ...'
    """
    name = next((n for n in ("alexnet", "vgg16", "demo") if n in cases), next(iter(cases), None))
    if name is None:
        return "headline: no case ran"
    h = cases[name]["h"]
    return (f"headline: {name} H sweep, fast engine {h['ratio']:.1f}x faster per cell than the "
            f"authors' procedure ({h['fast_cell_s']:.3f} s vs {h['paper_cell_s']:.2f} s)")
