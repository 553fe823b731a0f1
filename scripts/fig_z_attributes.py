"""Z figure: unit attributes (L1, class correlation, selectivity) vs accuracy drops.

    python scripts/fig_z_attributes.py out/z_demo.h5 --out-dir figures [--layer conv_5] [--formats png]

Reads a results file from `kerabl.zhou.study.run_z_study`; writes figures/z_attributes.{png,pdf}.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kerabl.zhou.figures import build_attribute_scatter, figure_script  # noqa: E402

if __name__ == "__main__":
    figure_script("z_attributes", lambda z, layer: build_attribute_scatter(z, layer))
