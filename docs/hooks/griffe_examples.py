"""griffe extension: a docstring's `Example:` block is shown as code on the site.

kerabl's docstrings give their examples as indented lines of Python or shell (not `>>>` doctest
lines), which the Google parser would render as Markdown prose: the lines run together and
`res["deficit"]` reads as a link. This wraps each such block in a fence before parsing.

Example:
    extensions: [docs/hooks/griffe_examples.py]     # mkdocstrings' python handler options
"""

from __future__ import annotations

import re

import griffe

_HEADER = re.compile(r"^(\s*)Examples?:\s*$")


def fence_examples(text: str) -> str:
    """`text` with every indented `Example:` block inside a fenced code block.

    Example:
        fence_examples("Example:\\n    f(x)")   # "Example:\\n    ```\\n    f(x)\\n    ```"
    """
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        out.append(lines[i])
        header = _HEADER.match(lines[i])
        i += 1
        if not header:
            continue
        start = i
        while i < len(lines) and (not lines[i].strip()
                                  or len(lines[i]) - len(lines[i].lstrip()) > len(header.group(1))):
            i += 1
        end = i
        while end > start and not lines[end - 1].strip():
            end -= 1
        block = lines[start:end]
        if not block or any(line.lstrip().startswith((">>>", "```")) for line in block):
            out.extend(lines[start:i])
            continue
        indent = min(len(line) - len(line.lstrip()) for line in block if line.strip())
        out += [" " * indent + "```", *block, " " * indent + "```", *lines[end:i]]
    return "\n".join(out)


class FenceExamples(griffe.Extension):
    """Fence the examples of every object's docstring as it is loaded.

    Example:
        griffe.load("kerabl", extensions=griffe.load_extensions(FenceExamples()))
    """

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_examples(obj.docstring.value)
