"""`condo-audit ops status / pause / resume / scale / record` against a stand-in Kubernetes API.

No cluster runs where these tests run, so the Kubernetes API is tests/kube_standin.py: a small
real HTTP server on loopback serving the chart's rendered Deployment and ScaledObject (and the
HPA KEDA would make), reached by the official kubernetes client through a generated
kubeconfig. It is the only stand-in besides the provider simulator. Redis is a private
redis-server; dead letters live in a real SQLite database migrated with the project's
migrations.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import io
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from audit import models
from audit.db import session_scope, upgrade_database
from audit.fairqueue import FairQueue
from cli import ops
from cli.main import run
from tests.support.kube_standin import (
    NAMESPACE,
    RELEASE,
    WORKER,
    KubeStandin,
    chart_objects,
)

SO_NAME = WORKER  # the chart names the ScaledObject after the Deployment it scales
HPA_NAME = f"keda-hpa-{SO_NAME}"


# ----------------------------------------------------------------------------- helpers


def run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    """`condo-audit ops ...` in-process, parsed and dispatched the way cli.main does it.

    Only the ops module is registered, so these tests do not depend on the other commands.
    """
    parser = argparse.ArgumentParser(prog="condo-audit")
    ops.register(parser.add_subparsers(dest="command", required=True))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(parser.parse_args(list(argv)))
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own on a free port; never the shared one."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            "/usr/bin/redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def celery_message(eta: dt.datetime | None, retries: int = 0) -> str:
    """An entry of kombu's unacked hash: [message, exchange, routing_key], protocol 2 headers."""
    message = {
        "body": "W1tdLCB7fSwge31d",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": "audit.process_batch_expenses",
            "id": "x",
            "eta": eta.isoformat() if eta else None,
            "retries": retries,
        },
        "properties": {"delivery_tag": "t", "delivery_info": {"routing_key": "audit"}},
    }
    return json.dumps([message, "", "audit"])


def table(text: str) -> dict[str, str]:
    """The status table as {label: value} (labels and values are split by two spaces)."""
    rows = {}
    for line in text.splitlines():
        label, _, value = line.strip().partition("  ")
        rows[label.strip()] = value.strip()
    return rows


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rendered() -> tuple[list[dict[str, Any]], str]:
    docs, source = chart_objects(keda=True)
    print(f"Kubernetes objects from: {source}")
    return docs, source


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with private_redis() as url:
        yield url


@pytest.fixture
def queue(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    r.flushdb()  # our own server: nobody else's data
    yield r
    r.flushdb()


@pytest.fixture
def standin(rendered: tuple[list[dict[str, Any]], str]) -> Iterator[KubeStandin]:
    server = KubeStandin(NAMESPACE, rendered[0]).start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(standin: KubeStandin, tmp_path: Path) -> Path:
    return standin.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite database holding two OPEN dead letters and one replayed."""
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'ops.db'}"
    upgrade_database(url)
    with session_scope(url) as s:
        tenant = models.Tenant(name="t")
        s.add(tenant)
        s.flush()
        condo = models.Condominium(tenant_id=tenant.id, name="c")
        s.add(condo)
        s.flush()
        batch = models.Batch(tenant_id=tenant.id, condominium_id=condo.id)
        s.add(batch)
        s.flush()
        for status in ("OPEN", "OPEN", "REPLAYED"):
            s.add(
                models.DeadLetter(
                    batch_id=batch.id,
                    tenant_id=tenant.id,
                    task_name="audit.process_batch_expenses",
                    payload={},
                    error="provider down",
                    attempts=5,
                    status=status,
                )
            )
    return url


def cluster_args(kubeconfig: Path, *extra: str) -> list[str]:
    return ["--kubeconfig", str(kubeconfig), "--release", RELEASE, *extra]


# ----------------------------------------------------------------------------- status


def fill_queue(r: redis.Redis) -> None:
    """3 backlogged (2 of tenant-big, 1 of tenant-small); 3 queued; unacked: 2 running,
    1 whose eta has passed (running), 1 retry due in 10 min."""
    now = dt.datetime.now(dt.UTC)
    backlogs = FairQueue(r, "audit")
    for batch, tenant in (("b1", "tenant-big"), ("b2", "tenant-big"), ("b3", "tenant-small")):
        backlogs.push(batch, tenant, f"message-{batch}", ahead=0)
    r.lpush("audit", "m1", "m2", "m3")
    r.hset(
        "unacked",
        mapping={
            "tag-1": celery_message(None),
            "tag-2": celery_message(None),
            "tag-3": celery_message(now - dt.timedelta(seconds=30), retries=1),
            "tag-4": celery_message(now + dt.timedelta(minutes=10), retries=2),
        },
    )


def test_status_table_shows_replicas_keda_hpa_backlog_and_dead_letters(
    standin: KubeStandin,
    kubeconfig: Path,
    queue: redis.Redis,
    redis_url: str,
    database: str,
) -> None:
    fill_queue(queue)
    standin.set_hpa_metric(HPA_NAME, "1750m", current=1, desired=2)
    code, out, err = run_cli(
        [
            "ops",
            "status",
            *cluster_args(kubeconfig, "--redis-url", redis_url, "--database-url", database),
        ]
    )
    assert code == 0, err
    rows = table(out)
    assert rows["worker deployment"] == WORKER
    assert rows["replicas desired/ready"] == "1 / 1"
    assert rows["autoscaling"] == "KEDA"
    assert rows["scaledobject"] == SO_NAME
    assert rows["min / max"] == "1 / 20"  # the ScaledObject's, from the chart's values
    assert rows["target per replica"] == "4"
    assert rows["paused"] == "no"
    assert rows["hpa"] == HPA_NAME
    assert rows["metric (avg per pod)"] == "1.75 (target 4)"
    assert rows["backlog"] == "3 (2 tenants waiting their turn)"
    assert rows["top tenants by backlog"] == "tenant-big 2, tenant-small 1"
    assert rows["queued"] == "3 (list audit)"
    assert rows["in flight"] == "3"
    assert rows["scheduled retries"] == "1"
    assert rows["formula"] == "backlog + queued + inflight = 10"
    assert rows["replicas for that value"] == "3"  # ceil(10 / 4)
    assert rows["dead letters (OPEN)"] == "2"


def test_status_json_has_the_same_facts(
    standin: KubeStandin,
    kubeconfig: Path,
    queue: redis.Redis,
    redis_url: str,
    database: str,
) -> None:
    fill_queue(queue)
    code, out, err = run_cli(
        [
            "ops",
            "status",
            "--json",
            *cluster_args(kubeconfig, "--redis-url", redis_url, "--database-url", database),
        ]
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["deployment"] == {
        "name": WORKER,
        "desired": 1,
        "ready": 1,
        "updated": 1,
        "available": 1,
    }
    assert data["scaledObject"]["paused"] is False
    assert data["scaledObject"]["triggers"] == {
        "backlog": "audit:fair:pending",
        "queued": "audit",
        "inflight": "unacked",
    }
    assert data["hpa"]["name"] == HPA_NAME
    assert data["queue"]["queued"] == 3
    assert data["queue"]["inFlight"] == 3
    assert data["queue"]["scheduledRetries"] == 1
    assert data["queue"]["backlog"] == 3
    assert data["queue"]["topTenants"] == [
        {"tenant": "tenant-big", "batches": 2},
        {"tenant": "tenant-small", "batches": 1},
    ]
    assert data["queue"]["formulaValue"] == 10
    assert data["deadLetters"] == {"open": 2}
    assert data["errors"] == []


def test_status_reports_an_unreachable_redis_and_exits_non_zero(
    kubeconfig: Path, database: str
) -> None:
    code, out, err = run_cli(
        [
            "ops",
            "status",
            *cluster_args(
                kubeconfig, "--redis-url", "redis://127.0.0.1:1/0", "--database-url", database
            ),
        ]
    )
    assert code == 1
    assert table(out)["queue"].startswith("unavailable")
    assert "Redis at redis://127.0.0.1:1/0" in err


def test_unknown_release_is_a_clear_error(kubeconfig: Path) -> None:
    code, _out, err = run_cli(
        ["ops", "status", "--kubeconfig", str(kubeconfig), "--release", "nope"]
    )
    assert code == 2
    assert "release 'nope' has no worker Deployment in namespace 'ops-ns'" in err
    assert "app.kubernetes.io/instance=nope" in err


def test_missing_permission_names_the_rbac_rule(standin: KubeStandin, kubeconfig: Path) -> None:
    standin.forbidden.add(("deployments", "list"))
    code, _out, err = run_cli(["ops", "status", *cluster_args(kubeconfig)])
    assert code == 2
    assert "permission denied to list deployments in namespace 'ops-ns'" in err
    assert 'cannot list resource "deployments"' in err  # the API server's own words
    assert "get/list on deployments" in err  # what to grant


# ----------------------------------------------------------------------------- pause / resume


def test_pause_pins_replicas_with_the_keda_annotation_and_resume_removes_it(
    standin: KubeStandin,
    kubeconfig: Path,
    queue: redis.Redis,
    redis_url: str,
    database: str,
) -> None:
    code, out, err = run_cli(["ops", "pause", "--replicas", "3", *cluster_args(kubeconfig)])
    assert code == 0, err
    assert "paused ScaledObject" in out
    annotations = standin.get("scaledobjects", SO_NAME)["metadata"]["annotations"]
    assert annotations["autoscaling.keda.sh/paused-replicas"] == "3"
    patches = [r for r in standin.requests if r[0] == "PATCH"]
    assert patches
    assert patches[-1][2] == "application/merge-patch+json"

    code, out, _ = run_cli(
        [
            "ops",
            "status",
            *cluster_args(kubeconfig, "--redis-url", redis_url, "--database-url", database),
        ]
    )
    assert table(out)["autoscaling"] == "paused at 3 replicas"
    assert table(out)["paused"] == "yes (paused-replicas 3)"

    code, out, err = run_cli(["ops", "resume", *cluster_args(kubeconfig)])
    assert code == 0, err
    annotations = standin.get("scaledobjects", SO_NAME)["metadata"].get("annotations") or {}
    assert "autoscaling.keda.sh/paused-replicas" not in annotations
    code, out, _ = run_cli(
        [
            "ops",
            "status",
            *cluster_args(kubeconfig, "--redis-url", redis_url, "--database-url", database),
        ]
    )
    assert table(out)["autoscaling"] == "KEDA"


def test_resume_also_clears_the_paused_annotation(standin: KubeStandin, kubeconfig: Path) -> None:
    standin.get("scaledobjects", SO_NAME)["metadata"]["annotations"] = {
        "autoscaling.keda.sh/paused": "true",
        "keep": "me",
    }
    code, _out, err = run_cli(["ops", "resume", *cluster_args(kubeconfig)])
    assert code == 0, err
    assert standin.get("scaledobjects", SO_NAME)["metadata"]["annotations"] == {"keep": "me"}


def test_resume_when_not_paused_changes_nothing(standin: KubeStandin, kubeconfig: Path) -> None:
    code, out, _ = run_cli(["ops", "resume", *cluster_args(kubeconfig)])
    assert code == 0
    assert "is not paused" in out
    assert not [r for r in standin.requests if r[0] == "PATCH"]


def test_pause_without_patch_permission_fails_and_changes_nothing(
    standin: KubeStandin, kubeconfig: Path
) -> None:
    standin.forbidden.add(("scaledobjects", "patch"))
    code, _out, err = run_cli(["ops", "pause", "--replicas", "2", *cluster_args(kubeconfig)])
    assert code == 2
    assert f"permission denied to patch scaledobject {SO_NAME}" in err
    annotations = standin.get("scaledobjects", SO_NAME)["metadata"].get("annotations") or {}
    assert "autoscaling.keda.sh/paused-replicas" not in annotations


# ----------------------------------------------------------------------------- scale


def test_scale_refuses_while_keda_owns_the_deployment(
    standin: KubeStandin, kubeconfig: Path
) -> None:
    code, _out, err = run_cli(["ops", "scale", "5", *cluster_args(kubeconfig)])
    assert code == 2
    assert f"autoscaled by ScaledObject {SO_NAME}" in err
    assert "condo-audit ops pause --replicas 5" in err
    assert standin.get("deployments", WORKER)["spec"]["replicas"] == 1
    assert not [r for r in standin.requests if r[0] == "PATCH"]


@pytest.fixture
def standin_keda_off() -> Iterator[KubeStandin]:
    docs, source = chart_objects(keda=False)
    print(f"Kubernetes objects from: {source} (keda.enabled=false)")
    server = KubeStandin(NAMESPACE, docs).start()
    yield server
    server.stop()


def test_scale_uses_the_scale_subresource_when_keda_is_off(
    standin_keda_off: KubeStandin,
    tmp_path: Path,
    redis_url: str,
    database: str,
    queue: redis.Redis,
) -> None:
    kubeconfig = standin_keda_off.write_kubeconfig(tmp_path / "kubeconfig")
    code, out, err = run_cli(["ops", "scale", "5", *cluster_args(kubeconfig)])
    assert code == 0, err
    assert f"scaled {WORKER} to 5 replicas" in out
    assert standin_keda_off.get("deployments", WORKER)["spec"]["replicas"] == 5
    patch_paths = [r[1] for r in standin_keda_off.requests if r[0] == "PATCH"]
    assert patch_paths == [f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{WORKER}/scale"]

    code, out, _ = run_cli(
        [
            "ops",
            "status",
            *cluster_args(kubeconfig, "--redis-url", redis_url, "--database-url", database),
        ]
    )
    rows = table(out)
    assert rows["replicas desired/ready"] == "5 / 5"
    assert rows["scaledobject"] == "none"
    assert rows["autoscaling"].startswith("off")


def test_pause_and_resume_need_a_scaledobject(
    standin_keda_off: KubeStandin, tmp_path: Path
) -> None:
    kubeconfig = standin_keda_off.write_kubeconfig(tmp_path / "kubeconfig")
    for argv in (["pause", "--replicas", "2"], ["resume"]):
        code, _out, err = run_cli(["ops", *argv, *cluster_args(kubeconfig)])
        assert code == 2
        assert f"no ScaledObject scales {WORKER}" in err


def test_keda_not_installed_means_no_scaledobject(standin: KubeStandin, kubeconfig: Path) -> None:
    standin.unserved.add("scaledobjects")  # the API answers 404 for the whole resource type
    code, _out, err = run_cli(["ops", "pause", "--replicas", "2", *cluster_args(kubeconfig)])
    assert code == 2
    assert "KEDA is not installed" in err


def test_scale_without_permission_on_the_subresource(
    standin_keda_off: KubeStandin, tmp_path: Path
) -> None:
    kubeconfig = standin_keda_off.write_kubeconfig(tmp_path / "kubeconfig")
    standin_keda_off.forbidden.add(("deployments/scale", "patch"))
    code, _out, err = run_cli(["ops", "scale", "3", *cluster_args(kubeconfig)])
    assert code == 2
    assert f"permission denied to patch deployments/scale {WORKER}" in err
    assert standin_keda_off.get("deployments", WORKER)["spec"]["replicas"] == 2


# ----------------------------------------------------------------------------- record


def test_record_samples_replicas_backlog_and_budgets_into_csv_and_png(
    standin: KubeStandin,
    kubeconfig: Path,
    queue: redis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """A few samples while the 'cluster' changes under the recorder, as during a load test."""
    fill_queue(queue)
    changed = threading.Event()

    def load_arrives() -> None:
        time.sleep(0.8)
        # What KEDA and the HPA would do: 4 pods wanted, 2 ready so far; more work queued.
        dep = standin.get("deployments", WORKER)
        dep["spec"]["replicas"] = 4
        standin.set_ready(WORKER, 2)
        queue.rpush("audit", *[f"n{i}" for i in range(5)])
        # The Pluggy budget booked 30 s ahead, in the limiter's format (TAT, us, Redis clock).
        seconds, micros = queue.time()
        queue.set("ratelimit:pluggy:transactions", (seconds + 30) * 1_000_000 + micros)
        changed.set()

    worker = threading.Thread(target=load_arrives)
    worker.start()
    out_csv, out_png = tmp_path / "rec.csv", tmp_path / "rec.png"
    code, _out, err = run_cli(
        [
            "ops",
            "record",
            *cluster_args(
                kubeconfig,
                "--redis-url",
                redis_url,
                "--interval",
                "0.25",
                "--duration",
                "1.5",
                "--csv",
                str(out_csv),
                "--png",
                str(out_png),
                "--pluggy-rate",
                "360",
            ),
        ]
    )
    worker.join()
    assert code == 0, err
    assert changed.is_set()
    with out_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert 6 <= len(rows) <= 8  # samples at 0, 0.25, ... 1.5 s
    first, last = rows[0], rows[-1]
    assert (first["desired_replicas"], first["ready_replicas"]) == ("1", "1")
    # queued = 3 in the tenants' backlogs + 3 in the list
    assert (first["queued"], first["in_flight"], first["scheduled"]) == ("6", "3", "1")
    assert first["outstanding"] == "10"
    assert (last["desired_replicas"], last["ready_replicas"]) == ("4", "2")
    assert last["queued"] == "11"
    assert last["outstanding"] == "15"
    assert first["arrivals"] == ""
    assert first["completions"] == ""
    assert first["pluggy_per_minute_used"] == ""  # no previous sample to compare
    assert float(first["pluggy_booked_seconds"]) == 0.0
    assert 25 < float(last["pluggy_booked_seconds"]) <= 30
    assert last["cnpj_per_minute_used"] == ""  # that budget never got booked
    assert float(rows[1]["t_seconds"]) == pytest.approx(0.25, abs=0.2)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_record_fails_at_once_without_permission(
    standin: KubeStandin, kubeconfig: Path, redis_url: str, tmp_path: Path
) -> None:
    standin.forbidden.add(("deployments", "list"))
    code, _out, err = run_cli(
        [
            "ops",
            "record",
            *cluster_args(
                kubeconfig,
                "--redis-url",
                redis_url,
                "--interval",
                "0.1",
                "--duration",
                "0.3",
                "--csv",
                str(tmp_path / "r.csv"),
            ),
        ]
    )
    assert code == 2
    assert "permission denied" in err
