"""The named choices the library and the command line share, light enough for `kerabl --help`.

- `ENGINES`: the one engine vocabulary, "tail" and "full" (`kerabl.engine` builds them);
  `ENGINE_SPELLINGS` maps every accepted spelling to it, `engine_kind(name)` reads one.
- `PRECISIONS`: the arithmetic of the tail engine, "float32" or "bfloat16".

Example:
    engine_kind("fast")      # 'tail': the H study's command line and results spell it "fast"
"""

from __future__ import annotations

from kerabl.errors import KerablError

# The engines, in one vocabulary: "tail" runs the target layer's output once and only the
# network tail per mask (`kerabl.engine.TailAblator`); "full" runs the whole network per mask, the
# reference (ranks: `PaperAblator`, the authors' Lambda rebuild; predicted classes: `FullEngine`).
# The H study's command line and results files spell them "fast" and "paper"; both are read.
ENGINES = ("tail", "full")
ENGINE_SPELLINGS = {"tail": "tail", "full": "full", "fast": "tail", "paper": "full"}

PRECISIONS = ("float32", "bfloat16")


def engine_kind(name: str) -> str:
    """The engine `name` names, in `ENGINES`' vocabulary ("fast" is "tail", "paper" is "full").

    Example:
        engine_kind("fast")    # 'tail'
        engine_kind("full")    # 'full'
    """
    if name not in ENGINE_SPELLINGS:
        raise KerablError(f"unknown engine {name!r}: use tail (also spelled fast) or full "
                          "(also spelled paper)")
    return ENGINE_SPELLINGS[name]
