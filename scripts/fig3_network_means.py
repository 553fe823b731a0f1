"""Fig 3 of Hayne et al. (2022): per network, the grid averaged over classes and layers, probe beside deficit.

Usage: python scripts/fig3_network_means.py alexnet.h5 vgg16.h5 --labels AlexNet VGG16 --out figures/fig3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kerabl.hayne.figures import fig_network_means


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and write `<out>.png` / `.pdf`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="H results files, one per network")
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="one name per results file (default: the file names)")
    parser.add_argument("--formats", nargs="+", default=["png", "pdf"])
    args = parser.parse_args(argv)
    labels = args.labels or [Path(p).stem for p in args.results]
    for path in fig_network_means(args.results, labels, args.out, formats=args.formats):
        print(path)


if __name__ == "__main__":
    main()
