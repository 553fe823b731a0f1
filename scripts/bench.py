"""Benchmark of the fast ablation engine (the same as `kerabl bench`).

Usage:
    python scripts/bench.py [--out bench.json] [--quick] [--root DATASET_ROOT] [--cases A,B]

Prints the table (per case: seconds per cell or unit for each engine, their ratio, % of the
matmul floor, peak memory), the paper-scale extrapolation (fast engine, probes, authors'
procedure), and last the headline ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from kerabl.bench import run_bench  # noqa: E402

# The paper's image set beside a checkout (see docs/models.md, Data).
HAYNE50 = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-val-hayne50"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--quick", action="store_true", help="demo model only (under a minute)")
    parser.add_argument("--root", type=Path, default=HAYNE50, help="the paper's image set")
    parser.add_argument("--cases", help="only these cases, comma-separated (default: all)")
    args = parser.parse_args(argv)
    run_bench(args.out, quick=args.quick, root=args.root,
              cases=None if args.cases is None else args.cases.split(","))


if __name__ == "__main__":
    main()
