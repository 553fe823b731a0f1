"""Z figure: max class accuracy drop curves per layer, unit vs random directions.

    python scripts/fig_z_curves.py out/z_demo.h5 --out-dir figures [--layer conv_5] [--formats png]

Reads a results file from `kerabl.zhou.study.run_z_study`; writes figures/z_drop_curves.{png,pdf}.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kerabl.zhou.figures import build_drop_curves, figure_script  # noqa: E402

if __name__ == "__main__":
    figure_script("z_drop_curves", lambda z, layer: build_drop_curves(z))
