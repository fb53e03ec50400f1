"""The import contract: dependencies flow one way (docs/architecture.md).

    cli -> run -> engine, data, tracking, leaderboard, config -> core <- objectives, tasks

Checked on the source with ``ast``, so it holds for every module whether or not a test imports it.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("harness", "objectives", "tasks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import of the file."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    is_pkg = path.name == "__init__.py"
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    out.append((a.name, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = me.split(".") if is_pkg else me.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                names = [f"{mod}.{a.name}" for a in child.names]
                out.append((mod, child.lineno, in_function))
                out.extend((n, child.lineno, in_function) for n in names)
            visit(child, inner)

    visit(tree, False)
    return [(m, line, f) for m, line, f in out if m.split(".")[0] in PACKAGES]


def modules():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield path


def existing(mod: str) -> str:
    """The longest prefix of ``mod`` that is a module or package of the project."""
    parts = mod.split(".")
    while parts:
        p = ROOT.joinpath(*parts)
        if p.with_suffix(".py").exists() or (p / "__init__.py").exists():
            return ".".join(parts)
        parts = parts[:-1]
    return mod


def layer(mod: str) -> str:
    parts = mod.split(".")
    if parts[0] != "harness" or len(parts) == 1:
        return parts[0]
    return "harness." + parts[1]


#: what each layer may import from the project (besides itself)
ALLOWED = {
    "harness.core": set(),
    "objectives": {"harness.core"},
    "tasks": {"harness.core", "harness.data.sources", "harness.data.shapes"},
    "harness.tracking": {"harness.core"},
    "harness.leaderboard": {"harness.core", "harness.tracking"},
    "harness.config": {"harness.core", "harness.data.shapes", "harness.data.sources"},
    "harness.data": {"harness.core", "harness.config"},
    "harness.engine": {"harness.core", "harness.config", "harness.data"},
    "harness.run": {
        "harness.core",
        "harness.config",
        "harness.data",
        "harness.engine",
        "harness.tracking",
        "harness.leaderboard",
    },
    "harness.cli": {
        "harness.core",
        "harness.config",
        "harness.data",
        "harness.engine",
        "harness.tracking",
        "harness.leaderboard",
        "harness.run",
    },
    "harness": set(),  # harness/__init__.py: the version
    "harness.__main__": {"harness.cli"},
    # compatibility re-exports of public paths that moved (plugins written before the move)
    "harness.batch": {"harness.core"},
    "harness.registry": {"harness.core"},
}


def allowed(src: str, dst: str) -> bool:
    if dst == "harness":  # the root package holds the version only
        return True
    src_layer = layer(src)
    if dst == src_layer or dst.startswith(src_layer + ".") or src_layer == dst.split(".")[0] == dst:
        return True
    if src_layer == "harness.config" or src_layer == "tasks":  # module-level grants
        return any(dst == a or dst.startswith(a + ".") for a in ALLOWED[src_layer])
    return any(dst == a or dst.startswith(a + ".") for a in ALLOWED.get(src_layer, set()))


def test_every_module_belongs_to_a_layer():
    unknown = {module_name(p) for p in modules() if layer(module_name(p)) not in ALLOWED}
    assert not unknown, f"modules outside the declared layers: {sorted(unknown)}"


@pytest.mark.parametrize("path", list(modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_dependencies_flow_one_way(path):
    src = module_name(path)
    bad = sorted(
        {(existing(m), line) for m, line, _ in project_imports(path) if not allowed(src, existing(m))}
    )
    assert not bad, f"{src} imports {bad}: against the layering (see tests/unit/test_architecture.py ALLOWED)"


@pytest.mark.parametrize(
    "path",
    [p for p in modules() if layer(module_name(p)) != "harness.cli"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_project_import_inside_functions(path):
    """Imports placed inside functions to dodge cycles hide the real dependencies. Only the CLI
    defers project imports, so that `--help` does not import torch."""
    late = sorted({(m, line) for m, line, in_function in project_imports(path) if in_function})
    assert not late, f"{module_name(path)} imports project modules inside functions: {late}"


@pytest.mark.parametrize("path", list(modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path):
    """A module that grows past about 600 lines is doing several jobs: split it along its seams."""
    n = len(path.read_text().splitlines())
    assert n <= 600, f"{path.relative_to(ROOT)} has {n} lines; split it (the limit is about 600)"
