"""The import graph of app/: no circles, and an import inside a function says why it is there."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Function-level imports that may stay without a comment (none: each one says why).
UNCOMMENTED: set[tuple[str, str]] = set()


def app_modules() -> dict[str, Path]:
    """Every module of the app package by dotted name."""
    modules = {}
    for path in sorted((ROOT / "app").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = app_modules()


def imported(node: ast.Import | ast.ImportFrom, module: str) -> set[str]:
    """The app modules an import statement in `module` names (`from app.http.web import docs`
    names app.http.web.docs; `from app.http.web import bp` names app.http.web)."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in MODULES}
    base = node.module or ""
    if node.level:  # relative: from the importer's package
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    for alias in node.names:
        if f"{base}.{alias.name}" in MODULES:
            found.add(f"{base}.{alias.name}")
        elif base in MODULES:
            found.add(base)
    return found


def is_type_checking(node: ast.If) -> bool:
    """`if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`): imports that never run."""
    test = node.test
    return getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == (
        "TYPE_CHECKING"
    )


def walk(body: list[ast.stmt], in_function: bool) -> list[tuple[ast.stmt, bool]]:
    """Every import statement below `body`, and whether it runs inside a function."""
    found: list[tuple[ast.stmt, bool]] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append((node, in_function))
        elif isinstance(node, ast.If) and is_type_checking(node):
            continue
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found += walk(node.body, True)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    found += walk(inner, in_function)
    return found


def module_graph() -> dict[str, set[str]]:
    """module -> the app modules its top-level imports run. Importing app.http.web.docs runs
    app/http/web/__init__.py first: each package on the way counts too, except the importer's own
    packages (Python initializes those before it), unless it takes names from them."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        own = {module.rsplit(".", n)[0] for n in range(module.count(".") + 1)}
        named: set[str] = set()
        on_the_way: set[str] = set()
        for node, in_function in walk(ast.parse(path.read_text()).body, False):
            if in_function:
                continue
            for target in imported(node, module):  # type: ignore[arg-type]
                named.add(target)
                parts = target.split(".")
                on_the_way |= {".".join(parts[:n]) for n in range(1, len(parts))}
        graph[module] = (named | on_the_way - own) - {module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or around a circle (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_app_modules_import_each_other_in_a_circle() -> None:
    """A circle would work only in one import order (the second module sees a half-built
    first one): lower layers must not import upper ones, even to reach one helper."""
    graph = module_graph()

    found = circles(graph)

    assert found == [], "\n".join(
        " <-> ".join(group)
        + ": "
        + "; ".join(f"{a} -> {b}" for a in group for b in graph[a] & set(group))
        for group in found
    )


def test_the_graph_sees_a_circle_through_a_package() -> None:
    """The check can fail: app.a imports app.b.c, whose package app.b imports app.a."""
    graph = {"app.a": {"app.b", "app.b.c"}, "app.b": {"app.a"}, "app.b.c": set()}

    assert circles(graph) == [["app.a", "app.b"]]


def in_cli(module: str) -> bool:
    """app.cli or one of its modules (the command line, app/cli/)."""
    return module == "app.cli" or module.startswith("app.cli.")


def test_operations_do_not_reach_up_into_the_command_line() -> None:
    """Backup, verify, cache, prefetch, import-devpi sit below app/cli/: none imports it (it
    imports them, by name, not by a string for importlib), so their errors are their own."""
    importers = []
    # app/__main__.py is the console script above the command line, the one module that may.
    for module, path in MODULES.items() - {("app.__main__", MODULES["app.__main__"])}:
        if in_cli(module):
            continue
        for node, _in_function in walk(ast.parse(path.read_text()).body, False):
            if any(in_cli(name) for name in imported(node, module)):  # type: ignore[arg-type]
                importers.append(f"{module}:{node.lineno}")

    assert importers == []
    assert not any("importlib" in path.read_text() for m, path in MODULES.items() if in_cli(m))


def import_blocks(body: list[ast.stmt], in_function: bool) -> list[tuple[list[ast.stmt], bool]]:
    """Runs of consecutive import statements in every statement list below `body`, and
    whether each runs inside a function."""
    blocks: list[tuple[list[ast.stmt], bool]] = []
    run: list[ast.stmt] = []
    for node in [*body, None]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            run.append(node)
            continue
        if run:
            blocks.append((run, in_function))
            run = []
        if node is None or (isinstance(node, ast.If) and is_type_checking(node)):
            continue
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                blocks += import_blocks(inner, inside)
    return blocks


def test_an_import_inside_a_function_says_why() -> None:
    """An app module imported inside a function (for a fast start, or to keep gunicorn's master
    light) carries a comment in its run of imports or on the line above; dodging a circle is
    no reason."""
    silent = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for block, in_function in import_blocks(ast.parse("\n".join(lines)).body, False):
            names = set().union(*(imported(node, module) for node in block))  # type: ignore[arg-type]
            if not in_function or not names or {(module, n) for n in names} <= UNCOMMENTED:
                continue
            first, last = block[0].lineno, block[-1].end_lineno or block[-1].lineno
            if not any("#" in line for line in lines[first - 2 : last]):
                silent.append(f"{path.relative_to(ROOT)}:{first} imports {sorted(names)}")

    assert silent == []


LAYERS = ("core", "data", "services", "http", "ops")  # pyproject.toml's [tool.importlinter]


def test_every_module_is_in_a_layer_package() -> None:
    """The import contracts see only the layer packages: a module added beside app/cli/
    would be in no layer, and nothing would check its imports (app/__main__.py only hands the
    command line to app/cli/, or a bare healthcheck to app.ops.server)."""
    outside = sorted(
        module
        for module in MODULES
        if module not in ("app", "app.__main__") and module.split(".")[1] not in (*LAYERS, "cli")
    )

    assert outside == []


def test_pip_install_ships_every_package_of_app() -> None:
    """pyproject.toml lists the packages a wheel carries: a new layer package left out of it
    would install a `pyshelf` command that cannot import itself."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    inits = (ROOT / "app").rglob("__init__.py")
    packages = {".".join(init.parent.relative_to(ROOT).parts) for init in inits}

    assert packages <= set(config["packages"])


# Libraries only some requests need, each tens of MiB in every worker that imports them: an
# upload with PEP 740 attestations (pypi_attestations, which brings sigstore and boto3 along),
# S3 storage (boto3), PostgreSQL (psycopg), rendering a description (readme_renderer).
LOADED_ON_FIRST_USE = (
    "pypi_attestations",
    "sigstore",
    "boto3",
    "botocore",
    "psycopg",
    "readme_renderer",
)


def test_a_worker_on_sqlite_and_disk_starts_without_the_libraries_only_some_requests_need(
    tmp_path: Path,
) -> None:
    script = (
        "import sys\n"
        "from app import create_app\n"
        "create_app()\n"
        f"print(sorted(set({LOADED_ON_FIRST_USE!r}) & {{m.split('.')[0] for m in sys.modules}}))\n"
    )
    env = {"PATH": os.environ.get("PATH", ""), "DATA_DIR": str(tmp_path), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
