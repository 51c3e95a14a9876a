"""The layout's rules, read from the code itself (ast): sizes, import direction, no cycles.

* packages import one way: ``fusionrec → app → indexer → model_store``;
* inside ``model_store`` the sub-packages follow the offline pipeline, low → high (a module
  may import its own sub-package or a lower one, never a higher one);
* no import cycle between modules;
* no package file over 400 lines, no function over 60 lines (a typer command's option
  declarations are its signature, which does not count: only the body is measured).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fusionrec", "app", "indexer", "model_store")  # high → low
# model_store's rooms, low → high; the shared modules at its top level are lowest
MODEL_STORE_LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "config", "database", "digest", "pages", "progress", "threads", "ids", "stats"),
    ("data",),
    ("text",),
    ("model",),
    ("bundle",),
    ("catalog", "events", "privacy"),
    ("training",),
    ("evaluation",),
)
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield ".".join(parts), path


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (no import at run time)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def imports_of(name: str, path: Path, *, typing: bool = True) -> set[str]:
    """Project modules imported by ``name`` (at any depth of the file, lazily too; with
    ``typing`` False, not those imported only for type checking)."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    is_pkg = path.name == "__init__.py"
    skip = set() if typing else _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + int(is_pkg)]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    known = dict(modules())
    return {m for m in out if m in known and m != name}


def graph(*, typing: bool = True) -> dict[str, set[str]]:
    return {name: imports_of(name, path, typing=typing) for name, path in modules()}


def rank(module: str) -> tuple[int, int]:
    """(package rank high → low, layer inside model_store low → high)."""
    parts = module.split(".")
    top = PACKAGES.index(parts[0])
    if parts[0] != "model_store" or len(parts) == 1:
        return top, 0
    for layer, rooms in enumerate(MODEL_STORE_LAYERS):
        if parts[1] in rooms:
            return top, layer
    raise AssertionError(f"{module}: model_store room {parts[1]!r} has no layer in this test")


def test_imports_go_one_way() -> None:
    back: list[str] = []
    for module, deps in graph().items():
        top, layer = rank(module)
        for dep in deps:
            dep_top, dep_layer = rank(dep)
            if dep_top < top:
                back.append(f"{module} imports {dep} (a higher package)")
            elif dep_top == top == PACKAGES.index("model_store") and dep_layer > layer:
                back.append(f"{module} imports {dep} (a later stage of model_store)")
    assert not back, "\n".join(sorted(back))


def test_no_import_cycle() -> None:
    """At run time: an import for type checking only may point back."""
    g = graph(typing=False)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(g[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(g):
        if node not in state and (cycle := visit(node)) is not None:
            pytest.fail("import cycle: " + " → ".join(cycle))


def test_files_and_functions_stay_small() -> None:
    too_long: list[str] = []
    for _, path in modules():
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if (n := len(text.splitlines())) > MAX_FILE_LINES:
            too_long.append(f"{rel}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if (n := function_lines(node, path)) > MAX_FUNCTION_LINES:
                too_long.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, "\n".join(too_long)


def is_cli_command(node: ast.FunctionDef | ast.AsyncFunctionDef, path: Path) -> bool:
    """A typer command or callback: decorated (``@app.command(...)``) or a function of the
    CLI package registered by ``app.command()(fn)``."""
    if path.parent == ROOT / "fusionrec" / "cli":
        return True
    return any(
        isinstance(d, ast.Call)
        and isinstance(d.func, ast.Attribute)
        and d.func.attr in ("command", "callback")
        for d in node.decorator_list
    )


def function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, path: Path) -> int:
    """Lines from ``def`` to the end; for a CLI command only its body after the docstring
    (its signature is the option declarations)."""
    start = node.lineno
    if is_cli_command(node, path):
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        start = (body or node.body)[0].lineno
    return (node.end_lineno or start) - start + 1


def test_the_rules_see_a_back_edge() -> None:
    """The import reader itself: a lazy import inside a function counts."""
    deps = imports_of("fusionrec.retrain", ROOT / "fusionrec" / "retrain.py")
    assert any(d.startswith("model_store") for d in deps)
    assert rank("app.main") < rank("indexer.build") < rank("model_store.errors")
    assert rank("model_store.data.dataset")[1] < rank("model_store.training.trainer")[1]
