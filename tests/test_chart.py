"""The Helm chart, k8s/ and docker/ as a user of `helm install` or `kubectl apply` meets them.

Each scenario (defaults, external Redis and database, KEDA off, production sizing, the values
behind k8s/) is linted strictly, rendered, validated against Kubernetes 1.29+ and KEDA CRD
schemas, and checked for the properties the platform relies on: one queue name, the
queued + in-flight formula, a grace period longer than the longest task, no credentials
outside Secrets.
"""

from __future__ import annotations

import base64
import filecmp
import math
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from audit.fairqueue import pending_key
from tests.support import charts as cs
from tests.support.charts import Obj

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate (PyPI) carries the Kubernetes schemas"
)

SCENARIOS = list(cs.SCENARIOS)
APP_COMPONENTS = ("api", "worker")
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
# Prometheus Operator CRDs ship no offline schema here; checked by hand below.
KINDS_WITHOUT_SCHEMA = {"ServiceMonitor", "PrometheusRule"}


@pytest.fixture(scope="session", autouse=True)
def _helm() -> str:
    try:
        return cs.helm_binary()
    except cs.HelmUnavailable as exc:
        pytest.skip(f"helm cannot be installed here: {exc}")


@pytest.fixture(scope="module", params=SCENARIOS)
def scenario(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def objects(scenario: str) -> list[Obj]:
    return cs.render(scenario)


def scenario_values(scenario: str) -> dict[str, Any]:
    """The chart's defaults with the scenario's file merged over them."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    values: dict[str, Any] = yaml.safe_load((cs.CHART_DIR / "values.yaml").read_text())
    file = cs.SCENARIOS[scenario]
    if file:
        values = merge(values, yaml.safe_load((cs.CI_DIR / file).read_text()))
    return values


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]


# ---------- lint and schemas ----------


def test_helm_lint_strict(scenario: str) -> None:
    proc = cs.run_helm(
        "lint", "--strict", str(cs.CHART_DIR), *cs.values_args(scenario), check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_objects_validate_against_kubernetes_schemas(objects: list[Obj], kube_version: str) -> None:
    checked = 0
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/") or obj["kind"] in KINDS_WITHOUT_SCHEMA:
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {exc.message}")
        checked += 1
    assert checked >= 10


def test_strict_schema_validation_rejects_a_stray_field() -> None:
    """Guards the test above: a misspelt field must fail, or that test proves nothing."""
    deployment = cs.one(cs.render("defaults"), "Deployment", "api")
    cs.pod_spec(deployment)["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


def test_keda_objects_validate_against_crd_schemas(scenario: str, objects: list[Obj]) -> None:
    keda = [o for o in objects if o["apiVersion"].startswith("keda.sh/")]
    if scenario in ("keda-off", "podman"):  # podman.yaml: fixed replicas, no KEDA
        assert keda == []
        return
    assert {o["kind"] for o in keda} == {"ScaledObject", "TriggerAuthentication"}
    for obj in keda:
        cs.validate_keda(obj)


def test_keda_validation_rejects_a_misspelt_field() -> None:
    scaled = cs.one(cs.render("defaults"), "ScaledObject", "worker")
    scaled["spec"]["advanced"]["scalingModifier"] = scaled["spec"]["advanced"].pop(
        "scalingModifiers"
    )
    with pytest.raises(AssertionError, match="scalingModifier"):
        cs.validate_keda(scaled)


def test_service_monitors_point_at_named_service_ports(objects: list[Obj]) -> None:
    monitors = cs.by_kind(objects, "ServiceMonitor")
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [
            s
            for s in cs.by_kind(objects, "Service")
            if selector.items() <= s["metadata"]["labels"].items()
        ]
        assert len(services) == 1, monitor["metadata"]["name"]
        port_names = {p["name"] for p in services[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"


def test_the_prometheus_rule_carries_the_platform_alerts() -> None:
    assert cs.by_kind(cs.render("defaults"), "PrometheusRule") == []
    rule = cs.one(
        cs.render("defaults", "metrics.prometheusRule.enabled=true"), "PrometheusRule", "alerts"
    )
    alerts_file = cs.REPO_ROOT / "helm" / "condo-audit" / "files" / "prometheus-alerts.yaml"
    assert rule["spec"] == yaml.safe_load(alerts_file.read_text())
    names = {r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {"CondoAuditDeadLettersGrowing", "CondoAuditProvider429s"} <= names


def test_a_cronjob_requeues_batches_the_broker_lost(objects: list[Obj]) -> None:
    [cron] = [
        c for c in cs.by_kind(objects, "CronJob") if c["metadata"]["name"].endswith("requeue-lost")
    ]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [ctr] = pod["containers"]
    assert ctr["command"][:3] == ["condo-audit", "batches", "requeue-lost"]
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    names = set(cs.env_of(ctr))
    assert {"REDIS_URL", "DATABASE_URL"} <= names


def test_prefork_workers_share_a_metrics_directory(objects: list[Obj]) -> None:
    worker = cs.container(cs.one(objects, "Deployment", "worker"), "worker")
    directory = cs.env_of(worker)["PROMETHEUS_MULTIPROC_DIR"]["value"]
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert any(directory.startswith(mount + "/") for mount in mounts), (directory, mounts)


# ---------- labels ----------


def test_every_object_carries_the_recommended_labels(objects: list[Obj]) -> None:
    required = {
        "app.kubernetes.io/name": "condo-audit",
        "app.kubernetes.io/instance": cs.RELEASE,
        "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/part-of": "condo-audit",
    }
    for obj in objects:
        labels = obj["metadata"]["labels"]
        for key, value in required.items():
            assert labels.get(key) == value, f"{obj['kind']}/{obj['metadata']['name']}: {key}"
        assert labels.get("app.kubernetes.io/version")
        assert labels.get("app.kubernetes.io/component")
        assert obj["metadata"]["namespace"] == cs.NAMESPACE


def test_workload_selectors_match_their_pods_and_services_find_them(objects: list[Obj]) -> None:
    for obj in workloads(objects):
        pod_labels = obj["spec"]["template"]["metadata"]["labels"]
        if obj["kind"] != "Job":
            assert obj["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    pods = [o["spec"]["template"]["metadata"]["labels"] for o in workloads(objects)]
    for service in cs.by_kind(objects, "Service"):
        selected = [p for p in pods if service["spec"]["selector"].items() <= p.items()]
        assert len(selected) == 1, f"service {service['metadata']['name']} selects {selected}"


# ---------- probes ----------


def test_api_probes_use_healthz_and_readyz(objects: list[Obj]) -> None:
    api = cs.container(cs.one(objects, "Deployment", "api"), "api")
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert ports == {"http": 8000}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert api[probe]["httpGet"]["port"] == "http"
    assert api["command"][:2] == ["uvicorn", "api.main:app"]
    assert api["command"][api["command"].index("--port") + 1] == "8000"


def test_worker_probes_check_the_heartbeat_file(objects: list[Obj]) -> None:
    worker = cs.container(cs.one(objects, "Deployment", "worker"), "worker")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = worker[probe]["exec"]["command"]
        assert command[:2] == ["/bin/sh", "-c"]
        assert "WORKER_HEARTBEAT_FILE" in command[2]
    config = cs.one(objects, "ConfigMap", "config")["data"]
    assert config["WORKER_HEARTBEAT_FILE"].startswith("/tmp/")
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    pod = cs.pod_spec(cs.one(objects, "Deployment", "worker"))
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "the heartbeat needs a writable /tmp"


def test_worker_heartbeat_probe_passes_fresh_and_fails_stale_files(tmp_path: Path) -> None:
    """Runs the rendered probe command in a real shell against a real file."""
    worker = cs.container(cs.one(cs.render("defaults"), "Deployment", "worker"), "worker")
    command = worker["livenessProbe"]["exec"]["command"]
    heartbeat = tmp_path / "heartbeat"

    def probe() -> int:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "WORKER_HEARTBEAT_FILE": str(heartbeat),
        }
        return subprocess.run(command, env=env, timeout=10, check=False).returncode

    assert probe() != 0, "missing heartbeat file must fail"
    heartbeat.touch()
    assert probe() == 0, "a fresh heartbeat must pass"
    stale = time.time() - 61
    os.utime(heartbeat, (stale, stale))
    assert probe() != 0, "a heartbeat older than heartbeatMaxAgeSeconds must fail"


def test_every_container_has_probes_and_resources(objects: list[Obj]) -> None:
    for obj in workloads(objects):
        for ctr in cs.pod_spec(obj)["containers"]:
            assert ctr["resources"]["requests"]["memory"]
            assert ctr["resources"]["limits"]["memory"]
            if obj["kind"] != "Job":
                probes = {"startupProbe", "livenessProbe", "readinessProbe"}
                assert probes <= ctr.keys(), ctr["name"]


# ---------- security ----------


def test_pods_run_non_root_read_only_without_capabilities(objects: list[Obj]) -> None:
    for obj in workloads(objects):
        spec = cs.pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["securityContext"].get("runAsUser", 1) != 0
        assert spec["automountServiceAccountToken"] is False
        for ctr in spec["containers"]:
            sc = ctr["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, ctr["name"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "add" not in sc["capabilities"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault"


def test_no_credentials_outside_secrets(scenario: str, objects: list[Obj]) -> None:
    """Every secret value the render holds appears in Secret objects only."""
    secret_values: set[str] = set()
    for secret in cs.by_kind(objects, "Secret"):
        for value in (secret.get("data") or {}).values():
            decoded = base64.b64decode(value).decode()
            secret_values.add(decoded)
            # A URL's password alone must not leak either.
            match = re.match(r"^[a-z+]+://[^:]*:([^@]+)@", decoded)
            if match:
                secret_values.add(match.group(1))
    if scenario == "external":
        assert "ci-external-redis-password" in secret_values  # the test sees real secrets
    for obj in objects:
        if obj["kind"] == "Secret":
            continue
        text = yaml.safe_dump(obj)
        for value in secret_values:
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            assert value not in text, f"a secret value leaks into {where}"
    notes = cs.render_notes(scenario)
    assert notes
    for value in secret_values:
        assert value not in notes, "NOTES.txt prints a credential"


def test_config_maps_hold_no_credential_keys(objects: list[Obj]) -> None:
    for cm in cs.by_kind(objects, "ConfigMap"):
        for key, value in cm["data"].items():
            assert not re.search(r"PASSWORD|SECRET|TOKEN|REDIS_URL|DATABASE_URL", key), key
            leak = re.search(r"requirepass|://[^/\s]*:[^@\s]*@", value)
            assert not leak, f"{key} in {cm['metadata']['name']}"


def test_connection_urls_are_composed_from_secret_env(objects: list[Obj]) -> None:
    for component in APP_COMPONENTS:
        env = cs.env_of(cs.container(cs.one(objects, "Deployment", component), component))
        names = list(env)
        assert "secretKeyRef" in env["REDIS_PASSWORD"]["valueFrom"]
        assert "$(REDIS_PASSWORD)@" in env["REDIS_URL"]["value"]
        assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL"), "$(VAR) needs order"
        if "DATABASE_PASSWORD" in env:
            assert names.index("DATABASE_PASSWORD") < names.index("DATABASE_URL")
            assert "$(DATABASE_PASSWORD)@" in env["DATABASE_URL"]["value"]
        else:
            assert "secretKeyRef" in env["DATABASE_URL"]["valueFrom"]
        for name in ("CNPJWS_TOKEN", "PLUGGY_CLIENT_SECRET"):
            assert "secretKeyRef" in env[name]["valueFrom"]


def test_network_policies_expose_only_the_api(scenario: str, objects: list[Obj]) -> None:
    policies = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p
        for p in cs.by_kind(objects, "NetworkPolicy")
    }
    values = scenario_values(scenario)
    expected = (
        {"api", "worker"}
        | ({"redis"} if values["redis"]["enabled"] else set())
        | ({"postgresql"} if values["postgresql"]["enabled"] else set())
    )
    assert set(policies) == expected
    api_rule = policies["api"]["spec"]["ingress"]
    assert len(api_rule) == 1
    assert "from" not in api_rule[0], "the API is reachable from anywhere"
    release_pods = {
        "app.kubernetes.io/name": "condo-audit",
        "app.kubernetes.io/instance": cs.RELEASE,
    }
    for component in ("redis", "postgresql"):
        if component not in policies:
            continue
        (rule,) = policies[component]["spec"]["ingress"]
        peers = rule["from"]
        assert peers[0] == {"podSelector": {"matchLabels": release_pods}}
        for peer in peers[1:]:
            assert peer == {
                "namespaceSelector": {
                    "matchLabels": {
                        "kubernetes.io/metadata.name": values["networkPolicy"]["kedaNamespace"]
                    }
                }
            }
        if component == "redis" and values["keda"]["enabled"]:
            assert len(peers) == 2, "the KEDA operator must reach Redis to read the queue"
        if component == "postgresql":
            assert len(peers) == 1
    (worker_rule,) = policies["worker"]["spec"]["ingress"]
    assert worker_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]


# ---------- the queue, KEDA and the formula ----------


def test_queue_name_is_one_value_in_config_worker_and_trigger(scenario: str) -> None:
    for queue in (None, "audit-prod"):
        objects = cs.render(scenario, *([f"config.auditQueue={queue}"] if queue else []))
        expected = queue or scenario_values(scenario)["config"]["auditQueue"]
        assert cs.one(objects, "ConfigMap", "config")["data"]["AUDIT_QUEUE"] == expected
        command = cs.container(cs.one(objects, "Deployment", "worker"), "worker")["command"]
        assert command[command.index("-Q") + 1] == expected
        for scaled in cs.by_kind(objects, "ScaledObject"):
            if scaled["metadata"]["labels"]["app.kubernetes.io/component"] != "worker":
                continue  # the webhooks ScaledObject reads the webhooks queue
            names = {t["name"]: t["metadata"]["listName"] for t in scaled["spec"]["triggers"]}
            assert names["queued"] == expected
            assert names["backlog"] == pending_key(expected)


def test_scaled_object_sums_backlog_queued_and_inflight(scenario: str, objects: list[Obj]) -> None:
    values = scenario_values(scenario)
    scaled_objects = cs.by_kind(objects, "ScaledObject")
    if not values["keda"]["enabled"]:
        assert scaled_objects == []
        return
    assert len(scaled_objects) == 2  # the workers and the webhooks Deployment
    scaled = cs.one(objects, "ScaledObject", "worker")
    spec = scaled["spec"]
    modifiers = spec["advanced"]["scalingModifiers"]
    assert modifiers["formula"] == "backlog + queued + inflight"
    assert modifiers["metricType"] == "AverageValue"
    target = values["worker"]["concurrency"] * values["keda"]["tasksPerSlot"]
    assert modifiers["target"] == str(target)

    triggers = {t["name"]: t for t in spec["triggers"]}
    assert set(triggers) == {"backlog", "queued", "inflight"}
    assert all(t["type"] == "redis" for t in triggers.values())
    assert triggers["inflight"]["metadata"]["listName"] == "unacked"
    queue = values["config"]["auditQueue"]
    assert triggers["backlog"]["metadata"]["listName"] == pending_key(queue)
    for trigger in triggers.values():
        meta = trigger["metadata"]
        assert meta["listLength"] == str(target)
        assert "password" not in meta
        assert "passwordFromEnv" not in meta
        assert trigger["authenticationRef"]["name"]
    addresses = {t["metadata"]["address"] for t in triggers.values()}
    assert addresses == {triggers["queued"]["metadata"]["address"]}
    assert len({t["metadata"]["databaseIndex"] for t in triggers.values()}) == 1

    # The trigger reads the same Redis, database and password the worker uses.
    worker = cs.container(cs.one(objects, "Deployment", "worker"), "worker")
    env = cs.env_of(worker)
    redis_url = env["REDIS_URL"]["value"]
    host_port_db = re.match(r"^(rediss?)://:\$\(REDIS_PASSWORD\)@([^/]+)/(\d+)$", redis_url)
    assert host_port_db, redis_url
    assert triggers["queued"]["metadata"]["address"] == host_port_db.group(2)
    assert triggers["queued"]["metadata"]["databaseIndex"] == host_port_db.group(3)
    tls = str(host_port_db.group(1) == "rediss").lower()
    assert triggers["queued"]["metadata"]["enableTLS"] == tls
    (auth,) = cs.by_kind(objects, "TriggerAuthentication")
    assert {t["authenticationRef"]["name"] for t in triggers.values()} == {auth["metadata"]["name"]}
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "password"
    secret_ref = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert {"name": ref["name"], "key": ref["key"]} == secret_ref

    worker_name = cs.one(objects, "Deployment", "worker")["metadata"]["name"]
    assert spec["scaleTargetRef"]["name"] == worker_name
    assert spec["minReplicaCount"] == values["keda"]["minReplicaCount"]
    assert spec["maxReplicaCount"] == values["keda"]["maxReplicaCount"]
    assert spec["pollingInterval"] == values["keda"]["pollingInterval"]
    assert spec["fallback"]["replicas"] == values["keda"]["fallback"]["replicas"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60


def test_scaling_target_follows_worker_concurrency() -> None:
    objects = cs.render("defaults", "worker.concurrency=6", "keda.tasksPerSlot=2")
    scaled = cs.one(objects, "ScaledObject", "worker")
    assert scaled["spec"]["advanced"]["scalingModifiers"]["target"] == "12"
    command = cs.container(cs.one(objects, "Deployment", "worker"), "worker")["command"]
    assert command[command.index("--concurrency") + 1] == "6"
    # What the HPA then computes for 30 outstanding tasks: ceil(30 / 12) = 3 pods.
    assert math.ceil(30 / int(scaled["spec"]["advanced"]["scalingModifiers"]["target"])) == 3


def test_keda_off_renders_a_plain_replica_count() -> None:
    objects = cs.render("keda-off")
    assert cs.by_kind(objects, "ScaledObject") == []
    assert cs.by_kind(objects, "TriggerAuthentication") == []
    assert cs.one(objects, "Deployment", "worker")["spec"]["replicas"] == 3


def test_keda_on_leaves_the_replica_count_to_the_hpa() -> None:
    worker = cs.one(cs.render("defaults"), "Deployment", "worker")
    assert "replicas" not in worker["spec"], "a fixed count would fight KEDA's HPA on upgrade"


# ---------- graceful scale-in ----------


def test_worker_grace_period_exceeds_the_longest_task(scenario: str, objects: list[Obj]) -> None:
    values = scenario_values(scenario)
    worker = cs.one(objects, "Deployment", "worker")
    grace = cs.pod_spec(worker)["terminationGracePeriodSeconds"]
    assert grace > values["worker"]["maxTaskSeconds"]
    assert grace >= values["worker"]["maxTaskSeconds"] + 10
    command = cs.container(worker, "worker")["command"]
    assert command[0] == "celery", "exec form: Celery must be PID 1 to receive SIGTERM"
    config = cs.one(objects, "ConfigMap", "config")["data"]
    visibility = int(config["BROKER_VISIBILITY_TIMEOUT_SECONDS"])
    assert visibility > values["worker"]["maxTaskSeconds"]


def test_grace_period_grows_with_max_task_seconds() -> None:
    worker = cs.one(cs.render("defaults", "worker.maxTaskSeconds=1800"), "Deployment", "worker")
    assert cs.pod_spec(worker)["terminationGracePeriodSeconds"] > 1800


def test_a_task_longer_than_the_visibility_timeout_is_refused() -> None:
    proc = cs.run_helm(
        "template", "x", str(cs.CHART_DIR), "--set", "worker.maxTaskSeconds=4000", check=False
    )
    assert proc.returncode != 0
    assert "brokerVisibilityTimeoutSeconds must exceed worker.maxTaskSeconds" in proc.stderr


def test_disruption_budgets_cover_api_and_workers(objects: list[Obj]) -> None:
    for component in APP_COMPONENTS:
        pdb = cs.one(objects, "PodDisruptionBudget", component)
        pods = cs.one(objects, "Deployment", component)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pods.items()
        assert pdb["spec"]["maxUnavailable"] >= 1


# ---------- Redis, database, migrations ----------


def test_bundled_redis_keeps_messages(scenario: str, objects: list[Obj]) -> None:
    if not scenario_values(scenario)["redis"]["enabled"]:
        assert cs.by_kind(objects, "StatefulSet") == [] or all(
            s["metadata"]["labels"]["app.kubernetes.io/component"] != "redis"
            for s in cs.by_kind(objects, "StatefulSet")
        )
        return
    conf = cs.one(objects, "ConfigMap", "redis")["data"]["redis.conf"]
    lines = [line for line in conf.splitlines() if line and not line.startswith("#")]
    settings = dict(line.split(None, 1) for line in lines)
    assert settings["appendonly"] == "yes"
    assert settings["maxmemory-policy"] == "noeviction"
    redis = cs.container(cs.one(objects, "StatefulSet", "redis"), "redis")
    assert redis["command"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert "secretKeyRef" in cs.env_of(redis)["REDIS_PASSWORD"]["valueFrom"]


def test_external_redis_and_database() -> None:
    objects = cs.render("external")
    components = {
        o["metadata"]["labels"]["app.kubernetes.io/component"] for o in workloads(objects)
    }
    assert components == {"api", "worker", "webhooks", "migrations"}
    env = cs.env_of(cs.container(cs.one(objects, "Deployment", "api"), "api"))
    assert env["REDIS_URL"]["value"] == "rediss://:$(REDIS_PASSWORD)@redis.example.internal:6380/2"
    scaled = cs.one(objects, "ScaledObject", "worker")
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["metadata"]["enableTLS"] == "true"
        assert trigger["metadata"]["databaseIndex"] == "2"


def test_migrations_run_as_hook_before_the_app(scenario: str, objects: list[Obj]) -> None:
    values = scenario_values(scenario)
    job = cs.one(objects, "Job", "migrations")
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert "pre-upgrade" in hooks
    # A bundled database does not exist before install, so its first migration runs right after.
    assert ("post-install" if values["postgresql"]["enabled"] else "pre-install") in hooks
    assert cs.container(job, "migrations")["command"] == ["condo-audit", "db", "upgrade"]
    assert "serviceAccountName" not in cs.pod_spec(job), "the chart's SA does not exist pre-install"
    db_env = cs.env_of(cs.container(job, "migrations"))["DATABASE_URL"]
    if not values["postgresql"]["enabled"] and not values["externalDatabase"]["existingSecret"]:
        # Its Secret must exist before the Job: a hook with a lower weight.
        secret = next(
            s
            for s in cs.by_kind(objects, "Secret")
            if s["metadata"]["name"] == db_env["valueFrom"]["secretKeyRef"]["name"]
        )
        annotations = secret["metadata"]["annotations"]
        assert "pre-install" in annotations["helm.sh/hook"]
        job_weight = int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
        assert int(annotations["helm.sh/hook-weight"]) < job_weight


# ---------- values, notes, plain manifests ----------


def test_values_schema_rejects_typos_and_bad_numbers() -> None:
    for bad in (
        "worker.concurency=4",
        "worker.concurrency=0",
        "config.auditQueue=unacked",
        "keda.tasksPerSlot=0",
        "config.logFormat=xml",
    ):
        proc = cs.run_helm("template", "x", str(cs.CHART_DIR), "--set", bad, check=False)
        assert proc.returncode != 0, f"{bad} was accepted"


def test_values_yaml_is_documented_line_by_line() -> None:
    import json

    schema = json.loads((cs.CHART_DIR / "values.schema.json").read_text())
    documented = cs.documented_keys((cs.CHART_DIR / "values.yaml").read_text())

    def leaves(node: dict[str, Any], path: str) -> list[str]:
        props = node.get("properties")
        if not props:
            return [path]
        return [
            leaf for key, sub in props.items() for leaf in leaves(sub, f"{path}.{key}".strip("."))
        ]

    missing = [p for p in leaves(schema, "") if p != "global" and not documented.get(p)]
    assert missing == [], f"values without a '# --' comment: {missing}"


def test_notes_say_how_to_reach_watch_and_pause() -> None:
    notes = cs.render_notes("defaults")
    assert "port-forward svc/condo-audit-api 8000:8000" in notes
    assert "get scaledobject condo-audit-worker" in notes
    assert 'autoscaling.keda.sh/paused-replicas="N"' in notes
    off = cs.render_notes("keda-off")
    assert "scale deployment condo-audit-worker" in off
    assert "paused-replicas" not in off


def test_k8s_manifests_match_a_fresh_render(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(cs.helm_binary()).parent}:{os.environ.get('PATH', '')}"}
    subprocess.run(
        ["bash", str(cs.REPO_ROOT / "scripts" / "render-k8s.sh"), str(tmp_path)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.yaml"))
    committed = sorted(p.relative_to(cs.K8S_DIR) for p in cs.K8S_DIR.rglob("*.yaml"))
    assert fresh == committed, "k8s/ is out of date: run scripts/render-k8s.sh"
    for rel in fresh:
        assert filecmp.cmp(tmp_path / rel, cs.K8S_DIR / rel, shallow=False), (
            f"k8s/{rel} drifted from the chart: run scripts/render-k8s.sh"
        )
    # The plain manifests carry no credentials: every Secret is created by the user.
    for rel in committed:
        for doc in yaml.safe_load_all((cs.K8S_DIR / rel).read_text()):
            assert not doc or doc["kind"] != "Secret", f"k8s/{rel} holds a Secret"


# ---------- docker ----------


def dockerfile_stages() -> list[list[str]]:
    stages: list[list[str]] = []
    text = (cs.REPO_ROOT / "docker" / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_pinned_and_non_root() -> None:
    text = (cs.REPO_ROOT / "docker" / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base.group(1)), "pin python:3.11.x-slim"
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")
    assert any("COPY --from=build" in line for line in final)
    final_text = "\n".join(final)
    tools = re.search(r"apt-get|build-essential|gcc|\bCOPY \. ", final_text)
    assert not tools, "no build tools or sources in the final image"
    assert not re.search(r"(?i)^(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN)", final_text, re.M)
    cmd = [line for line in final if line.upper().startswith("CMD ")]
    assert cmd
    assert cmd[-1].startswith('CMD ["uvicorn"'), "exec-form CMD"
    # The chart's runAsUser is the image's user.
    values = yaml.safe_load((cs.CHART_DIR / "values.yaml").read_text())
    pod_sc = values["podSecurityContext"]
    assert users[-1] == f"{pod_sc['runAsUser']}:{pod_sc['runAsGroup']}"


def test_compose_runs_api_worker_redis_postgres_and_migrations() -> None:
    compose = yaml.safe_load((cs.REPO_ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"api", "worker", "redis", "postgres", "migrations"} <= services.keys()
    assert "8000:8000" in services["api"]["ports"]
    assert "6379:6379" in services["redis"]["ports"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd
    assert "--maxmemory-policy noeviction" in redis_cmd
    assert services["worker"]["command"][:2] == ["celery", "-A"]
    assert services["migrations"]["command"] == ["condo-audit", "db", "upgrade"]
    for name in ("api", "worker"):
        condition = services[name]["depends_on"]["migrations"]["condition"]
        assert condition == "service_completed_successfully"
    grace = int(services["worker"]["stop_grace_period"].rstrip("s"))
    values = yaml.safe_load((cs.CHART_DIR / "values.yaml").read_text())
    assert grace > values["worker"]["maxTaskSeconds"]


# ---------- webhooks ----------


def test_webhooks_have_their_own_deployment_queue_and_scaler(scenario: str) -> None:
    """Deliveries never share a process with audits: the audit workers consume only the audit
    queue, a threads-pool Deployment consumes the webhooks queue, and KEDA counts that list."""
    objects = cs.render(scenario, "webhooks.queue=hooks-prod")
    values = scenario_values(scenario)
    config = cs.one(objects, "ConfigMap", "config")["data"]
    assert config["WEBHOOK_QUEUE"] == "hooks-prod"
    # Private receivers only where a values file asks (podman.yaml: a receiver on loopback).
    allowed = values.get("webhooks", {}).get("allowPrivateUrls", False)
    assert config["WEBHOOK_ALLOW_PRIVATE_URLS"] == str(allowed).lower()
    assert scenario == "podman" or not allowed
    worker = cs.container(cs.one(objects, "Deployment", "worker"), "worker")["command"]
    assert "hooks-prod" not in worker[worker.index("-Q") + 1]
    hooks = cs.container(cs.one(objects, "Deployment", "webhooks"), "webhooks")["command"]
    assert hooks[hooks.index("-Q") + 1] == "hooks-prod"
    assert hooks[hooks.index("--pool") + 1] == "threads"
    if values["keda"]["enabled"]:
        scaled = cs.one(objects, "ScaledObject", "webhooks")
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["metadata"]["listName"] == "hooks-prod"
        assert scaled["spec"]["minReplicaCount"] >= 1
        assert trigger["authenticationRef"]["name"]


def test_webhook_secret_keys_come_from_a_secret(scenario: str, objects: list[Obj]) -> None:
    import base64

    values = scenario_values(scenario)
    existing = values.get("webhooks", {}).get("secretKeys", {}).get("existingSecret")
    for component in ("api", "worker", "webhooks"):
        env = cs.env_of(cs.container(cs.one(objects, "Deployment", component), component))
        ref = env["WEBHOOK_SECRET_KEYS"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == (existing or "condo-audit-webhooks")
    generated = [
        s for s in cs.by_kind(objects, "Secret") if s["metadata"]["name"].endswith("webhooks")
    ]
    if existing:
        assert generated == []
        return
    (secret,) = generated
    key = base64.b64decode(secret["data"]["webhook-secret-keys"])
    assert len(base64.urlsafe_b64decode(key)) == 32  # a Fernet key
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_compose_runs_a_webhooks_worker_like_the_chart() -> None:
    compose = yaml.safe_load((cs.REPO_ROOT / "docker" / "compose.yaml").read_text())
    command = compose["services"]["webhooks"]["command"]
    values = yaml.safe_load((cs.CHART_DIR / "values.yaml").read_text())
    assert command[command.index("-Q") + 1] == values["webhooks"]["queue"]
    assert command[command.index("--pool") + 1] == "threads"
    worker = compose["services"]["worker"]["command"]
    assert worker[worker.index("-Q") + 1] == "audit"
    condition = compose["services"]["webhooks"]["depends_on"]["migrations"]["condition"]
    assert condition == "service_completed_successfully"
