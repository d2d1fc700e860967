"""The pure core under pxq/ imports no clock, no randomness, no I/O and no driver.

DESIGN section 2: only ``pxq/cli.py`` and the lazy re-exports of ``pxq/__init__.py`` may reach
into ``sim``, ``net`` or runtime libraries. This test parses every module's imports (not just
the top-level ones) so that a function-level ``import time`` is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = {
    "asyncio",
    "socket",
    "selectors",
    "threading",
    "multiprocessing",
    "subprocess",
    "lmdb",
    "simpy",
    "asyncssh",
    "matplotlib",
    "time",
    "random",
    "datetime",
    "uuid",
    "secrets",
    "os",
    "sim",
    "net",
}
ALLOWED_FILES = {"cli.py", "__main__.py"}
# ``random`` may be imported only for the ``random.Random`` type, under TYPE_CHECKING.

ROOT = Path(__file__).resolve().parent.parent / "pxq"


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    type_checking_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in {
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        }:
            for sub in ast.walk(node):
                if hasattr(sub, "lineno"):
                    type_checking_lines.add(sub.lineno)
    for node in ast.walk(tree):
        if node.lineno in type_checking_lines if hasattr(node, "lineno") else False:
            continue
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_pure_core_imports_no_runtime_clock_or_randomness() -> None:
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if str(rel) in ALLOWED_FILES or rel.parts[0] == "cli":
            continue
        for lineno, name in _imports(ast.parse(path.read_text())):
            if name in FORBIDDEN:
                offenders.append(f"pxq/{rel}:{lineno} imports {name}")
    assert offenders == []


def test_purity_check_catches_a_forbidden_import() -> None:
    tree = ast.parse("def f():\n    import time\n    return time.monotonic()\n")
    assert (2, "time") in _imports(tree)


def test_purity_check_allows_type_checking_imports() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import random\n")
    assert _imports(tree) == [(1, "typing")]
