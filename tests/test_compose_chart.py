"""docker/compose.yaml and the Helm chart run the same image the same way.

The chart is rendered with its defaults; each compose service is compared with the pod that
plays its role: the same environment variable names (and the same values where a value is not
a deployment's choice), the same commands, the same worker health check and grace period, the
same container hardening. Fast: one `helm template`, no containers.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.support import charts as cs
from tests.support.charts import Obj

COMPOSE = yaml.safe_load((cs.REPO_ROOT / "docker" / "compose.yaml").read_text(encoding="utf-8"))
SERVICES: dict[str, Any] = COMPOSE["services"]
# compose service -> (kind, chart component) of the pod in the same role.
ROLES = {
    "api": ("Deployment", "api"),
    "worker": ("Deployment", "worker"),
    "webhooks": ("Deployment", "webhooks"),
    "migrations": ("Job", "migrations"),
    "requeue-lost": ("CronJob", "maintenance"),
}
# Set in the chart only to compose REDIS_URL and DATABASE_URL with Kubernetes' $(VAR)
# expansion from Secrets; compose interpolates the passwords into the URLs itself.
CHART_ONLY = {"REDIS_PASSWORD", "DATABASE_PASSWORD"}
# Values that are the deployment's choice (hosts, log format for humans or collectors, tokens).
DEPLOYMENT_CHOICES = {
    "REDIS_URL",
    "DATABASE_URL",
    "LOG_FORMAT",
    "CNPJWS_BASE_URL",
    "MINHA_RECEITA_BASE_URL",
    "PLUGGY_BASE_URL",
    "CNPJWS_TOKEN",
    "PLUGGY_CLIENT_ID",
    "PLUGGY_CLIENT_SECRET",
}
# The API's Service/Ingress sits behind a proxy whose forwarded headers the chart trusts;
# compose publishes the port directly, so it must not trust them.
PROXY_OPTIONS = ["--proxy-headers", "--forwarded-allow-ips", "*"]


@pytest.fixture(scope="module")
def objects() -> list[Obj]:
    try:
        cs.helm_binary()
    except cs.HelmUnavailable as exc:
        pytest.skip(f"helm cannot be installed here: {exc}")
    return cs.render("defaults")


def chart_container(objects: list[Obj], service: str) -> Obj:
    kind, component = ROLES[service]
    obj = cs.one(objects, kind, component)
    spec = obj["spec"]
    if kind == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    containers: list[Obj] = spec["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def chart_env(objects: list[Obj], ctr: Obj) -> dict[str, str | None]:
    """Variable name -> literal value (None when it comes from a Secret)."""
    env: dict[str, str | None] = {}
    for source in ctr.get("envFrom", []):
        name = source["configMapRef"]["name"]
        config = next(o for o in cs.by_kind(objects, "ConfigMap") if o["metadata"]["name"] == name)
        env.update(config["data"])
    for item in ctr.get("env", []):
        env[item["name"]] = item.get("value")
    return env


@pytest.mark.parametrize("service", list(ROLES))
def test_compose_sets_the_variables_the_chart_sets(objects: list[Obj], service: str) -> None:
    chart = chart_env(objects, chart_container(objects, service))
    compose: dict[str, str] = SERVICES[service]["environment"]
    missing = set(chart) - CHART_ONLY - set(compose)
    assert not missing, f"compose {service} lacks what the chart sets: {sorted(missing)}"
    for name in set(chart) & set(compose) - DEPLOYMENT_CHOICES:
        if chart[name] is not None:
            assert str(compose[name]) == chart[name], f"{service}: {name} differs"


@pytest.mark.parametrize("service", ["api", "worker", "requeue-lost"])
def test_compose_sets_no_variable_the_chart_does_not(objects: list[Obj], service: str) -> None:
    chart = chart_env(objects, chart_container(objects, service))
    extra = set(SERVICES[service]["environment"]) - set(chart)
    assert not extra, f"compose {service} sets what the chart's pod does not: {sorted(extra)}"


def test_migrations_get_the_application_settings(objects: list[Obj]) -> None:
    # The chart's Job carries only what migrations read; compose's shares the app's settings.
    chart = chart_env(objects, chart_container(objects, "migrations"))
    assert set(chart) - CHART_ONLY <= set(SERVICES["migrations"]["environment"])


@pytest.mark.parametrize("service", list(ROLES))
def test_compose_runs_the_chart_s_command(objects: list[Obj], service: str) -> None:
    ctr = chart_container(objects, service)
    command = ctr["command"] + ctr.get("args", [])
    if service == "api":
        at = command.index(PROXY_OPTIONS[0])
        assert command[at : at + 3] == PROXY_OPTIONS
        command = command[:at] + command[at + 3 :]
    assert SERVICES[service]["command"] == command


@pytest.mark.parametrize("service", ["worker", "webhooks"])
def test_worker_health_check_and_grace_are_the_chart_s(objects: list[Obj], service: str) -> None:
    worker = chart_container(objects, service)
    probe = worker["livenessProbe"]["exec"]["command"]
    assert probe[:2] == ["/bin/sh", "-c"]
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    assert test[1].replace("$$", "$") == probe[2]
    deployment = cs.one(objects, "Deployment", service)
    grace = cs.pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert SERVICES[service]["stop_grace_period"] == f"{grace}s"


def test_api_health_check_is_the_chart_s_liveness_path(objects: list[Obj]) -> None:
    path = chart_container(objects, "api")["livenessProbe"]["httpGet"]["path"]
    assert f"127.0.0.1:8000{path}'" in " ".join(SERVICES["api"]["healthcheck"]["test"])


@pytest.mark.parametrize("service", list(ROLES))
def test_compose_hardens_like_the_chart(objects: list[Obj], service: str) -> None:
    sc = chart_container(objects, service)["securityContext"]
    svc = SERVICES[service]
    assert svc["read_only"] is sc["readOnlyRootFilesystem"] is True
    assert svc["cap_drop"] == sc["capabilities"]["drop"]
    assert sc["allowPrivilegeEscalation"] is False
    assert "no-new-privileges:true" in svc["security_opt"]
    mounts = [m["mountPath"] for m in chart_container(objects, service)["volumeMounts"]]
    assert svc["tmpfs"] == mounts
    assert svc["build"]["dockerfile"] == "docker/Dockerfile"
