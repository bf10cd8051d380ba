"""The import contract that keeps the layout honest, checked on the source itself.

- The domain (`audit`) imports no web or task framework and no operations tooling, not even
  for type checking.
- The API reaches the worker side only through `worker.enqueue`.
- Nothing outside `tests/` imports the tests.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = {"fastapi", "starlette", "celery", "kombu", "uvicorn", "matplotlib", "kubernetes"}
PACKAGES = ("audit", "api", "worker", "cli", "ops", "simulator", "bench", "loadtests")


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """Every module an `import` or `from ... import` names, wherever it stands in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def sources(package: str, root: Path = ROOT) -> list[Path]:
    return sorted((root / package).rglob("*.py"))


def violations(package: str, forbidden: set[str], root: Path = ROOT) -> list[str]:
    found = []
    for path in sources(package, root):
        for line, module in imported_modules(path):
            if module.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(root)}:{line} imports {module}")
    return found


def test_the_domain_imports_no_framework_and_no_ops_code() -> None:
    assert violations("audit", FRAMEWORKS | {"api", "worker", "cli", "ops", "tests"}) == []


def test_the_api_reaches_the_worker_only_through_its_enqueue_module() -> None:
    found = []
    for path in sources("api"):
        for line, module in imported_modules(path):
            if module.split(".")[0] == "worker" and module != "worker.enqueue":
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert found == []


@pytest.mark.parametrize("package", PACKAGES)
def test_nothing_outside_tests_imports_the_tests(package: str) -> None:
    assert violations(package, {"tests"}) == []


def test_the_contract_sees_imports_hidden_under_type_checking(tmp_path: Path) -> None:
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "probe.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kombu import Queue\n"
    )
    assert violations("audit", FRAMEWORKS, tmp_path) == ["audit/probe.py:3 imports kombu"]
