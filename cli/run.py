"""`condo-audit run`: the whole platform on one machine, on embedded defaults.

Starts a private redis-server (unless REDIS_URL is set), migrates the database (SQLite by
default), starts the provider simulator, the API, one audit worker and one webhooks worker,
registers a webhook to a signature-verifying receiver on loopback, submits the bundled
sample batch, prints its findings and the webhook deliveries received, and keeps serving
until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import time
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from audit.auth import create_tenant, issue_key
from audit.db import session_scope, upgrade_database
from audit.observability.tracing import tracing_requested
from audit.settings import LOCAL_STATE_DIR, Settings
from audit.webhooks.secretbox import new_key
from cli.main import CliError
from cli.processes import (
    ManagedProcess,
    free_port,
    spawn_api,
    spawn_simulator,
    spawn_worker,
    start_redis,
    stop_all,
    wait_all,
)
from simulator.webhook_receiver import Received, WebhookReceiver

STATE_DIR = Path(LOCAL_STATE_DIR)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser(
        "run",
        help="run the platform locally and audit the sample batch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--api-port",
        type=int,
        default=8000,
        metavar="PORT",
        help="loopback port of the API: http://127.0.0.1:PORT, docs at /docs (default 8000)",
    )
    run.add_argument(
        "--simulator-port",
        type=int,
        default=8100,
        metavar="PORT",
        help="loopback port of the provider simulator standing in for CNPJ.ws, minha-receita "
        "and Pluggy (default 8100)",
    )
    run.add_argument(
        "--worker-concurrency",
        type=int,
        default=2,
        metavar="N",
        help="Celery processes of the audit worker (default 2)",
    )
    run.add_argument(
        "--exit-after-sample",
        action="store_true",
        help="stop everything once the sample batch is audited (instead of serving)",
    )
    run.add_argument(
        "--no-sample",
        action="store_true",
        help="start the platform only: no tenant, no sample batch, no webhook",
    )
    run.set_defaults(handler=run_platform)

    sample = subparsers.add_parser("sample", help="the bundled sample batch")
    actions = sample.add_subparsers(dest="action", required=True)
    seed = actions.add_parser(
        "seed-simulator",
        help="load the sample's supplier registrations and bank transactions into a running "
        "simulator, as `condo-audit run` does",
    )
    seed.add_argument(
        "--simulator-url",
        default="http://127.0.0.1:8100",
        help="the simulator started with `python -m simulator` (default http://127.0.0.1:8100)",
    )
    seed.add_argument(
        "--wait-seconds",
        type=float,
        default=30.0,
        help="how long to wait for the simulator to answer (default 30)",
    )
    seed.set_defaults(handler=run_seed_simulator)


def run_seed_simulator(args: argparse.Namespace) -> int:
    sample = load_sample()
    deadline = time.monotonic() + args.wait_seconds
    while True:
        try:
            seed_simulator(args.simulator_url, sample)
            break
        except httpx.TransportError as exc:
            if time.monotonic() >= deadline:
                raise CliError(
                    f"the simulator at {args.simulator_url} does not answer ({exc}); start it "
                    "with `python -m simulator --port 8100` or pass --simulator-url"
                ) from None
            time.sleep(0.5)
    print(
        f"simulator  {args.simulator_url}: {len(sample['registrations'])} supplier "
        f"registrations, {len(sample['transactions'])} bank transactions of account "
        f"{sample['condominium']['pluggy_account_id']!r}"
    )
    return 0


def seed_simulator(simulator_url: str, sample: dict[str, Any]) -> None:
    """The sample's suppliers (as the registry knows them) and the condominium's bank
    transactions, so the sample batch audits to its documented findings."""
    with httpx.Client(base_url=simulator_url, timeout=10) as sim:
        for cnpj, registration in sample["registrations"].items():
            sim.put(f"/_sim/registrations/{cnpj}", json=registration).raise_for_status()
        account = sample["condominium"]["pluggy_account_id"]
        sim.put(
            f"/_sim/accounts/{account}/transactions", json=sample["transactions"]
        ).raise_for_status()


def check_port_free(port: int, option: str) -> None:
    """Fail before starting anything when a port is taken, naming the option that sets it.

    Probed as the servers bind (SO_REUSEADDR, as uvicorn does): the closed connections of a
    run stopped a moment ago linger in TIME_WAIT for a minute, and block a plain bind but
    not the servers; only a socket listening on the port does."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise CliError(
                f"port {port} on 127.0.0.1 is already in use; stop what holds it or choose "
                f"another with {option} (e.g. {option} {free_port()})"
            ) from None


def load_sample() -> dict[str, Any]:
    text = resources.files("audit.sample").joinpath("sample_batch.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def exit_on_signal(signum: int, _frame: object) -> None:
    """SIGTERM (`kill`, a closed terminal's session, a service manager) leaves the way Ctrl-C
    does, through run_platform's `finally`: the processes it started stop with it."""
    raise SystemExit(128 + signum)


def run_platform(args: argparse.Namespace) -> int:
    check_port_free(args.api_port, "--api-port")
    check_port_free(args.simulator_port, "--simulator-port")
    STATE_DIR.mkdir(exist_ok=True)
    log_dir = STATE_DIR / "logs"
    rotate_logs(log_dir)
    env: dict[str, str] = {"PYTHONPATH": str(Path.cwd())}
    processes: list[ManagedProcess] = []
    previous = signal.signal(signal.SIGTERM, exit_on_signal)
    try:
        if "REDIS_URL" not in os.environ:
            port = free_port()
            processes.append(start_redis(port, STATE_DIR / "redis", log_dir, name="redis"))
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            print(f"redis      private redis-server on 127.0.0.1:{port}")
        simulator_url = f"http://127.0.0.1:{args.simulator_port}"
        for name, path in (
            ("CNPJWS_BASE_URL", "cnpjws"),
            ("PLUGGY_BASE_URL", "pluggy"),
            ("MINHA_RECEITA_BASE_URL", "minha-receita"),
        ):
            env.setdefault(name, os.environ.get(name, f"{simulator_url}/{path}"))
        # The simulator has no rate limit by default; CNPJ.ws' public 3/min would make the
        # sample wait minutes. Set CNPJWS_RATE_PER_MINUTE to override.
        env.setdefault("CNPJWS_RATE_PER_MINUTE", os.environ.get("CNPJWS_RATE_PER_MINUTE", "600"))
        # Webhooks: a local key for the signing secrets at rest (kept in .local/, so a restart
        # can still read them), and receivers on loopback allowed (never in production).
        env["WEBHOOK_SECRET_KEYS"] = os.environ.get("WEBHOOK_SECRET_KEYS") or local_secret_key()
        env["WEBHOOK_ALLOW_PRIVATE_URLS"] = os.environ.get("WEBHOOK_ALLOW_PRIVATE_URLS", "true")
        os.environ.update(env)
        settings = Settings()
        upgrade_database(settings.database_url)
        print(f"database   {settings.database_url}")
        api_url = f"http://127.0.0.1:{args.api_port}"
        metrics_port = int(os.environ.get("METRICS_PORT") or free_port())
        # The pool children write their samples here; the worker's parent serves them merged.
        metrics_dir = STATE_DIR / "prometheus-worker"
        metrics_dir.mkdir(exist_ok=True)
        worker_env = {
            **env,
            "METRICS_PORT": str(metrics_port),
            "METRICS_HOST": os.environ.get("METRICS_HOST", "127.0.0.1"),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir.resolve()),
        }
        webhooks_env = {**worker_env, "METRICS_PORT": str(free_port())}
        webhooks_env.pop("PROMETHEUS_MULTIPROC_DIR")  # a thread pool: one process
        # Spawned together, then waited for: the four start-ups overlap.
        starting = [
            spawn_simulator(args.simulator_port, env, log_dir),
            spawn_api(args.api_port, env, log_dir),
            spawn_worker(
                worker_env,
                log_dir,
                concurrency=args.worker_concurrency,
                queue=settings.audit_queue,
            ),
            spawn_worker(
                webhooks_env,
                log_dir,
                name="webhooks",
                concurrency=4,
                queue=settings.webhook_queue,
                pool="threads",
            ),
        ]
        processes.extend(each.process for each in starting)
        wait_all(starting)
        print(f"simulator  {simulator_url} (CNPJ.ws, minha-receita and Pluggy stand-in)")
        print(f"api        {api_url}  (docs at {api_url}/docs, metrics at {api_url}/metrics)")
        print(f"worker     celery, queue {settings.audit_queue!r}, logs in {log_dir}/")
        print(f"webhooks   celery, queue {settings.webhook_queue!r} (deliveries and retries)")
        worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        print(f"metrics    {worker_metrics} (worker), {api_url}/metrics (API)")
        print(f"traces     {tracing_destination()}")
        with WebhookReceiver(on_delivery=print_delivery) as receiver:
            print(f"receiver   {receiver.url} (verifies webhook signatures, prints deliveries)")
            if not args.no_sample:
                audit_sample(settings, api_url, simulator_url, receiver)
            if args.exit_after_sample:
                return 0
            print("\nserving; press Ctrl-C to stop", flush=True)
            while True:
                signal.pause()  # until Ctrl-C or SIGTERM raises out of it
    except (FileNotFoundError, TimeoutError, RuntimeError) as exc:
        raise CliError(str(exc)) from None
    finally:
        # The platform's processes side by side, then the Redis they were using (if ours).
        redis = [p for p in processes if p.name == "redis"]
        stop_all([p for p in processes if p.name != "redis"])
        stop_all(redis)
        signal.signal(signal.SIGTERM, previous)


def rotate_logs(log_dir: Path) -> None:
    """Each run writes fresh logs under fixed names and keeps the previous run's as
    NAME.log.1, so .local/logs holds two runs at most, however many runs there were."""
    if not log_dir.is_dir():
        return
    for old in log_dir.glob("*.log.1"):
        old.unlink()
    for log in log_dir.glob("*.log"):
        log.rename(log.with_name(log.name + ".1"))


def tracing_destination() -> str:
    """Where the API and the worker send spans: the OTEL_* variables pass through as set."""
    if not tracing_requested():
        return "off (set OTEL_EXPORTER_OTLP_ENDPOINT to send them to a collector)"
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "the OTEL_TRACES_EXPORTER's default"
    )
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    return f"OTLP ({protocol}) to {endpoint}, services condo-audit-api and condo-audit-worker"


def local_secret_key() -> str:
    """The local WEBHOOK_SECRET_KEYS, made once and kept in .local/ (owner-only)."""
    path = STATE_DIR / "webhook-secret-keys"
    if not path.exists():
        path.write_text(new_key())
        path.chmod(0o600)
    return path.read_text().strip()


def print_delivery(received: Received) -> None:
    try:
        kind = str(received.json().get("type"))
    except ValueError:
        kind = "?"
    check = "signature verified" if received.verified else f"REJECTED ({received.problem})"
    print(
        f"webhook    {kind:20} webhook-id {received.message_id}  {check}, "
        f"answered {received.answered}",
        flush=True,
    )


def register_webhook(api: httpx.Client, receiver: WebhookReceiver) -> None:
    events = ["batch.succeeded", "batch.failed", "batch.dead_lettered"]
    created = api.post("/webhooks", json={"url": receiver.url, "events": events})
    if created.status_code != 201:
        raise CliError(f"webhook registration rejected: {created.status_code} {created.text}")
    receiver.secret = created.json()["secret"]
    print(f"webhook    {created.json()['id']} -> {receiver.url} (secret shown once, kept by it)")


def audit_sample(
    settings: Settings, api_url: str, simulator_url: str, receiver: WebhookReceiver
) -> None:
    sample = load_sample()
    with session_scope(settings.database_url) as session:
        tenant = create_tenant(session, "Administradora Exemplo")
        key = issue_key(session, tenant.id, name="local run")
    print(f"\ntenant     {tenant.id}\napi key    {key.secret}  (shown once)")
    seed_simulator(simulator_url, sample)
    headers = {"X-API-Key": key.secret}
    with httpx.Client(base_url=api_url, headers=headers, timeout=30) as api:
        created = api.post("/condominiums", json=sample["condominium"])
        created.raise_for_status()
        condominium_id = created.json()["id"]
        for batch in sample["history"]:
            task = submit(api, condominium_id, batch)
            wait(api, task)
        register_webhook(api, receiver)
        task = submit(api, condominium_id, sample["batch"])
        print(f"\nsubmitted  POST /batch-expenses -> task {task}")
        status = wait(api, task)
        print(
            f"status     {status['status']}: {status['progress']['done']}/"
            f"{status['progress']['total']} expenses, summary {json.dumps(status['summary'])}"
        )
        findings = api.get(f"/batches/{task}/findings", params={"page_size": 500}).json()
        print(f"\n{findings['total']} findings:")
        for finding in findings["items"]:
            print(f"  [{finding['severity']:8}] {finding['rule_code']:26} {finding['message']}")
    try:
        receiver.wait_for(1, timeout=15)
    except AssertionError:
        print("\nno webhook delivery yet; see the webhooks worker's log")


def submit(api: httpx.Client, condominium_id: str, expenses: list[dict[str, Any]]) -> str:
    response = api.post(
        "/batch-expenses", json={"condominium_id": condominium_id, "expenses": expenses}
    )
    if response.status_code != 202:
        raise CliError(f"sample batch rejected: {response.status_code} {response.text}")
    return str(response.json()["task_id"])


def wait(api: httpx.Client, task_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: dict[str, Any] = api.get(f"/tasks/{task_id}").json()
        if status["status"] in {"SUCCESS", "FAILURE"}:
            return status
        time.sleep(0.2)
    raise CliError(f"task {task_id} did not finish within {timeout:.0f}s")
