"""mkdocs hook: the command-line reference, generated at build time from the typer app.

A page that holds the marker `<!-- kerabl-cli-reference -->` gets, in its place, what
`typer kerabl.cli utils docs --name kerabl` prints (typer's own generator, called in this process
on `kerabl.cli.app`, so that the commands `kerabl.cli_tools` registers are there too), its
headings one level down under the page's own title. Nothing of it is written by hand.

Example:
    hooks: [docs/hooks/cli_reference.py]     # in mkdocs.yml
"""

from __future__ import annotations

import re

MARKER = "<!-- kerabl-cli-reference -->"


def cli_reference() -> str:
    """The Markdown reference of every `kerabl` command, from typer's docs generator.

    Example:
        cli_reference().count("## `kerabl ")   # one heading per command
    """
    import typer
    import typer.main
    from typer.cli import get_docs_for_click

    from kerabl.cli import app

    command = typer.main.get_command(app)
    text = get_docs_for_click(obj=command, ctx=typer.Context(command), name="kerabl")
    return re.sub(r"^(#+) `kerabl", r"#\1 `kerabl", text, flags=re.MULTILINE)


def on_page_markdown(markdown: str, **kwargs) -> str:
    """Put the reference where a page holds the marker."""
    return markdown.replace(MARKER, cli_reference()) if MARKER in markdown else markdown
