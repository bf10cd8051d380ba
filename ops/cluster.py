"""What `condo-audit ops` reads and changes: the worker's objects, the queue, dead letters.

Kubernetes is reached with the official client; every object is handled as the plain dict the
API serves (camelCase keys), so the code reads like the YAML an operator knows.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config  # type: ignore[import-untyped]
from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]
from urllib3.exceptions import HTTPError as Urllib3Error

from ops import OpsError

PAUSED_REPLICAS = "autoscaling.keda.sh/paused-replicas"
PAUSED = "autoscaling.keda.sh/paused"
KEDA = ("keda.sh", "v1alpha1", "scaledobjects")
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

RBAC_HINT = (
    "The ops Role needs: get/list on deployments (apps), get/patch on deployments/scale, "
    "get/list on horizontalpodautoscalers (autoscaling), get/list/patch on scaledobjects "
    "(keda.sh); see docs/operations.md"
)

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class Target:
    """Where to look: the API connection, the namespace and the Helm release."""

    api: Any  # kubernetes.client.ApiClient
    namespace: str
    release: str

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=worker"


def connect(
    *,
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
    in_cluster: bool,
    release: str,
) -> Target:
    """In-cluster config inside a pod (or with --in-cluster), else the kubeconfig."""
    use_cluster = in_cluster or (
        kubeconfig is None and context is None and "KUBERNETES_SERVICE_HOST" in os.environ
    )
    try:
        if use_cluster:
            config.load_incluster_config()
            api = client.ApiClient()
            ns = namespace or _read_in_cluster_namespace()
        else:
            api = config.new_client_from_config(config_file=kubeconfig, context=context)
            ns = namespace or _kubeconfig_namespace(kubeconfig, context)
    except config.ConfigException as exc:
        raise OpsError(f"no Kubernetes configuration: {exc}") from exc
    return Target(api, ns, release)


def _kubeconfig_namespace(kubeconfig: str | None, context: str | None) -> str:
    contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = next((c for c in contexts if c["name"] == context), None) if context else active
    ns = ((chosen or {}).get("context") or {}).get("namespace")
    return str(ns) if ns else "default"


def _read_in_cluster_namespace() -> str:
    try:
        with open(IN_CLUSTER_NAMESPACE) as fh:
            return fh.read().strip() or "default"
    except OSError:
        return "default"


@contextmanager
def api_errors(action: str, target: Target) -> Iterator[None]:
    """Turns API failures into one clear line: what was tried, where, and what to do."""
    try:
        yield
    except ApiException as exc:
        message = _status_message(exc)
        if exc.status == 403:
            raise OpsError(
                f"permission denied to {action} in namespace {target.namespace!r}: {message}. "
                f"{RBAC_HINT}"
            ) from exc
        if exc.status == 401:
            raise OpsError(f"not authenticated to the Kubernetes API ({message})") from exc
        raise OpsError(f"could not {action}: HTTP {exc.status} {message}") from exc
    except Urllib3Error as exc:
        host = target.api.configuration.host
        raise OpsError(f"cannot reach the Kubernetes API at {host}: {exc}") from exc


def _status_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)


def _plain(target: Target, obj: Any) -> JsonDict:
    data: JsonDict = target.api.sanitize_for_serialization(obj)
    return data


# ----------------------------------------------------------------------------- objects


def worker_deployment(target: Target) -> JsonDict:
    with api_errors("list deployments", target):
        found = client.AppsV1Api(target.api).list_namespaced_deployment(
            target.namespace, label_selector=target.selector
        )
    items = _plain(target, found).get("items") or []
    if not items:
        raise OpsError(
            f"release {target.release!r} has no worker Deployment in namespace "
            f"{target.namespace!r} (looked for labels {target.selector}); check --release "
            "and --namespace"
        )
    if len(items) > 1:
        names = ", ".join(i["metadata"]["name"] for i in items)
        raise OpsError(f"several worker Deployments match {target.selector}: {names}")
    item: JsonDict = items[0]
    return item


def scaled_object(target: Target, deployment: str) -> JsonDict | None:
    """The ScaledObject that scales the Deployment; None when KEDA is off or not installed."""
    api = client.CustomObjectsApi(target.api)
    with api_errors("list scaledobjects", target):
        try:
            found = api.list_namespaced_custom_object(*KEDA[:2], target.namespace, KEDA[2])
        except ApiException as exc:
            if exc.status == 404:  # the CRD is not served: KEDA is not installed
                return None
            raise
    items: list[JsonDict] = found.get("items") or []
    for item in items:
        ref = (item.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("name") == deployment and ref.get("kind", "Deployment") == "Deployment":
            return item
    return None


def hpas_for(target: Target, deployment: str) -> list[JsonDict]:
    """Every HPA whose scaleTargetRef is the Deployment (KEDA's and any hand-made one)."""
    with api_errors("list horizontalpodautoscalers", target):
        found = client.AutoscalingV2Api(target.api).list_namespaced_horizontal_pod_autoscaler(
            target.namespace
        )
    items = _plain(target, found).get("items") or []
    return [
        h
        for h in items
        if (h.get("spec") or {}).get("scaleTargetRef", {}).get("name") == deployment
        and (h.get("spec") or {}).get("scaleTargetRef", {}).get("kind") == "Deployment"
    ]


def keda_hpa(target: Target, so: Mapping[str, Any]) -> JsonDict | None:
    name = (so.get("status") or {}).get("hpaName") or f"keda-hpa-{so['metadata']['name']}"
    with api_errors(f"get horizontalpodautoscaler {name}", target):
        try:
            found = client.AutoscalingV2Api(target.api).read_namespaced_horizontal_pod_autoscaler(
                name, target.namespace
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
    return _plain(target, found)


def patch_annotations(target: Target, so_name: str, annotations: Mapping[str, str | None]) -> None:
    body = {"metadata": {"annotations": dict(annotations)}}
    with api_errors(f"patch scaledobject {so_name}", target):
        client.CustomObjectsApi(target.api).patch_namespaced_custom_object(
            *KEDA[:2], target.namespace, KEDA[2], so_name, body
        )


def scale_deployment(target: Target, name: str, replicas: int) -> None:
    with api_errors(f"patch deployments/scale {name}", target):
        client.AppsV1Api(target.api).patch_namespaced_deployment_scale(
            name, target.namespace, {"spec": {"replicas": replicas}}
        )


# ----------------------------------------------------------------------------- ScaledObject


@dataclass(frozen=True)
class Keda:
    name: str
    min_replicas: int
    max_replicas: int
    target: float
    polling_interval: int
    formula: str | None
    triggers: dict[str, str]  # trigger name -> Redis key (listName)
    paused_replicas: int | None
    paused: bool

    @classmethod
    def parse(cls, so: Mapping[str, Any]) -> Keda:
        spec = so.get("spec") or {}
        annotations = (so.get("metadata") or {}).get("annotations") or {}
        modifiers = (spec.get("advanced") or {}).get("scalingModifiers") or {}
        triggers: dict[str, str] = {}
        first_target: float | None = None
        for i, trig in enumerate(spec.get("triggers") or []):
            meta = trig.get("metadata") or {}
            if trig.get("type") in ("redis", "redis-cluster", "redis-sentinel"):
                triggers[str(trig.get("name") or f"trigger{i}")] = str(meta.get("listName", ""))
                if first_target is None and meta.get("listLength") is not None:
                    first_target = float(meta["listLength"])
        target = modifiers.get("target")
        paused_raw = annotations.get(PAUSED_REPLICAS)
        return cls(
            name=str(so["metadata"]["name"]),
            min_replicas=int(spec.get("minReplicaCount", 0)),
            max_replicas=int(spec.get("maxReplicaCount", 100)),
            target=float(target) if target is not None else (first_target or 5.0),
            polling_interval=int(spec.get("pollingInterval", 30)),
            formula=modifiers.get("formula"),
            triggers=triggers,
            paused_replicas=int(paused_raw) if paused_raw not in (None, "") else None,
            paused=str(annotations.get(PAUSED, "")).lower() == "true",
        )

    def desired(self, value: float) -> int:
        """KEDA's arithmetic: ceil(value / target) clamped to min/max (0 stays 0 only at min 0)."""
        wanted = math.ceil(value / self.target) if self.target > 0 else self.max_replicas
        return max(self.min_replicas, min(self.max_replicas, wanted))


_OPS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
_FUNCS: dict[str, Callable[..., float]] = {
    "max": max,
    "min": min,
    "abs": abs,
    "ceil": math.ceil,
    "floor": math.floor,
}


def evaluate_formula(formula: str, values: Mapping[str, float]) -> float:
    """Arithmetic subset of KEDA's expr-lang formulas: + - * /, parentheses, min/max/abs."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id not in values:
                raise ValueError(f"unknown trigger {node.id!r}")
            return float(values[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
            and not node.keywords
        ):
            return float(_FUNCS[node.func.id](*(ev(a) for a in node.args)))
        raise ValueError("only arithmetic on trigger names is understood here")

    return ev(ast.parse(formula, mode="eval"))
