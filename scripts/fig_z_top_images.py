"""Z figure: top-activating images of the most important units, maps overlaid.

    python scripts/fig_z_top_images.py out/z_demo.h5 --out-dir figures [--layer conv_5] [--formats png]

Reads a results file from `kerabl.zhou.study.run_z_study`; writes figures/z_top_images.{png,pdf}.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kerabl.zhou.figures import build_top_images, figure_script  # noqa: E402

if __name__ == "__main__":
    figure_script("z_top_images", lambda z, layer: build_top_images(z, layer))
