"""The documentation: every public function and class of every kerabl module opens with a usage
example (its docstring holds an "Example:" or "Examples:" block; the typer commands are exempt:
their docstring is the command's --help text, and the generated command-line reference and
docs/quickstart.md show them in use); every module has its place on a library reference page;
the README stays a short front door whose links into docs/ resolve; the Performance page keeps
its paragraphs short. `mkdocs build --strict` (in .ci/run) checks the site's own links."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
import types
import unicodedata
from pathlib import Path

import pytest

import kerabl

# Public names of modules that other work is changing now (kerabl/engine.py, kerabl/hayne/probes.py,
# kerabl/bench/): their examples come with those changes. Each must still lack one: remove it
# here when it gets one.
PENDING: set = set()   # names allowed to lack an example for now (none)


def _modules() -> list[types.ModuleType]:
    names = [kerabl.__name__] + [info.name for info in
                                 pkgutil.walk_packages(kerabl.__path__, kerabl.__name__ + ".")]
    return [importlib.import_module(name) for name in sorted(names)]


def _typer_commands() -> set:
    """The functions registered as `kerabl` commands (their docstring is the --help text)."""
    from kerabl.cli import app

    callbacks = {info.callback for info in app.registered_commands}
    return callbacks | {getattr(c, "__wrapped__", c) for c in callbacks}


def missing_examples(module: types.ModuleType, exempt: set = frozenset()) -> list[str]:
    """The public functions and classes defined in `module` whose docstring has no example.

    Example:
        missing_examples(kerabl.masks)   # [] when every public name shows its use
    """
    missing = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if obj in exempt:
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue                      # imported from elsewhere: checked where it is defined
        doc = inspect.getdoc(obj) or ""
        if "Example:" not in doc and "Examples:" not in doc:
            missing.append(f"{module.__name__}.{name}")
    return missing


def test_the_walk_finds_the_package():
    names = {m.__name__ for m in _modules()}
    assert {"kerabl.cli", "kerabl.cli_tools", "kerabl.hayne.figures", "kerabl.hayne.plot",
            "kerabl.zhou.study", "kerabl.bench.cases", "kerabl.weightfiles"} <= names
    assert len(names) > 50


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_every_public_function_has_an_example(module):
    missing = missing_examples(module, _typer_commands())
    assert [name for name in missing if name not in PENDING] == []
    pending = sorted(n for n in PENDING if n.rsplit(".", 1)[0] == module.__name__)
    assert [name for name in pending if name not in missing] == [], "has one now: drop from PENDING"


def test_a_function_without_an_example_is_found():
    module = types.ModuleType("kerabl_docs_probe")

    def documented():
        """Add nothing.

        Example:
            documented()
        """

    def undocumented():
        """Add nothing."""

    class Bare:
        pass

    def _private():
        pass

    for fn in (documented, undocumented, Bare, _private):
        fn.__module__ = module.__name__
        setattr(module, fn.__name__, fn)
    module.imported = inspect.getdoc        # defined elsewhere: not this module's to document
    assert missing_examples(module) == ["kerabl_docs_probe.undocumented",
                                        "kerabl_docs_probe.Bare"]


def test_the_exempt_commands_are_the_registered_ones():
    import kerabl.cli
    import kerabl.cli_tools

    commands = _typer_commands()
    assert kerabl.cli.reproduce in commands and kerabl.cli_tools.export in commands
    assert kerabl.cli.main not in commands and kerabl.cli_tools.register not in commands



ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README_MAX_LINES = 250
PARAGRAPH_MAX_LINES = 15


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading (its default `slugify`).

    Example:
        slug("The paper's networks")   # "the-papers-networks"
    """
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _outside_fences(text: str) -> list[str]:
    lines, fence = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fence = not fence
            lines.append("")
        else:
            lines.append("" if fence else line)
    return lines


def anchors(page: Path) -> set:
    """The anchors of a Markdown page's headings (code blocks skipped).

    Example:
        "data" in anchors(DOCS / "models.md")
    """
    return {slug(re.sub(r"[`*]", "", m.group(1)))
            for line in _outside_fences(page.read_text())
            if (m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line))}


def relative_links(text: str) -> list[str]:
    """The targets of the Markdown links and images in `text` that are not URLs or bare anchors.

    Example:
        relative_links("[a](docs/x.md#y) [b](https://z) [c](#d)")   # ["docs/x.md#y"]
    """
    targets = re.findall(r"\]\(([^)\s]+)\)", "\n".join(_outside_fences(text)))
    return [t for t in targets if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]


def broken_links(markdown: Path) -> list[str]:
    """The relative links of a Markdown file whose file, or heading anchor, does not exist.

    Example:
        broken_links(ROOT / "README.md")   # [] when every link resolves
    """
    broken = []
    for target in relative_links(markdown.read_text()):
        path, _, anchor = target.partition("#")
        file = (markdown.parent / path).resolve()
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    return broken


def long_paragraphs(text: str, limit: int = PARAGRAPH_MAX_LINES) -> list[str]:
    """The paragraphs (and list items) of Markdown `text` over `limit` lines, code blocks aside.

    Example:
        long_paragraphs("a\nb\n\nc", limit=1)   # ["a (2 lines)"]
    """
    blocks, block = [], []
    for line in _outside_fences(text) + [""]:
        if not line.strip() or re.match(r"^\s*([-*]|\d+\.)\s", line):
            if block:
                blocks.append(block)
            block = [line] if line.strip() else []
        else:
            block.append(line)
    return [f"{b[0][:60]} ({len(b)} lines)" for b in blocks if len(b) > limit]


def test_the_readme_is_a_short_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    links = relative_links(readme)
    for page in ("quickstart", "own-model", "slurm", "pytorch", "cli", "performance"):
        assert any(link.startswith(f"docs/{page}.md") for link in links), page
    # the test command that .ci/run runs, unchanged
    assert ('pip install -e ".[test]" && python -m pytest -q' in readme
            and "pip install . && kerabl reproduce" in readme)


def test_every_readme_link_resolves():
    assert broken_links(ROOT / "README.md") == []


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# Page\n\n## The paper's networks\n\n```\n# not a heading\n```\n")
    readme = tmp_path / "README.md"
    readme.write_text("[ok](docs/page.md#the-papers-networks) [gone](docs/none.md) "
                      "[bad](docs/page.md#not-a-heading) [web](https://example.org) [top](#x)\n"
                      "```\n[in code](docs/none.md)\n```\n")
    assert broken_links(readme) == [
        "docs/none.md: no such file",
        "docs/page.md#not-a-heading: no heading with anchor #not-a-heading"]


def _api_modules() -> set:
    return {m.group(1) for page in (DOCS / "api").glob("*.md")
            for m in re.finditer(r"^:::\s+([\w.]+)\s*$", page.read_text(), re.MULTILINE)}


def test_every_module_has_its_place_on_a_library_page():
    modules = {m.__name__ for m in _modules()}
    assert sorted(modules - _api_modules()) == [], "add a `::: module` line to a docs/api page"
    assert sorted(_api_modules() - modules) == [], "a docs/api page names a module that is gone"


def test_every_nav_page_exists():
    nav = re.findall(r":\s+([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.MULTILINE)
    assert len(nav) > 20
    assert [page for page in nav if not (DOCS / page).exists()] == []
    assert {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")} <= set(nav)


def test_performance_paragraphs_are_short():
    assert long_paragraphs((DOCS / "performance.md").read_text()) == []


def test_a_long_paragraph_is_found():
    text = "\n".join(["short", "", *["line"] * 16, "", "- item", *["more"] * 15,
                      "```", *["code"] * 40, "```"])
    assert long_paragraphs(text) == ["line (16 lines)", "- item (16 lines)"]


def _hook(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, DOCS / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_has_every_command():
    from kerabl.cli import app

    text = _hook("cli_reference").cli_reference()
    names = [info.name or info.callback.__name__ for info in app.registered_commands]
    assert len(names) >= 16
    for name in names:
        assert f"### `kerabl {name}`" in text, name
    assert text.startswith("## `kerabl`") and "--version" in text
    page = (DOCS / "cli.md").read_text()
    assert _hook("cli_reference").MARKER in page


def test_examples_are_fenced_as_code():
    fence = _hook("griffe_examples").fence_examples
    doc = "Do it.\n\nExample:\n    f(x)\n\n    g(x)   # [1]\n\nArgs:\n    x: a value."
    assert fence(doc) == ("Do it.\n\nExample:\n    ```\n    f(x)\n\n    g(x)   # [1]\n    ```\n"
                          "\nArgs:\n    x: a value.")
    doctest = "Example:\n    >>> f(1)\n    2"
    assert fence(doctest) == doctest


def test_the_version_is_in_one_place():
    from typer.testing import CliRunner

    from kerabl.cli import app

    assert "version = attr: kerabl.__version__" in (ROOT / "setup.cfg").read_text()
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"kerabl {kerabl.__version__}"
    assert f"## {kerabl.__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_the_citation_is_valid():
    cffconvert = pytest.importorskip("cffconvert")
    citation = cffconvert.Citation((ROOT / "CITATION.cff").read_text())
    citation.validate()
    assert len(citation.cffobj["references"]) == 2
