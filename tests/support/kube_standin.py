"""A stand-in for the Kubernetes API server, for testing `condo-audit ops` without a cluster.

No cluster runs on the machines these tests run on, and the commands under test speak HTTP to
an API server through the official `kubernetes` client. This is a small real HTTP server on
loopback that serves the few endpoints those commands use, with the API server's URL layout,
JSON shapes and error bodies (Status objects), so the real client code runs unchanged:

- apps/v1 deployments (list, get, patch) and their /scale subresource (get, patch)
- autoscaling/v2 horizontalpodautoscalers (list, get)
- keda.sh/v1alpha1 scaledobjects (list, get, patch)

It is deliberately not a cluster: no controllers run. The one piece of controller behaviour it
imitates is KEDA making the HPA `keda-hpa-<scaledobject>` for each ScaledObject it is given,
since the chart renders ScaledObjects and KEDA, not the chart, makes the HPA. Objects come from
any list of manifests, normally the chart rendered by `helm template`.

It can refuse a (resource, verb) with 403 Forbidden to test RBAC errors, and can drop a
resource type altogether (404, as when KEDA's CRDs are not installed). Requests need the bearer
token of the kubeconfig it writes.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

TOKEN = "standin-token"

# plural -> (API path prefix, kind)
RESOURCES: dict[str, tuple[str, str]] = {
    "deployments": ("/apis/apps/v1", "Deployment"),
    "horizontalpodautoscalers": ("/apis/autoscaling/v2", "HorizontalPodAutoscaler"),
    "scaledobjects": ("/apis/keda.sh/v1alpha1", "ScaledObject"),
}
API_VERSION = {
    "deployments": "apps/v1",
    "horizontalpodautoscalers": "autoscaling/v2",
    "scaledobjects": "keda.sh/v1alpha1",
}
GROUP = {
    "deployments": "apps",
    "horizontalpodautoscalers": "autoscaling",
    "scaledobjects": "keda.sh",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; a null removes the key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class KubeStandin:
    """Holds objects of one namespace and serves them until stop()."""

    def __init__(self, namespace: str, manifests: Iterable[Mapping[str, Any]]) -> None:
        self.namespace = namespace
        self.objects: dict[str, dict[str, dict[str, Any]]] = {p: {} for p in RESOURCES}
        self.forbidden: set[tuple[str, str]] = set()  # (resource, verb)
        self.unserved: set[str] = set()  # resource types answered with 404
        self.requests: list[tuple[str, str, str]] = []  # (method, path, content type)
        self.patches: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._version = 1
        for m in manifests:
            self.add(m)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ objects

    def add(self, manifest: Mapping[str, Any]) -> None:
        kind = manifest.get("kind")
        plural = next((p for p, (_, k) in RESOURCES.items() if k == kind), None)
        if plural is None:
            return
        obj = copy.deepcopy(dict(manifest))
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", self.namespace)
        if meta["namespace"] != self.namespace:
            return
        meta.setdefault("uid", f"uid-{plural}-{meta['name']}")
        meta["resourceVersion"] = self._next_version()
        if plural == "deployments":
            obj.setdefault("spec", {}).setdefault("replicas", 1)  # the API server's default
            self._settle(obj)
        self.objects[plural][meta["name"]] = obj
        if plural == "scaledobjects":
            self._make_keda_hpa(obj)

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self.objects[plural][name]

    def set_ready(self, deployment: str, ready: int) -> None:
        with self._lock:
            self.objects["deployments"][deployment]["status"]["readyReplicas"] = ready

    def set_hpa_metric(self, name: str, average_value: str, current: int, desired: int) -> None:
        """What the HPA controller would write after a sync with this metric."""
        with self._lock:
            hpa = self.objects["horizontalpodautoscalers"][name]
            metric = hpa["spec"]["metrics"][0]["external"]["metric"]
            hpa["status"].update(
                currentReplicas=current,
                desiredReplicas=desired,
                currentMetrics=[
                    {
                        "type": "External",
                        "external": {"metric": metric, "current": {"averageValue": average_value}},
                    }
                ],
            )

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _settle(self, dep: dict[str, Any]) -> None:
        """Pretend the ReplicaSet caught up, unless a test set readiness itself."""
        replicas = dep["spec"]["replicas"]
        status = dep.setdefault("status", {})
        status.update(
            replicas=replicas,
            updatedReplicas=replicas,
            availableReplicas=replicas,
            readyReplicas=replicas,
            observedGeneration=1,
        )

    def _make_keda_hpa(self, so: Mapping[str, Any]) -> None:
        spec = so.get("spec") or {}
        modifiers = (spec.get("advanced") or {}).get("scalingModifiers") or {}
        behavior = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get(
            "behavior"
        )
        name = f"keda-hpa-{so['metadata']['name']}"
        target = str(modifiers.get("target") or "5")
        hpa: dict[str, Any] = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "uid": f"uid-hpa-{name}",
                "resourceVersion": self._next_version(),
                "labels": {"scaledobject.keda.sh/name": so["metadata"]["name"]},
            },
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", **spec["scaleTargetRef"]},
                "minReplicas": max(1, int(spec.get("minReplicaCount", 0))),
                "maxReplicas": int(spec.get("maxReplicaCount", 100)),
                "metrics": [
                    {
                        "type": "External",
                        "external": {
                            "metric": {"name": "s0-composite-metric" if modifiers else "s0-redis"},
                            "target": {"type": "AverageValue", "averageValue": target},
                        },
                    }
                ],
            },
            "status": {"currentReplicas": 1, "desiredReplicas": 1},
        }
        if behavior:
            hpa["spec"]["behavior"] = behavior
        self.objects["horizontalpodautoscalers"][name] = hpa

    # ------------------------------------------------------------------ server

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> KubeStandin:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def write_kubeconfig(self, path: Path, namespace: str | None = None) -> Path:
        """A kubeconfig whose current context points at this server with its token."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "ops", "user": {"token": TOKEN}}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {
                        "cluster": "standin",
                        "user": "ops",
                        "namespace": namespace or self.namespace,
                    },
                }
            ],
            "current-context": "standin",
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    # ------------------------------------------------------------------ requests

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, list[str]],
        ctype: str,
        body: bytes,
        auth: str | None,
    ) -> tuple[int, dict[str, Any]]:
        self.requests.append((method, path, ctype))
        if auth != f"Bearer {TOKEN}":
            return 401, _status(401, "Unauthorized", "Unauthorized")
        parts = path.strip("/").split("/")
        route = self._route(parts)
        if route is None:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        plural, ns, name, sub = route
        if plural in self.unserved:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        verb = {"GET": "get" if name else "list", "PATCH": "patch"}.get(method)
        if verb is None:
            return 405, _status(405, "MethodNotAllowed", f"{method} is not served here")
        resource = f"{plural}/{sub}" if sub else plural
        if (resource, verb) in self.forbidden:
            quoted = f' "{name}"' if name else ""
            return 403, _status(
                403,
                "Forbidden",
                f"{plural}.{GROUP[plural]}{quoted} is forbidden: "
                f'User "system:serviceaccount:{ns}:ops" cannot {verb} resource "{resource}" '
                f'in API group "{GROUP[plural]}" in the namespace "{ns}"',
            )
        with self._lock:
            store = self.objects[plural] if ns == self.namespace else {}
            if name is None:
                items = [o for o in store.values() if _matches(o, query.get("labelSelector"))]
                return 200, {
                    "apiVersion": API_VERSION[plural],
                    "kind": RESOURCES[plural][1] + "List",
                    "metadata": {"resourceVersion": str(self._version)},
                    "items": copy.deepcopy(items),
                }
            if name not in store:
                return 404, _status(404, "NotFound", f'{plural}.{GROUP[plural]} "{name}" not found')
            obj = store[name]
            if method == "PATCH":
                try:
                    patch = json.loads(body)
                except ValueError:
                    return 400, _status(400, "BadRequest", "the patch is not JSON")
                if isinstance(patch, list) or "json-patch" in ctype:
                    return 415, _status(415, "UnsupportedMediaType", "only merge patches here")
                self.patches.append((resource, patch))
                if sub == "scale":
                    replicas = (patch.get("spec") or {}).get("replicas")
                    if replicas is not None:
                        obj["spec"]["replicas"] = int(replicas)
                        self._settle(obj)
                else:
                    patched = merge_patch(obj, patch)
                    obj.clear()
                    obj.update(patched)
                    if plural == "deployments":
                        self._settle(obj)
                obj["metadata"]["resourceVersion"] = self._next_version()
            if sub == "scale":
                return 200, _scale_of(obj)
            return 200, copy.deepcopy(obj)

    def _route(self, parts: list[str]) -> tuple[str, str, str | None, str | None] | None:
        for plural, (prefix, _kind) in RESOURCES.items():
            pre = prefix.strip("/").split("/")
            if parts[: len(pre)] != pre:
                continue
            rest = parts[len(pre) :]
            if len(rest) < 3 or rest[0] != "namespaces" or rest[2] != plural:
                continue
            name = rest[3] if len(rest) > 3 else None
            sub = rest[4] if len(rest) > 4 else None
            if sub is not None and (plural != "deployments" or sub != "scale" or len(rest) > 5):
                return None
            return plural, rest[1], name, sub
        return None


def _scale_of(dep: Mapping[str, Any]) -> dict[str, Any]:
    labels = (dep["spec"].get("selector") or {}).get("matchLabels") or {}
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": dep["metadata"]["name"],
            "namespace": dep["metadata"]["namespace"],
            "resourceVersion": dep["metadata"]["resourceVersion"],
        },
        "spec": {"replicas": dep["spec"]["replicas"]},
        "status": {
            "replicas": dep["status"]["replicas"],
            "selector": ",".join(f"{k}={v}" for k, v in labels.items()),
        },
    }


def _matches(obj: Mapping[str, Any], selector: list[str] | None) -> bool:
    """Equality-based label selectors (k=v,k2=v2), the only kind the ops commands send."""
    if not selector:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in selector[0].split(","):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip().lstrip("="):
            return False
    return True


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _handler(standin: KubeStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            code, payload = standin.handle(
                self.command,
                split.path,
                parse_qs(split.query),
                self.headers.get("Content-Type", ""),
                body,
                self.headers.get("Authorization"),
            )
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _serve
        do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


# ----------------------------------------------------------------------------- the chart's objects
#
# The stand-in serves the chart's own objects, rendered by `helm template` when the helm binary
# and the chart are present (helm on PATH, $HELM, or ./.tools/bin/helm from
# scripts/install-helm-kubectl.sh; $OPS_TEST_CHART points at another chart directory). Without
# them the tests fall back to FALLBACK_MANIFESTS, a hand-copied subset of the chart's worker
# Deployment and ScaledObject, and say which they used.

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "ops-test"
NAMESPACE = "ops-ns"
WORKER = f"{RELEASE}-condo-audit-worker"

FALLBACK_MANIFESTS = f"""
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {RELEASE}-condo-audit-api
  labels: {{app.kubernetes.io/instance: {RELEASE}, app.kubernetes.io/component: api}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app.kubernetes.io/instance: {RELEASE},
                            app.kubernetes.io/component: api}}}}
  template:
    metadata: {{labels: {{app.kubernetes.io/instance: {RELEASE},
                         app.kubernetes.io/component: api}}}}
    spec: {{containers: [{{name: api, image: condo-audit:0.1.0}}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {WORKER}
  labels: {{app.kubernetes.io/instance: {RELEASE}, app.kubernetes.io/component: worker}}
spec:
  selector: {{matchLabels: {{app.kubernetes.io/instance: {RELEASE},
                            app.kubernetes.io/component: worker}}}}
  template:
    metadata: {{labels: {{app.kubernetes.io/instance: {RELEASE},
                         app.kubernetes.io/component: worker}}}}
    spec: {{containers: [{{name: worker, image: condo-audit:0.1.0}}]}}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {WORKER}
  labels: {{app.kubernetes.io/instance: {RELEASE}, app.kubernetes.io/component: worker}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {WORKER}}}
  pollingInterval: 15
  cooldownPeriod: 300
  minReplicaCount: 1
  maxReplicaCount: 20
  advanced:
    scalingModifiers: {{formula: "backlog + queued + inflight", target: "4",
                       activationTarget: "0", metricType: AverageValue}}
  triggers:
    - {{type: redis, name: backlog, metadata: {{listName: "audit:fair:pending", listLength: "4"}}}}
    - {{type: redis, name: queued, metadata: {{listName: audit, listLength: "4"}}}}
    - {{type: redis, name: inflight, metadata: {{listName: unacked, listLength: "4"}}}}
"""


def helm_binary() -> str | None:
    for candidate in (os.environ.get("HELM"), shutil.which("helm"), str(ROOT / ".tools/bin/helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def chart_dir() -> Path | None:
    chart = Path(os.environ.get("OPS_TEST_CHART") or ROOT / "helm" / "condo-audit")
    return chart if (chart / "templates").is_dir() else None


def chart_objects(*, keda: bool = True) -> tuple[list[dict[str, Any]], str]:
    """The objects the chart renders for RELEASE, and where they came from."""
    helm, chart = helm_binary(), chart_dir()
    if helm and chart:
        cmd = [helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE]
        if not keda:
            cmd += ["--set", "keda.enabled=false"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        return docs, f"helm template {chart}"
    docs = [d for d in yaml.safe_load_all(FALLBACK_MANIFESTS) if d]
    if not keda:
        docs = [d for d in docs if d["kind"] != "ScaledObject"]
        for d in docs:
            if d["metadata"]["name"] == WORKER:
                d["spec"]["replicas"] = 2
    missing = "helm binary" if not helm else "chart templates"
    return docs, f"fallback manifests in tests/ops_support.py (no {missing})"
