"""Write kerabl/imagenet_classes.json from the ILSVRC devkit's meta_clsloc.mat.

Usage:
    python scripts/make_class_index.py ../shared/data/imagenet-val-hayne50/meta_clsloc.mat

The JSON is a list of 1000 [wnid, name, words] rows sorted by WNID: row i describes Keras
ImageNet output i. `name` is the first synonym of `words` with spaces as underscores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kerabl.imagenet import TABLE_PATH, class_index_table, read_meta_clsloc


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    table = class_index_table(read_meta_clsloc(Path(argv[0])))
    rows = ",\n".join(json.dumps(row, ensure_ascii=False) for row in table)
    TABLE_PATH.write_text(f"[\n{rows}\n]\n")
    print(f"wrote {len(table)} classes to {TABLE_PATH} (0: {table[0][0]} {table[0][1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
