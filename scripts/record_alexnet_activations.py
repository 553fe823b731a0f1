"""Measure recording AlexNet element-unit activations of the paper's 2,500 images.

Usage:
    python scripts/record_alexnet_activations.py [DATASET_ROOT] [OUT.h5] [--batch-size 32]

Random AlexNet weights (`load_network("alexnet", weights=None)`), all 7 targets, element units
(658,272 per image), preprocess "paper". Prints wall time, peak RSS and file size. The output
file is removed first so that the run always records (no cache hit).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-val-hayne50"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("out", nargs="?", type=Path, default=Path("alexnet_activations.h5"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", default="hayne50")
    args = parser.parse_args(argv)

    from kerabl.activations import record_activations
    from kerabl.data import paper_imageset
    from kerabl.models import load_network

    for stale in (args.out, args.out.with_name(args.out.name + ".partial")):
        stale.unlink(missing_ok=True)
    net = load_network("alexnet", weights=None)
    images = paper_imageset(args.root, classes=args.classes)
    start = time.perf_counter()
    cache = record_activations(net, images, net.targets, args.out, unit="element",
                               preprocess="paper", batch_size=args.batch_size, progress=True,
                               log=print)
    wall = time.perf_counter() - start
    units = sum(cache.n_units(layer) for layer in cache.layers)
    start = time.perf_counter()
    means = cache.mean("conv_1", rows=cache.labels == images.classes[0])
    read_s = time.perf_counter() - start
    cache.close()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    size_gb = args.out.stat().st_size / 2 ** 30
    print(f"images {len(images)}  units/image {units}  batch {args.batch_size}")
    print(f"record wall {wall:.1f} s  ({len(images) / wall:.1f} images/s)")
    print(f"peak RSS {peak_gb:.2f} GiB  file {size_gb:.2f} GiB "
          f"({size_gb * 2 ** 30 / (4 * units * len(images)):.2f} of raw float32)")
    print(f"conv_1 mean over one class (50 rows, {means.size} columns): {read_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
