"""Peak memory of the AlexNet element-unit H study on the paper's 2,500 images.

Usage:
    python scripts/bench_memory.py [--root DATASET_ROOT] [--out DIR] [--probe-fits 5]

Random AlexNet weights, 50 classes, all 7 target layers, element units (658,272 per image). The
activations of all 2,500 images are recorded (the memory-heavy stage), then the first class x
layer pair of the sweep runs (probes with `--probe-fits` fits, then 16 cells ablated with the fast
engine) through `run_h_study` with a shard that holds just those pairs. Prints wall
time per stage and the peak resident memory of the process (the target is under 4 GB).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout


# The paper's image set beside a checkout (see docs/models.md, Data).
HAYNE50 = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-val-hayne50"

N_PAIRS = 50 * 7


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HAYNE50)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    parser.add_argument("--probe-fits", type=int, default=5)
    args = parser.parse_args(argv)

    from kerabl.activations import record_activations
    from kerabl.data import paper_imageset
    from kerabl.models import load_network
    from kerabl.hayne.study import HConfig, run_h_study

    out = args.out or Path(tempfile.mkdtemp(prefix="kerabl-memory-"))
    net = load_network("alexnet", weights=None, seed=0)
    imageset = paper_imageset(args.root, classes="hayne50")
    start = time.perf_counter()
    record_activations(net, imageset, net.targets, out / "activations.h5", unit="element",
                       progress=False).close()
    recorded = time.perf_counter()
    print(f"recorded {len(imageset.labels)} images x 7 layers in {recorded - start:.0f} s, "
          f"peak RSS {peak_mb():.0f} MB", flush=True)
    run_h_study(net, imageset, out, config=HConfig(probe_fits=args.probe_fits),
                shard=(0, N_PAIRS), progress=False)
    print(f"class 0 x conv_1 (probes + 16 cells) in {time.perf_counter() - recorded:.0f} s, "
          f"peak RSS {peak_mb():.0f} MB", flush=True)
    print(f"peak RSS of the whole run: {peak_mb() / 1024:.2f} GB (target: under 4 GB)")


if __name__ == "__main__":
    main()
