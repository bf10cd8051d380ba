"""uv.lock is where installed versions come from (make install, CI, docker/Dockerfile).

It must agree with pyproject.toml: a dependency added, removed or re-constrained there without
`make lock` fails here. Fast and offline: the lock is read as TOML, and `uv lock --check
--offline` (when uv is installed, as `make install` does) confirms it the way uv sees it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
LOCK = tomllib.loads((REPO_ROOT / "uv.lock").read_text(encoding="utf-8"))
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])
# What the image must not carry: the ops extra's heavy dependencies and the dev tools.
NOT_IN_RUNTIME = {"kubernetes", "matplotlib", "numpy", "pytest", "mypy", "ruff", "locust"}

# (name, extras, specifier, extra it belongs to or "", other marker)
Key = tuple[str, tuple[str, ...], str, str, str]


def packages(name: str) -> list[dict[str, Any]]:
    return [p for p in LOCK["package"] if p["name"] == name]


def root() -> dict[str, Any]:
    found = packages(PROJECT)
    assert len(found) == 1, f"uv.lock has no single {PROJECT} entry: run `make lock`"
    return found[0]


def declared_key(text: str, extra: str) -> Key:
    req = Requirement(text)
    return (
        canonicalize_name(req.name),
        tuple(sorted(canonicalize_name(e) for e in req.extras)),
        str(SpecifierSet(str(req.specifier))),
        extra,
        str(req.marker or ""),
    )


def locked_key(entry: dict[str, Any]) -> Key:
    marker = entry.get("marker", "")
    extra = re.search(r"extra == '([^']+)'", marker)
    rest = re.sub(r"\s*(and\s+)?extra == '[^']+'(\s+and)?\s*", "", marker).strip()
    return (
        canonicalize_name(entry["name"]),
        tuple(sorted(canonicalize_name(e) for e in entry.get("extras", []))),
        str(SpecifierSet(entry.get("specifier", ""))),
        extra.group(1) if extra else "",
        rest,
    )


def test_lock_holds_exactly_the_requirements_pyproject_declares() -> None:
    project = PYPROJECT["project"]
    declared = {declared_key(text, "") for text in project["dependencies"]}
    for extra, texts in project.get("optional-dependencies", {}).items():
        declared |= {declared_key(text, extra) for text in texts}
    locked = {locked_key(e) for e in root()["metadata"]["requires-dist"]}
    assert declared - locked == set(), "declared in pyproject.toml, not locked: run `make lock`"
    assert locked - declared == set(), "locked, no longer declared: run `make lock`"
    extras = sorted(project.get("optional-dependencies", {}))
    assert sorted(root().get("optional-dependencies", {})) == extras
    assert LOCK["requires-python"] == project["requires-python"]


def test_uv_agrees_the_lock_is_current(tmp_path: Path) -> None:
    uv = shutil.which("uv") or str(REPO_ROOT / ".tools" / "uv" / "bin" / "uv")
    if not Path(uv).is_file():
        pytest.skip("uv is not installed (`make install` puts it in .tools/uv)")
    proc = subprocess.run(
        [uv, "lock", "--check", "--offline", "--python", "python3"],
        cwd=REPO_ROOT,
        env={**os.environ, "UV_CACHE_DIR": str(tmp_path), "UV_PYTHON_DOWNLOADS": "never"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"uv.lock is stale, run `make lock`:\n{proc.stderr}"


def test_every_locked_distribution_is_an_exact_version_with_hashes() -> None:
    for package in LOCK["package"]:
        if "registry" not in package["source"]:
            continue
        files = [package.get("sdist", {}), *package.get("wheels", [])]
        hashed = [f for f in files if f.get("hash", "").startswith("sha256:")]
        assert package.get("version"), package["name"]
        assert hashed, f"{package['name']} {package['version']} has no hashed file in uv.lock"


def runtime_closure() -> set[str]:
    """Packages the project needs without extras: what the image installs."""
    visited: set[tuple[str, tuple[str, ...]]] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(PROJECT, ())]
    while todo:
        item = todo.pop()
        if item in visited:
            continue
        visited.add(item)
        name, extras = item
        for package in packages(name):
            deps = list(package.get("dependencies", []))
            for extra in extras:
                deps += package.get("optional-dependencies", {}).get(extra, [])
            todo += [(dep["name"], tuple(dep.get("extra", []))) for dep in deps]
    return {name for name, _ in visited} - {PROJECT}


def test_runtime_dependencies_leave_out_ops_and_dev() -> None:
    closure = runtime_closure()
    assert {"celery", "fastapi", "sqlalchemy", "uvicorn", "redis"} <= closure
    assert closure & NOT_IN_RUNTIME == set()


def test_make_ci_and_the_image_install_from_the_lock() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    dockerfile = (REPO_ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
    ignore = (REPO_ROOT / "docker" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    assert re.search(r"\$\(UV\) sync --frozen\b.*--extra dev", makefile)
    assert re.search(r"^lock:", makefile, re.M)
    assert "COPY pyproject.toml uv.lock" in dockerfile
    syncs = re.findall(r"uv sync ([^\n]*)", dockerfile)
    assert syncs
    assert all("--frozen" in s and "--extra" not in s for s in syncs)
    assert not re.search(r"pip install (\.|-r|-e)", dockerfile), "the image installs from uv.lock"
    assert "!uv.lock" in ignore.splitlines()
    # One uv version for make and the image.
    make_uv = re.search(r"^UV_VERSION := (\S+)", makefile, re.M)
    image_uv = re.search(r'"uv==([^"]+)"', dockerfile)
    assert make_uv
    assert image_uv
    assert make_uv.group(1) == image_uv.group(1)
    assert not dockerfile.startswith("# syntax"), "an offline docker build fails on that line"
