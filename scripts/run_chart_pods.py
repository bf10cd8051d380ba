"""Run the rendered Helm chart's pods as podman containers, as a kubelet would, and prove them.

    python scripts/run_chart_pods.py [--values helm/condo-audit/ci/podman.yaml ...] [--helm PATH]

`helm template` renders the chart with the CI values file; this script then takes the API
Deployment, the worker Deployment, the migrations Job and the requeue-lost CronJob and runs
each pod's container with `podman run`, translated from the rendered spec and nothing else:

- image (the CI values name the image built by scripts/ci-containers.sh; never pulled),
  command and args (Kubernetes' `$(VAR)` expansion applied, as the kubelet does);
- env: ConfigMap and Secret sources (envFrom, valueFrom with `optional`), `$(VAR)` references
  expanded in order, the pod's fieldRefs; values are handed over in podman's environment, so
  no secret appears on a command line;
- securityContext (pod and container, container wins): runAsUser/runAsGroup/fsGroup ->
  --user/--group-add, runAsNonRoot checked, readOnlyRootFilesystem -> --read-only (with no
  implicit tmpfs), capabilities -> --cap-drop/--cap-add, allowPrivilegeEscalation: false ->
  no-new-privileges, seccomp RuntimeDefault -> podman's default profile;
- emptyDir volumes -> tmpfs of the same size (mode 0777 like an emptyDir); memory and CPU
  limits -> --memory/--cpus; terminationGracePeriodSeconds -> the SIGTERM-to-SIGKILL delay;
- probes: startup, then liveness and readiness, each with its period, timeout and failure
  threshold; exec probes run inside the container (`podman exec`), httpGet probes request the
  named container port.

Kubernetes Services cannot be expressed with podman: every pod shares the host's network
(`--network host`), and each Service-style host name the rendered pods use (`*.svc`) is mapped
to 127.0.0.1 with `--add-host`. Behind those names, on the host: a private password-protected
redis-server, a scratch database on the local PostgreSQL and the provider simulator.

Then a batch goes through: a tenant created with the CLI inside the API container, the bundled
sample submitted to the containerized API and processed by the containerized worker (SUCCESS,
with its findings); the requeue-lost CronJob's pod runs; and a second batch is caught mid-run
by a SIGTERM to the worker (`podman stop -t <terminationGracePeriodSeconds>`): the worker must
exit on its own within the grace period, and the batch must finish (or come back and finish on
a replacement worker). Any failure exits non-zero with the containers' logs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import yaml

from simulator.webhook_receiver import Received, WebhookReceiver

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = REPO_ROOT / "helm" / "condo-audit"
DEFAULT_VALUES = CHART_DIR / "ci" / "podman.yaml"
SAMPLE = REPO_ROOT / "audit" / "sample" / "sample_batch.json"
RELEASE = "condo-audit"
NAMESPACE = "condo-audit"
# The local PostgreSQL (trust auth) where the scratch database is made: the tests' one in CI.
ADMIN_DATABASE_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
).replace("postgresql+psycopg://", "postgresql://")

Obj = dict[str, Any]


class PodFailure(Exception):
    """A pod, a probe or the batch did not do what the chart promises."""


def log(message: str) -> None:
    print(f"[pods {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------- rendering ----------


def render_chart(helm: str, values: list[Path]) -> list[Obj]:
    files = [arg for path in values for arg in ("-f", str(path))]
    proc = subprocess.run(
        [helm, "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE, *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise PodFailure(f"helm template failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def component_object(objects: list[Obj], kind: str, component: str) -> Obj:
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]
    if len(found) != 1:
        raise PodFailure(f"expected one {kind} for {component}, rendered {len(found)}")
    return found[0]


def pod_template(obj: Obj) -> Obj:
    """The pod template of a Deployment, a Job or a CronJob."""
    spec: Obj = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template: Obj = spec["template"]
    return template


# ---------- environment, as the kubelet builds it ----------


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: `$$` escapes, unknown references stay as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                close = text.find(")", i + 2)
                if close != -1:
                    name = text[i + 2 : close]
                    out.append(env.get(name, f"$({name})"))
                    i = close + 1
                    continue
        out.append(char)
        i += 1
    return "".join(out)


@dataclass
class Cluster:
    """The rendered ConfigMaps and Secrets (hooks included), by name."""

    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_objects(cls, objects: list[Obj]) -> Cluster:
        cluster = cls()
        for obj in objects:
            name = obj["metadata"]["name"]
            if obj["kind"] == "ConfigMap":
                cluster.config_maps[name] = {k: str(v) for k, v in (obj.get("data") or {}).items()}
            elif obj["kind"] == "Secret":
                data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
                data.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
                cluster.secrets[name] = data
        return cluster

    def source(self, kind: str, name: str) -> dict[str, str] | None:
        store = self.config_maps if kind == "configMap" else self.secrets
        return store.get(name)


def key_ref(cluster: Cluster, kind: str, ref: Obj) -> str | None:
    data = cluster.source(kind, ref["name"])
    if data is None or ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise PodFailure(f"{kind} {ref['name']!r} has no key {ref['key']!r} (not optional)")
    return data[ref["key"]]


def container_env(cluster: Cluster, pod_name: str, ctr: Obj) -> dict[str, str]:
    """envFrom first, then env in order, each value expanded against what precedes it."""
    env: dict[str, str] = {}
    for source in ctr.get("envFrom", []):
        prefix = source.get("prefix", "")
        for kind in ("configMap", "secret"):
            ref = source.get(f"{kind}Ref")
            if ref is None:
                continue
            data = cluster.source(kind, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise PodFailure(f"envFrom {kind} {ref['name']!r} is not rendered")
            env.update({f"{prefix}{k}": v for k, v in data.items()})
    fields = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}
    for item in ctr.get("env", []):
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(str(item.get("value", "")), env)
            continue
        value_from: Obj = item["valueFrom"]
        value: str | None
        if "secretKeyRef" in value_from:
            value = key_ref(cluster, "secret", value_from["secretKeyRef"])
        elif "configMapKeyRef" in value_from:
            value = key_ref(cluster, "configMap", value_from["configMapKeyRef"])
        elif "fieldRef" in value_from and value_from["fieldRef"]["fieldPath"] in fields:
            value = fields[value_from["fieldRef"]["fieldPath"]]
        else:
            raise PodFailure(f"env {name}: valueFrom {value_from} is not supported here")
        if value is not None:
            env[name] = value
    return env


# ---------- pod spec -> podman run ----------


def quantity_bytes(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([KMG]i?)?", str(text))
    if not match:
        raise PodFailure(f"unsupported quantity {text!r}")
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


def cpu_cores(text: str) -> float:
    text = str(text)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


@dataclass
class PodRun:
    """One pod's single container, ready for `podman run`."""

    component: str
    name: str
    image: str
    argv: list[str]
    env: dict[str, str]
    flags: list[str]
    container: Obj
    pod: Obj
    grace_seconds: int
    ports: dict[str, int]


def security_flags(pod: Obj, ctr: Obj, image_user: str) -> list[str]:
    merged = {**pod.get("securityContext", {}), **ctr.get("securityContext", {})}
    known = {
        "runAsUser",
        "runAsGroup",
        "runAsNonRoot",
        "fsGroup",
        "seccompProfile",
        "readOnlyRootFilesystem",
        "allowPrivilegeEscalation",
        "capabilities",
        "privileged",
    }
    unknown = set(merged) - known
    if unknown:
        raise PodFailure(f"securityContext fields not translated: {sorted(unknown)}")
    flags: list[str] = []
    user = merged.get("runAsUser")
    uid = str(user) if user is not None else image_user.split(":")[0]
    if merged.get("runAsNonRoot") and uid in ("", "0", "root"):
        raise PodFailure("runAsNonRoot is set but the container would run as root")
    if user is not None:
        group = merged.get("runAsGroup")
        flags += ["--user", f"{user}:{group}" if group is not None else str(user)]
    if "fsGroup" in merged:
        flags += ["--group-add", str(merged["fsGroup"])]
    if merged.get("readOnlyRootFilesystem"):
        # Only the pod's volumes are writable: no implicit tmpfs on /tmp, /var/tmp, /run.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    if merged.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    if merged.get("privileged"):
        raise PodFailure("privileged containers are not run here")
    caps = merged.get("capabilities", {})
    flags += [f"--cap-drop={c}" for c in caps.get("drop", [])]
    flags += [f"--cap-add={c}" for c in caps.get("add", [])]
    seccomp = merged.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        flags += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":
        raise PodFailure(f"seccompProfile {seccomp} is not translated")
    return flags


def volume_flags(pod: Obj, ctr: Obj) -> list[str]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    flags: list[str] = []
    for mount in ctr.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" not in volume:
            raise PodFailure(f"volume {volume['name']}: only emptyDir is translated")
        size = volume["emptyDir"].get("sizeLimit")
        options = ["rw", "exec", "nosuid", "nodev", "mode=0777"]
        if size:
            options.append(f"size={quantity_bytes(size)}")
        flags += ["--tmpfs", f"{mount['mountPath']}:{','.join(options)}"]
    return flags


def build_pod_run(
    cluster: Cluster, obj: Obj, component: str, run_id: str, hosts: list[str], image_user: str
) -> PodRun:
    template = pod_template(obj)
    pod: Obj = template["spec"]
    containers = pod["containers"]
    if len(containers) != 1 or pod.get("initContainers"):
        raise PodFailure(f"{component}: one container and no init containers expected")
    ctr: Obj = containers[0]
    name = f"pods-{run_id}-{component}"
    env = container_env(cluster, name, ctr)
    command = [expand(a, env) for a in ctr.get("command", [])]
    args = [expand(a, env) for a in ctr.get("args", [])]
    if not command:
        raise PodFailure(f"{component}: the chart must give an explicit command")
    grace = int(pod.get("terminationGracePeriodSeconds", 30))
    flags = [
        "--name",
        name,
        # A pod's host name is its name (a replacement pod gets its own, see start()).
        "--hostname",
        name,
        "--pull",
        "never",
        # No Services with podman: one network (the host's), Service names mapped to loopback.
        "--network",
        "host",
        *(f"--add-host={h}:127.0.0.1" for h in hosts),
        "--stop-timeout",
        str(grace),
        "--label",
        f"condo-audit-pods={run_id}",
        "--label",
        f"app.kubernetes.io/component={component}",
        *security_flags(pod, ctr, image_user),
        *volume_flags(pod, ctr),
        # command replaces the image's entrypoint and its CMD; args follow the image name.
        "--entrypoint",
        json.dumps(command),
    ]
    if "workingDir" in ctr:
        flags += ["--workdir", ctr["workingDir"]]
    limits = ctr.get("resources", {}).get("limits", {})
    if "memory" in limits:
        flags += ["--memory", str(quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
        flags += ["--cpus", str(cpu_cores(limits["cpu"]))]
    flags += [f"--env={k}" for k in env]
    ports = {p["name"]: int(p["containerPort"]) for p in ctr.get("ports", []) if "name" in p}
    return PodRun(component, name, ctr["image"], args, env, flags, ctr, pod, grace, ports)


# ---------- podman ----------


def podman(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise PodFailure(f"podman {' '.join(args[:3])} ... failed: {proc.stderr.strip()}")
    return proc.stdout


def start(run: PodRun, name: str | None = None) -> str:
    """`podman run -d`; the env values travel in podman's own environment, not in argv."""
    flags = list(run.flags)
    if name is not None:
        flags = [name if f == run.name else f for f in flags]
    podman("run", "-d", *flags, run.image, *run.argv, env=run.env)
    return name or run.name


def exit_code(name: str) -> int:
    return int(podman("inspect", "--format", "{{.State.ExitCode}}", name).strip())


def run_to_completion(run: PodRun, deadline_seconds: float) -> tuple[int, str]:
    """A Job's pod: start it and wait (activeDeadlineSeconds) for its exit code and output."""
    name = start(run)
    proc = subprocess.run(
        ["podman", "wait", name], capture_output=True, text=True, timeout=deadline_seconds
    )
    if proc.returncode != 0:
        raise PodFailure(f"podman wait {name}: {proc.stderr.strip()}")
    return exit_code(name), podman("logs", name)


def logs_tail(name: str, lines: int = 60) -> str:
    proc = subprocess.run(
        ["podman", "logs", "--tail", str(lines), name],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.stdout + proc.stderr


# ---------- probes ----------


def probe_once(run: PodRun, name: str, probe: Obj) -> tuple[bool, str]:
    timeout = float(probe.get("timeoutSeconds", 1))
    if "exec" in probe:
        # podman exec's own start-up is not the probe's time: a margin above timeoutSeconds.
        try:
            proc = subprocess.run(
                ["podman", "exec", name, *probe["exec"]["command"]],
                capture_output=True,
                text=True,
                timeout=timeout + 10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False, "timed out"
        return proc.returncode == 0, f"exit {proc.returncode} {proc.stderr.strip()[-200:]}"
    if "httpGet" in probe:
        get: Obj = probe["httpGet"]
        port = get["port"]
        port_number = run.ports[port] if isinstance(port, str) else int(port)
        scheme = get.get("scheme", "HTTP").lower()
        # The pod's IP is the host's here (host network).
        url = f"{scheme}://127.0.0.1:{port_number}{get.get('path', '/')}"
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
        try:
            response = httpx.get(url, headers=headers, timeout=timeout, follow_redirects=False)
        except httpx.HTTPError as exc:
            return False, f"{url}: {exc!r}"
        return 200 <= response.status_code < 400, f"{url}: {response.status_code}"
    if "tcpSocket" in probe:
        port = probe["tcpSocket"]["port"]
        port_number = run.ports[port] if isinstance(port, str) else int(port)
        try:
            with socket.create_connection(("127.0.0.1", port_number), timeout=timeout):
                return True, f"tcp {port_number} open"
        except OSError as exc:
            return False, f"tcp {port_number}: {exc}"
    raise PodFailure(f"probe {probe} is not translated")


def require_probe(run: PodRun, name: str, kind: str) -> None:
    """Runs a probe as the kubelet would until it succeeds; fails where the kubelet would act.

    A startup or liveness probe failing failureThreshold times in a row restarts the container;
    a readiness probe failing that often takes the pod out of its Service: both fail CI.
    """
    probe: Obj | None = run.container.get(kind)
    if probe is None:
        return
    period = float(probe.get("periodSeconds", 10))
    threshold = int(probe.get("failureThreshold", 3))
    time.sleep(float(probe.get("initialDelaySeconds", 0)))
    detail = ""
    for attempt in range(1, threshold + 1):
        if podman("inspect", "--format", "{{.State.Running}}", name).strip() != "true":
            raise PodFailure(f"{name} exited during its {kind} (exit {exit_code(name)})")
        ok, detail = probe_once(run, name, probe)
        if ok:
            log(f"{name}: {kind} passed (attempt {attempt}/{threshold}: {detail})")
            return
        time.sleep(period)
    raise PodFailure(f"{name}: {kind} failed {threshold} times in a row; last: {detail}")


def require_probes(run: PodRun, name: str) -> None:
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        require_probe(run, name, kind)


def verify_security(run: PodRun, name: str) -> None:
    """Inside the running container: the user, capabilities, no_new_privs, writable paths, PID 1."""
    sc = {**run.pod.get("securityContext", {}), **run.container.get("securityContext", {})}
    mounts = [m["mountPath"] for m in run.container.get("volumeMounts", [])]
    script = (
        'id -u; id -g; grep -E "^(CapEff|NoNewPrivs):" /proc/1/status | tr -s "\\t" " "; '
        "tr '\\0' ' ' </proc/1/cmdline; echo; "
        "(: >/.rootfs-probe) 2>/dev/null && echo rootfs=rw || echo rootfs=ro; "
        + "".join(f'(: >"{m}/.probe" && rm "{m}/.probe") && echo "rw={m}"; ' for m in mounts)
    )
    lines = podman("exec", name, "/bin/sh", "-c", script).splitlines()
    uid, gid, facts = lines[0], lines[1], " ".join(lines[2:])
    problems = []
    if "runAsUser" in sc and uid != str(sc["runAsUser"]):
        problems.append(f"uid {uid}, not {sc['runAsUser']}")
    if "runAsGroup" in sc and gid != str(sc["runAsGroup"]):
        problems.append(f"gid {gid}, not {sc['runAsGroup']}")
    caps = sc.get("capabilities", {})
    if (
        "ALL" in caps.get("drop", [])
        and not caps.get("add")
        and "CapEff: 0000000000000000" not in facts
    ):
        problems.append("capabilities left after drop ALL")
    if sc.get("allowPrivilegeEscalation") is False and "NoNewPrivs: 1" not in facts:
        problems.append("no_new_privs is not set")
    if sc.get("readOnlyRootFilesystem") and "rootfs=ro" not in facts:
        problems.append("the root filesystem is writable")
    problems += [f"{m} is not writable" for m in mounts if f"rw={m}" not in facts]
    command = run.container["command"]
    if " ".join(command[1:]) not in facts or command[0] not in facts:
        problems.append("PID 1 is not the pod's command (SIGTERM would not reach it)")
    if problems:
        raise PodFailure(f"{name}: {'; '.join(problems)}")
    log(f"{name}: uid {uid} gid {gid}, no capabilities, no_new_privs, read-only root, {mounts} rw")


# ---------- what stands behind the Service names ----------


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise PodFailure(f"{what} did not come up within {timeout:.0f} s")


@contextmanager
def host_services(env: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """Redis, the scratch database and the simulator at the addresses the pods' env names."""
    redis_url = urlsplit(env["REDIS_URL"])
    db_url = urlsplit(env["DATABASE_URL"])
    sim_url = urlsplit(env["CNPJWS_BASE_URL"])
    redis_port, sim_port = redis_url.port or 6379, sim_url.port or 80
    for port, what in ((redis_port, "Redis"), (sim_port, "the simulator")):
        if not port_free(port):
            raise PodFailure(f"port {port} for {what} (from the CI values) is taken on this host")
    if not shutil.which("redis-server"):
        raise PodFailure("redis-server is not installed")
    processes: list[subprocess.Popen[bytes]] = []
    database = db_url.path.lstrip("/")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", database):
        raise PodFailure(f"unexpected database name {database!r}")
    admin = urlsplit(ADMIN_DATABASE_URL)
    if (db_url.port or 5432) != (admin.port or 5432):
        raise PodFailure("the CI values' database port is not the local PostgreSQL's")
    try:
        processes.append(
            subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(redis_port),
                    "--requirepass",
                    redis_url.password or "",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--maxmemory-policy",
                    "noeviction",
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        sim_config = {
            "pluggy": {
                "client_id": env.get("PLUGGY_CLIENT_ID", "local-client"),
                "client_secret": env.get("PLUGGY_CLIENT_SECRET", "local-secret"),
            }
        }
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "simulator",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(sim_port),
                    "--config",
                    json.dumps(sim_config),
                ],
                cwd=REPO_ROOT,
            )
        )
        with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{database}"')
        sim_base = f"http://127.0.0.1:{sim_port}"
        wait_until(lambda: httpx.get(f"{sim_base}/_sim/health").is_success, "the simulator")
        wait_until(lambda: port_free(redis_port) is False, "Redis")
        log(f"host: redis-server :{redis_port}, database {database}, simulator :{sim_port}")
        yield {"simulator": sim_base}
    finally:
        for process in processes:
            process.terminate()
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        with suppress(psycopg.Error), psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def service_hosts(env: Mapping[str, str]) -> list[str]:
    """Host names in the pods' URLs that a cluster's DNS would resolve to Services."""
    hosts = set()
    for value in env.values():
        for match in re.finditer(r"://(?:[^@/\s]*@)?([A-Za-z0-9.-]+)", value):
            if match.group(1).endswith(".svc") or ".svc.cluster.local" in match.group(1):
                hosts.add(match.group(1))
    return sorted(hosts)


# ---------- the batch ----------


def cnpj(root: int) -> str:
    """A valid 14-digit CNPJ from a number (check digits by mod 11)."""
    digits = [int(c) for c in f"{root:08d}0001"]
    for weights in ([5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2], [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]):
        rest = sum(d * w for d, w in zip(digits, weights, strict=True)) % 11
        digits.append(0 if rest < 2 else 11 - rest)
    return "".join(map(str, digits))


def wait_task(api: httpx.Client, task_id: str, timeout: float) -> Obj:
    deadline = time.monotonic() + timeout
    status: Obj = {}
    while time.monotonic() < deadline:
        status = api.get(f"/tasks/{task_id}").json()
        if status["status"] in ("SUCCESS", "FAILURE"):
            return status
        time.sleep(0.3)
    raise PodFailure(f"task {task_id} not finished within {timeout:.0f} s: {status}")


def submit(api: httpx.Client, condominium_id: str, expenses: list[Obj]) -> str:
    response = api.post(
        "/batch-expenses", json={"condominium_id": condominium_id, "expenses": expenses}
    )
    if response.status_code != 202:
        raise PodFailure(f"batch rejected: {response.status_code} {response.text}")
    return str(response.json()["task_id"])


def sample_batch(api: httpx.Client, simulator: str) -> tuple[str, str]:
    """The bundled sample through the containers; returns the condominium id and a task id."""
    sample = json.loads(SAMPLE.read_text(encoding="utf-8"))
    with httpx.Client(base_url=simulator, timeout=10) as sim:
        for number, registration in sample["registrations"].items():
            sim.put(f"/_sim/registrations/{number}", json=registration).raise_for_status()
        account = sample["condominium"]["pluggy_account_id"]
        sim.put(f"/_sim/accounts/{account}/transactions", json=sample["transactions"])
    created = api.post("/condominiums", json=sample["condominium"])
    if created.status_code != 201:
        raise PodFailure(f"POST /condominiums: {created.status_code} {created.text}")
    condominium_id = str(created.json()["id"])
    for history in sample["history"]:
        if wait_task(api, submit(api, condominium_id, history), 120)["status"] != "SUCCESS":
            raise PodFailure("a history batch of the sample did not succeed")
    task_id = submit(api, condominium_id, sample["batch"])
    status = wait_task(api, task_id, 120)
    findings = api.get(f"/batches/{task_id}/findings", params={"page_size": 500}).json()
    log(f"sample batch {task_id}: {status['status']}, {findings['total']} findings")
    if status["status"] != "SUCCESS" or findings["total"] == 0:
        raise PodFailure(f"the sample batch ended {status['status']} with {findings['total']}")
    rules = sorted({f["rule_code"] for f in findings["items"]})
    log(f"  rules: {', '.join(rules)}")
    return condominium_id, task_id


def subscribe(api: httpx.Client, receiver: WebhookReceiver) -> None:
    """Register the host's receiver for the batch events (private URLs allowed in podman.yaml)."""
    created = api.post(
        "/webhooks",
        json={"url": receiver.url, "events": ["batch.succeeded", "batch.failed"]},
    )
    if created.status_code != 201:
        raise PodFailure(f"POST /webhooks: {created.status_code} {created.text}")
    receiver.secret = str(created.json()["secret"])


def delivered(receiver: WebhookReceiver, task_id: str, webhooks: PodRun) -> dict[str, Any]:
    """The sample's batch.succeeded reached the host, signed. Only the webhooks container
    consumes the webhooks queue here, so a delivery at all means that container sent it."""
    deadline = time.monotonic() + 60
    mine: list[Received] = []
    while not mine and time.monotonic() < deadline:
        # The sample's history batches are delivered too; this one is the sample's own.
        mine = [r for r in receiver.deliveries() if r.json()["data"]["task_id"] == task_id]
        time.sleep(0.2)
    if not mine:
        raise PodFailure(f"no webhook delivery for {task_id} from {webhooks.name}")
    received = mine[0]
    body = received.json()
    if not received.verified or body["type"] != "batch.succeeded":
        raise PodFailure(f"webhook delivery not as expected: {received.problem} {body}")
    log(f"webhook {body['type']} for {task_id}: signature verified ({received.message_id})")
    return {"type": body["type"], "verified": received.verified}


def sigterm_mid_batch(
    api: httpx.Client, simulator: str, condominium_id: str, worker: PodRun
) -> dict[str, Any]:
    """SIGTERM to the worker while it runs a batch; the batch finishes or comes back."""
    suppliers = 30
    latency_ms = 250
    httpx.post(
        f"{simulator}/_sim/config", json={"cnpjws": {"latency_ms": latency_ms}}
    ).raise_for_status()
    expenses = [
        {
            "external_id": f"ci-sigterm-{i}",
            "supplier_cnpj": cnpj(61_000_000 + i),
            "amount": f"{100 + i}.00",
            "date": "2026-10-05",
            "description": "Manutenção",
            "category": "manutencao",
            "invoice_number": f"CI-{i}",
        }
        for i in range(suppliers)
    ]
    task_id = submit(api, condominium_id, expenses)
    deadline = time.monotonic() + 60
    status: Obj = {}
    while time.monotonic() < deadline:
        status = api.get(f"/tasks/{task_id}").json()
        if status["status"] == "STARTED" and status.get("progress", {}).get("done", 0) >= 1:
            break
        time.sleep(0.1)
    else:
        raise PodFailure(f"the SIGTERM batch never started: {status}")
    log(f"batch {task_id} running ({status['progress']}); podman stop -t {worker.grace_seconds}")
    stopped = time.monotonic()
    podman("stop", "-t", str(worker.grace_seconds), worker.name, timeout=worker.grace_seconds + 60)
    stop_seconds = time.monotonic() - stopped
    code = exit_code(worker.name)
    after = api.get(f"/tasks/{task_id}").json()
    log(
        f"worker stopped in {stop_seconds:.1f} s (grace {worker.grace_seconds} s), exit {code}; "
        f"batch {after['status']} {after.get('progress')}"
    )
    if code in (137, -9) or stop_seconds >= worker.grace_seconds:
        raise PodFailure("the worker did not stop on SIGTERM within its grace period")
    outcome = "finished before the worker exited"
    if after["status"] != "SUCCESS":
        # Not finished: it must come back. A replacement pod (as the Deployment would start).
        replacement = start(worker, f"{worker.name}-2")
        require_probes(worker, replacement)
        after = wait_task(api, task_id, 180)
        outcome = "came back and finished on a replacement worker"
    findings = api.get(f"/batches/{task_id}/findings", params={"page_size": 500}).json()
    if after["status"] != "SUCCESS":
        raise PodFailure(f"the SIGTERM batch ended {after['status']}")
    return {
        "task": task_id,
        "stop_seconds": round(stop_seconds, 1),
        "exit_code": code,
        "outcome": outcome,
        "findings": findings["total"],
    }


def processed_by(worker: PodRun, task_id: str) -> None:
    """The worker container's own log records the task's success: it ran there.

    Audit tasks keep no Celery result (their status is in PostgreSQL), so the log
    line Celery writes when a task succeeds is the worker's record of it.
    """
    marker = f"[{task_id}] succeeded"
    deadline = time.monotonic() + 15  # the status is stored just before Celery logs the return
    while True:
        proc = subprocess.run(
            ["podman", "logs", worker.name], capture_output=True, text=True, timeout=30, check=False
        )
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if marker in line]
        if lines:
            log(f"  run by the worker container: {lines[-1].strip()[:160]}")
            return
        if time.monotonic() > deadline:
            raise PodFailure(f"the worker container's log has no success line for task {task_id}")
        time.sleep(0.5)


# ---------- main ----------


def image_user(image: str) -> str:
    return podman("image", "inspect", "--format", "{{.Config.User}}", image).strip()


# Pods that keep running (probed, hardened, checked again after the work).
LONG_RUNNING = ("api", "worker", "webhooks")


def run(helm: str, values: list[Path]) -> None:
    run_id = uuid.uuid4().hex[:6]
    objects = render_chart(helm, values)
    cluster = Cluster.from_objects(objects)
    specs = {
        "migrations": component_object(objects, "Job", "migrations"),
        "api": component_object(objects, "Deployment", "api"),
        "worker": component_object(objects, "Deployment", "worker"),
        "webhooks": component_object(objects, "Deployment", "webhooks"),
        "maintenance": component_object(objects, "CronJob", "maintenance"),
    }
    image = pod_template(specs["api"])["spec"]["containers"][0]["image"]
    user = image_user(image)
    log(f"image {image} (user {user}), run {run_id}")
    plain = {c: build_pod_run(cluster, obj, c, run_id, [], user) for c, obj in specs.items()}
    hosts = sorted({h for r in plain.values() for h in service_hosts(r.env)})
    pods = {c: build_pod_run(cluster, obj, c, run_id, hosts, user) for c, obj in specs.items()}
    log(f"Service names mapped to 127.0.0.1: {', '.join(hosts)}")
    api_port = pods["api"].ports.get("http", 8000)
    if not port_free(api_port):
        raise PodFailure(f"port {api_port} (the API container's, host network) is taken")
    figures: dict[str, Any] = {}
    try:
        with host_services(pods["api"].env) as services:
            migrations_spec = specs["migrations"]["spec"]
            started = time.monotonic()
            code, output = run_to_completion(
                pods["migrations"], float(migrations_spec.get("activeDeadlineSeconds", 600))
            )
            if code != 0:
                raise PodFailure(f"migrations Job exited {code}:\n{output[-3000:]}")
            log(f"migrations Job: exit 0 in {time.monotonic() - started:.1f} s")

            for component in LONG_RUNNING:
                start(pods[component])
            for component in LONG_RUNNING:
                require_probes(pods[component], pods[component].name)
                verify_security(pods[component], pods[component].name)

            tenant = json.loads(
                podman("exec", pods["api"].name, "condo-audit", "tenants", "create", "CI pods")
                .strip()
                .splitlines()[-1]
            )
            log(f"tenant {tenant['tenant_id']} created with the CLI inside the API container")
            headers = {"X-API-Key": tenant["api_key"]}
            with (
                httpx.Client(
                    base_url=f"http://127.0.0.1:{api_port}", headers=headers, timeout=30
                ) as api,
                WebhookReceiver() as receiver,
            ):
                subscribe(api, receiver)
                condominium_id, task_id = sample_batch(api, services["simulator"])
                processed_by(pods["worker"], task_id)
                figures["webhook"] = delivered(receiver, task_id, pods["webhooks"])

                started = time.monotonic()
                code, output = run_to_completion(pods["maintenance"], 300)
                if code != 0:
                    raise PodFailure(f"requeue-lost CronJob pod exited {code}:\n{output[-3000:]}")
                log(f"requeue-lost CronJob pod: exit 0 in {time.monotonic() - started:.1f} s")
                log(f"  {output.strip().splitlines()[-1] if output.strip() else '(no output)'}")

                # The probes still pass after the work.
                for component in LONG_RUNNING:
                    require_probe(pods[component], pods[component].name, "livenessProbe")
                figures["sigterm"] = sigterm_mid_batch(
                    api, services["simulator"], condominium_id, pods["worker"]
                )
    except BaseException:
        for name in containers(run_id):
            print(f"----- logs of {name} -----\n{logs_tail(name)}", file=sys.stderr)
        raise
    finally:
        for name in containers(run_id):
            subprocess.run(
                ["podman", "rm", "-f", "-t", "5", name], capture_output=True, check=False
            )
    log(f"all pods ran as the chart says: {json.dumps(figures)}")


def containers(run_id: str) -> list[str]:
    proc = subprocess.run(
        [
            "podman",
            "ps",
            "-a",
            "--filter",
            f"label=condo-audit-pods={run_id}",
            "--format",
            "{{.Names}}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.split()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--values",
        type=Path,
        action="append",
        help=f"values file, repeatable (default: {DEFAULT_VALUES.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--helm", default=shutil.which("helm") or str(REPO_ROOT / ".tools/bin/helm")
    )
    args = parser.parse_args()
    try:
        run(args.helm, args.values or [DEFAULT_VALUES])
    except PodFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
