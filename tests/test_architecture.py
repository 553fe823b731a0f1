"""The package's architecture (docs/architecture.md): no import cycle between modules, no
`_private` name used across modules, the studies imported only from above them, the layers of
setup.cfg's import-linter contract kept, and `kerabl.reproduce.reproduce` as a library call."""

import ast
import contextlib
import json
from pathlib import Path

import grimp
import pytest

import kerabl

PACKAGE = Path(kerabl.__file__).parent
ROOT = PACKAGE.parent
# The modules above the studies: the tools and the command line (setup.cfg's layers).
ABOVE_STUDIES = ("kerabl.reproduce", "kerabl.render", "kerabl.compare", "kerabl.crosscheck",
                 "kerabl.slurm", "kerabl.bench", "kerabl.convert", "kerabl.cli",
                 "kerabl.cli_tools", "kerabl.options", "kerabl.__main__")
STUDIES = ("kerabl.hayne", "kerabl.zhou")


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("kerabl", cache_dir=None)


def _within(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of two or more modules that import each other, directly or through others
    (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, groups, counter = {}, {}, set(), [], [], [0]
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return groups


def test_strongly_connected_finds_a_cycle_and_nothing_else():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(edges) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules(graph):
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i.startswith("kerabl")}
             for m in graph.modules if m.startswith("kerabl")}
    edges = {m: {i for i in targets if i != m} for m, targets in edges.items()}
    cycles = strongly_connected(edges)
    assert cycles == [], "modules that import each other: " + "; ".join(
        " <-> ".join(group) for group in cycles)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def cross_module_private_uses(path: Path) -> list[str]:
    """`from kerabl.x import _name` and `kerabl.x._name` in the module at `path` where kerabl.x
    is another module."""
    own = _module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kerabl") \
                and node.module != own:
            found += [f"{own}:{node.lineno} from {node.module} import {a.name}"
                      for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            dotted, value = [], node.value
            while isinstance(value, ast.Attribute):
                dotted.insert(0, value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id == "kerabl":
                module = ".".join(["kerabl", *dotted])
                if module != own:
                    found.append(f"{own}:{node.lineno} {module}.{node.attr}")
    return found


def test_the_private_name_scan_sees_both_spellings(tmp_path):
    module = tmp_path / "kerabl" / "x.py"
    module.parent.mkdir()
    module.write_text("from kerabl.graph import _layer_node, layer_names\nimport kerabl.masks\n"
                      "kerabl.masks._units(1, 2)\nfrom kerabl.x import _own\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = cross_module_private_uses(module)
    finally:
        ROOT = saved
    assert found == ["kerabl.x:1 from kerabl.graph import _layer_node",
                     "kerabl.x:3 kerabl.masks._units"]


def test_no_private_name_crosses_modules():
    found = [use for path in sorted(PACKAGE.rglob("*.py")) for use in cross_module_private_uses(path)]
    assert found == [], "private names used from another module (make them public): " + "; ".join(found)


def test_only_tools_and_the_command_line_import_the_studies(graph):
    upward = sorted(
        f"{m} -> {i}" for m in graph.modules
        if m.startswith("kerabl") and not _within(m, STUDIES + ABOVE_STUDIES)
        for i in graph.find_modules_directly_imported_by(m) if _within(i, STUDIES))
    assert upward == [], "lower layers importing a study: " + "; ".join(upward)


def test_the_studies_do_not_import_each_other(graph):
    across = sorted(f"{m} -> {i}" for m in graph.modules
                    for a, b in (STUDIES, STUDIES[::-1]) if _within(m, (a,))
                    for i in graph.find_modules_directly_imported_by(m) if _within(i, (b,)))
    assert across == []


def test_the_import_linter_contracts_are_kept():
    from importlinter.cli import EXIT_STATUS_SUCCESS, lint_imports

    with contextlib.chdir(ROOT):
        status = lint_imports(config_filename=str(ROOT / "setup.cfg"), no_cache=True, no_logo=True)
    assert status == EXIT_STATUS_SUCCESS, "run `lint-imports` to see the broken contract"


@pytest.mark.slow
def test_reproduce_is_a_library_call(tmp_path, monkeypatch):
    """`kerabl.reproduce.reproduce` on the demo (one layer, small grid, no Z study): the results,
    the summary file and the figures it names exist, and the headline it returns is the one
    printed from that summary."""
    import kerabl.hayne.study
    from kerabl import digits_imageset, load_network
    from kerabl.hayne.config import HConfig
    from kerabl.reproduce import headline_text, reproduce

    monkeypatch.setattr(kerabl.hayne.study, "probe_pool", lambda workers: contextlib.nullcontext(None))
    lines = []
    run = reproduce(load_network("demo"), digits_imageset(), tmp_path,
                    HConfig(grid=(2, 2), probe_fits=2, heldout_folds=2), layers=["dense_2"],
                    z=False, workers=1, progress=False, log=lines.append)
    assert run.results == tmp_path / "h_results.h5" and run.results.is_file()
    assert run.z_results is None
    assert json.loads(run.summary_path.read_text()) == run.summary
    assert run.headline == headline_text(run.summary)
    assert run.headline.startswith("largest mean rank deficit: cell (")
    assert run.figures and all(Path(f).is_file() for f in run.figures)
    assert {Path(f).parent for f in run.figures} == {tmp_path / "figures"}
    assert "fig2b_deficit_grids.png" in {Path(f).name for f in run.figures}
    assert run.headline in lines and f"results: {run.results} (summary: {run.summary_path})" in lines
    assert set(run.timings) == {"H study", "H figures"}
