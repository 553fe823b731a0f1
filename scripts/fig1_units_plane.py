"""Fig 1 of Hayne et al. (2022): one layer's units on the (magnitude, selectivity) plane, grid drawn over them.

Usage: python scripts/fig1_units_plane.py RESULTS.h5 figures/fig1 --class-name junco_bird --layer conv_3
"""

from __future__ import annotations

import argparse

from kerabl.hayne.figures import fig_units_plane


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and write `<out_stem>.png` / `.pdf`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="H results file (kerabl.hayne.results)")
    parser.add_argument("out_stem", help="output path without extension")
    parser.add_argument("--class-name", default=None, help="class to draw (default: the first)")
    parser.add_argument("--layer", default=None, help="layer to draw (default: the middle one)")
    parser.add_argument("--max-points", type=int, default=20000, help="units drawn at most")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn subsample")
    parser.add_argument("--formats", nargs="+", default=["png", "pdf"])
    args = parser.parse_args(argv)
    for path in fig_units_plane(args.results, args.class_name, args.layer, args.out_stem,
                                formats=args.formats, max_points=args.max_points, seed=args.seed):
        print(path)


if __name__ == "__main__":
    main()
