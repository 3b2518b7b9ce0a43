"""The package's import rules, read from the source (imports under TYPE_CHECKING and inside functions count).

    config/      imports only config/
    wire/        config.model at most; never asyncio or sockets, not even through another module
    decisions/   wire/ and config/; never asyncio or sockets
    engine/      anything but ops/, testing/, cli, app
    testing/     is imported by nothing in the product
and no module imports itself back through others (no cycles).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import guardproxy

ROOT = Path(guardproxy.__file__).parent


def _module_name(path: Path) -> str:
    parts = ("guardproxy",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(imports inside the package, every top-level module imported) per module."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    inner: dict[str, set[str]] = {m: set() for m in modules}
    outer: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # `from pkg import mod` imports the module pkg.mod when there is one.
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
            for t in targets:
                if t.split(".")[0] == "guardproxy":
                    while t not in modules:
                        t = t.rsplit(".", 1)[0]
                    if t != name:
                        inner[name].add(t)
                else:
                    outer[name].add(t.split(".")[0])
    return inner, outer


INNER, OUTER = _graph()


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for n in INNER[m]:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def _in(module: str, folder: str) -> bool:
    return module == f"guardproxy.{folder}" or module.startswith(f"guardproxy.{folder}.")


def test_the_graph_is_read() -> None:
    # A broken reader would pass every rule below: check it sees known edges.
    assert "guardproxy.wire.errors" in INNER["guardproxy.wire.strict"]
    assert "guardproxy.engine.relay" in INNER["guardproxy.engine.exchange"]
    assert "asyncio" in OUTER["guardproxy.engine.relay"]


def test_no_import_cycles() -> None:
    cycles = [m for m in INNER if m in _closure(m)]
    assert cycles == []


@pytest.mark.parametrize("folder", ["wire", "decisions"])
def test_pure_folders_never_import_asyncio_or_sockets(folder: str) -> None:
    for m in INNER:
        if _in(m, folder):
            reached = {m} | _closure(m)
            assert not any(OUTER[r] & {"asyncio", "uvloop", "socket", "selectors"} for r in reached), m
            assert not any(_in(r, f) for r in reached for f in ("engine", "ops", "testing")), m


def test_config_is_the_bottom_layer() -> None:
    for m in INNER:
        if _in(m, "config"):
            assert all(_in(n, "config") for n in INNER[m]), m


def test_wire_needs_only_the_config_model() -> None:
    for m in INNER:
        if _in(m, "wire"):
            assert all(_in(n, "wire") or n == "guardproxy.config.model" for n in INNER[m]), m


def test_engine_imports_no_command() -> None:
    for m in INNER:
        if _in(m, "engine"):
            assert not any(_in(n, f) for n in INNER[m] for f in ("ops", "testing", "cli", "app")), m


def test_the_relay_knows_no_client() -> None:
    reached = _closure("guardproxy.engine.relay")
    assert not reached & {"guardproxy.engine.client", "guardproxy.engine.exchange", "guardproxy.engine.server"}


def test_nothing_in_the_product_imports_testing() -> None:
    for m in INNER:
        if not _in(m, "testing"):
            assert not any(_in(n, "testing") for n in INNER[m]), m
