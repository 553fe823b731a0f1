"""Fig 2 of Hayne et al. (2022): class x layer grids of probe score (2a) or rank deficit (2b).

Usage: python scripts/fig2_class_layer_grids.py RESULTS.h5 figures/fig2b --metric deficit
"""

from __future__ import annotations

import argparse

from kerabl.hayne.figures import GRID_METRICS, fig_class_layer_grids


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and write `<out_stem>.png` / `.pdf`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="H results file (kerabl.hayne.results)")
    parser.add_argument("out_stem", help="output path without extension")
    parser.add_argument("--metric", choices=sorted(GRID_METRICS), default="deficit",
                        help="probe = Fig 2a, deficit = Fig 2b")
    parser.add_argument("--formats", nargs="+", default=["png", "pdf"])
    args = parser.parse_args(argv)
    for path in fig_class_layer_grids(args.results, args.metric, args.out_stem,
                                      formats=args.formats):
        print(path)


if __name__ == "__main__":
    main()
