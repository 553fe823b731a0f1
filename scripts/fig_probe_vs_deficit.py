"""Probe score vs rank deficit per cell (Hayne et al. 2022), with the least-squares line and r.

Usage: python scripts/fig_probe_vs_deficit.py RESULTS.h5 figures/probe_vs_deficit
"""

from __future__ import annotations

import argparse

from kerabl.hayne.figures import fig_probe_vs_deficit


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and write `<out_stem>.png` / `.pdf`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="H results file (kerabl.hayne.results)")
    parser.add_argument("out_stem", help="output path without extension")
    parser.add_argument("--formats", nargs="+", default=["png", "pdf"])
    args = parser.parse_args(argv)
    for path in fig_probe_vs_deficit(args.results, args.out_stem, formats=args.formats):
        print(path)


if __name__ == "__main__":
    main()
