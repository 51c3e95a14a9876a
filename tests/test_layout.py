"""The layout rules of issue 27, checked on the source: file and function sizes, and imports
that run one way (between packages, and between model_store's sub-packages)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model_store", "indexer", "app", "fusionrec")  # low → high
SIZED = ("model_store", "indexer", "fusionrec")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
# model_store's sub-packages, low → high (the shared modules first)
LAYERS = (
    ("errors", "config", "digest", "pages", "progress", "threads"),
    ("data",),
    ("text",),
    ("model",),
    ("bundle",),
    ("catalog", "events", "privacy"),
    ("training",),
    ("evaluation",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import, TYPE_CHECKING ones included."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def option_types() -> set[str]:
    """The option types the CLI declares once (``X = Annotated[..., typer.Option(...)]``)."""
    tree = ast.parse((ROOT / "fusionrec" / "cli" / "common.py").read_text())
    return {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign) and "typer.Option" in ast.unparse(node.value)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, options: set[str]) -> int:
    """Lines of a function; a typer command's (its parameters are typer options) counted
    from its body, so that its option declarations do not count."""
    params = [*node.args.args, *node.args.kwonlyargs]
    annotations = [ast.unparse(a.annotation) for a in params if a.annotation is not None]
    command = any("typer." in a or a in options for a in annotations)
    start = node.body[0].lineno if command else node.lineno
    return (node.end_lineno or node.lineno) - start + 1


@pytest.mark.parametrize("path", sources(*SIZED), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_are_small(path: Path) -> None:
    text = path.read_text()
    assert text.count("\n") <= MAX_FILE_LINES, f"{path.name}: over {MAX_FILE_LINES} lines"
    options = option_types()
    functions = [
        node
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    long = [
        f"{f.name} ({function_lines(f, options)} lines)"
        for f in functions
        if function_lines(f, options) > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_packages_import_one_way() -> None:
    back = []
    for path in sources(*PACKAGES):
        mine = PACKAGES.index(path.relative_to(ROOT).parts[0])
        for line, module in imported(ast.parse(path.read_text())):
            top = module.split(".")[0]
            if top in PACKAGES and PACKAGES.index(top) > mine:
                back.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not back, back[0]


def test_model_store_sub_packages_import_downwards() -> None:
    back = []
    for path in sources("model_store"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[1] == "__init__":
            continue
        mine = RANK.get(parts[1])
        assert mine is not None, f"{path}: model_store/{parts[1]} is in no layer of LAYERS"
        for line, module in imported(ast.parse(path.read_text())):
            names = module.split(".")
            if names[0] == "model_store" and len(names) > 1 and RANK.get(names[1], -1) > mine:
                back.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not back, back[0]
