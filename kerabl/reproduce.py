"""The whole study in one call: the H sweep, its statistics and figures, and the Z study.

- `reproduce(network, imageset, out, config)`: what `kerabl reproduce` runs once its inputs are
  loaded: `run_h_study`, the summary (`out/h_summary.json`), the H figures, and, by default for
  the demo only (`z_by_default`), `run_z_study` and its figures; with more than one worker, the
  H figures and half the Z figures are drawn in a process beside the Z study. It returns a
  `Reproduction`: the files, the summary, the headline text and the stages' seconds.
- `reproduce_methods(network, imageset, out, config)`: `reproduce` under zero, mean and
  resample ablation in `out/<method>`, then the three side by side (`kerabl reproduce
  --ablation all`).
- `headline_text(summary)`: the abstract's numbers as the command prints them.

Example:
    run = reproduce(load_network("demo"), digits_imageset(), "out", HConfig(probe_fits=20))
    print(run.headline)          # largest mean rank deficit: cell (3, 3) = ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from kerabl.hayne.baseline import Baseline
from kerabl.hayne.config import HConfig
from kerabl.hayne.methods import comparison_text, method_comparison
from kerabl.hayne.pools import worker_count, worker_pool
from kerabl.hayne.results import HResults
from kerabl.hayne.stats import summary
from kerabl.hayne.study import run_h_study
from kerabl.render import render, render_side_by_side, render_timed
from kerabl.replacement import METHODS
from kerabl.zhou.figures import FIGURE_NAMES
from kerabl.zhou.study import ZConfig, run_z_study

# The Z figures drawn in the process that drew the H figures (the two that took longest on the
# demo, 6.4 of 11.6 s), while the other two are drawn in the main process.
Z_FIGURES_BESIDE = ("z_greedy", "z_top_images")


@dataclass
class Reproduction:
    """What `reproduce` wrote and found.

    Example:
        run = reproduce(net, imageset, "out", HConfig())
        run.results, run.summary_path, len(run.figures)   # out/h_results.h5, out/h_summary.json, 28
    """

    results: Path
    summary_path: Path
    summary: dict
    headline: str
    figures: list = field(default_factory=list)
    z_results: Path | None = None
    timings: dict = field(default_factory=dict)


def z_by_default(model: str, control: str) -> bool:
    """Whether `reproduce` runs the Z study when not told: for the demo on its true labels only
    (the ImageNet networks take hours on a CPU).

    Example:
        z_by_default("demo", "none"), z_by_default("alexnet", "none")   # True, False
    """
    return model == "demo" and control == "none"


def reproduce(network, imageset, out, config: HConfig | None = None, *,
              layers: Sequence[str] | None = None, z_layers: Sequence[str] | None = None,
              z: bool | None = None,
              workers: int | None = None, progress: bool = True,
              log: Callable[[str], None] = print, start: float | None = None,
              cache: str = "file") -> Reproduction:
    """The H study, its summary and figures, and (by `z_by_default` unless `z` is given) the
    Z study and its figures, all in `out` (figures in `out/figures`). Resumable as each study is.

    Example:
        run = reproduce(load_network("demo"), digits_imageset(), "out", HConfig(probe_fits=20))
        run.summary["largest_deficit"]["cell"]     # e.g. [3, 3]

    Args:
        network, imageset: the loaded inputs (`kerabl.load_network`, `kerabl.digits_imageset`).
        out: output folder.
        config: the H protocol (default `HConfig()`); the Z study takes its seed.
        layers: target layers of the H study (default: the network's targets).
        z_layers: target layers of the Z study (default: `layers`).
        z: run the Z study (None: `z_by_default(network.name, config.control)`).
        workers: processes fitting the probes (None: one per core).
        progress: show progress bars.
        log: where the lines for the user go (what ran, the headline, where files are).
        start: `time.perf_counter()` the wall time counts from (default: this call).
        cache: "file" (the activation cache in `out`) or "none" (recomputed, the same results;
            see `run_h_study`).
    """
    start = time.perf_counter() if start is None else start
    config = HConfig() if config is None else config
    out = Path(out)
    path = run_h_study(network, imageset, out, layers=layers, config=config, progress=progress,
                       workers=workers, log=log, cache=cache)
    timings = {"H study": time.perf_counter() - start}
    headline = summary(HResults.open(path))
    summary_path = out / "h_summary.json"
    summary_path.write_text(json.dumps(headline, indent=2) + "\n")
    figures = out / "figures"
    if z is None:
        z = z_by_default(network.name, config.control)
        if not z and config.control != "none":
            log("Z study not run under a control (pass --z to run it on the true labels)")
        elif not z:
            log(f"Z study not run for {network.name} (hours on a CPU): pass --z, or run "
                "`kerabl units --layers ...` for chosen layers")
    z_path = None
    # with a Z study and more than one core, the H figures are drawn in a process beside it
    beside = z and worker_count(workers) > 1
    with worker_pool(1) if beside else contextlib.nullcontext(None) as pool:
        if pool is None:
            files = render(path, figures)
            timings["H figures"] = time.perf_counter() - start - sum(timings.values())
        else:
            h_figures = pool.submit(render_timed, path, figures)
        if z:
            z_path = run_z_study(network, imageset, out, layers=list(z_layers or layers or network.targets),
                                 config=ZConfig(seed=config.seed, greedy_layer=None,
                                                greedy_steps=10, greedy_seeds=5,
                                                ablation=config.ablation),
                                 progress=progress, log=log)
            timings["Z study"] = time.perf_counter() - start - sum(timings.values())
            if pool is None:
                z_files = render(z_path, figures)
                timings["Z figures"] = time.perf_counter() - start - sum(timings.values())
            else:
                # half the Z figures go to the process of the H figures (done by now on the
                # demo), half are drawn here: each figure's png and pdf take seconds to write
                there = pool.submit(render, z_path, figures, z_names=Z_FIGURES_BESIDE)
                z_files = render(z_path, figures, z_names=[
                    name for name in FIGURE_NAMES if name not in Z_FIGURES_BESIDE])
                files, seconds = h_figures.result()
                z_files += there.result()
                timings["Z figures (half beside)"] = (time.perf_counter() - start
                                                      - sum(timings.values()))
                timings["H figures (beside the Z study)"] = seconds
            files += z_files
    run = Reproduction(results=path, summary_path=summary_path, summary=headline,
                       headline=headline_text(headline), figures=files, z_results=z_path,
                       timings=timings)
    log(run.headline)
    log(f"results: {path} (summary: {summary_path})")
    log(f"figures: {figures} ({len(files)} files)")
    log(f"wall time: {time.perf_counter() - start:.1f} s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")")
    return run


def headline_text(headline: dict) -> str:
    """The abstract's numbers (cells as (selectivity strip, magnitude cell)), the nested test of
    the interaction and the class-bootstrap intervals.

    Example:
        print(headline_text(summary(HResults.open("kerabl-out/h_results.h5"))))
        # largest mean rank deficit: cell (3, 3) = 0.425 ...
    """
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


def reproduce_methods(network, imageset, out, config: HConfig | None = None, *,
                      log: Callable[[str], None] = print, **options) -> dict:
    """`reproduce` under each ablation method (`kerabl.replacement.METHODS`) in `out/<method>`,
    then the methods side by side: `out/ablation_summary.json` (the headline numbers per
    method), the printed table and the figures in `out/figures-methods`. `options` are
    `reproduce`'s. Returns the comparison.

    Example:
        comparison = reproduce_methods(load_network("demo"), digits_imageset(), "out",
                                       HConfig(probe_fits=20))
        comparison["mean"]["largest_deficit"]     # the largest mean cell deficit under mean
    """
    config = HConfig() if config is None else config
    out = Path(out)
    paths, start = {}, options.pop("start", None)   # the command's start counts for the first
    for n, method in enumerate(METHODS):
        log(f"--- ablation {method} ---")
        paths[method] = reproduce(network, imageset, out / method,
                                  dataclasses.replace(config, ablation=method), log=log,
                                  start=start if n == 0 else None, **options).results
    comparison = method_comparison({m: json.loads((p.parent / "h_summary.json").read_text())
                                    for m, p in paths.items()})
    (out / "ablation_summary.json").write_text(json.dumps(comparison, indent=2) + "\n")
    files = render_side_by_side(list(paths.values()), [network.name] * len(paths),
                                out / "figures-methods")
    log(comparison_text(comparison))
    log(f"methods side by side: {out / 'ablation_summary.json'}, {out / 'figures-methods'} "
        f"({len(files)} files)")
    return comparison
