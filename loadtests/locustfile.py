"""Month-end load: administrators submit their condominium's month, follow the task until it
ends, then read the findings and the monthly report. With webhooks (the default), they learn
the end from the batch's completion webhook, received and verified in this process, and read
the task's status once; without, they poll GET /tasks/{id} every poll_seconds.

Run by `loadtests/run.py`, which starts the platform, seeds it and writes the plan this file
reads from the file named by LOADTEST_PLAN (condominium ids and API keys, the workload
config, the shape and where to write the end-to-end records).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

from gevent import sleep  # type: ignore[import-untyped]
from gevent.event import Event  # type: ignore[import-untyped]
from locust import FastHttpUser, LoadTestShape, events, task
from locust.env import Environment

from loadtests.shape import MonthEndPeak
from loadtests.slo import E2E_TYPE
from ops.workload import WorkloadConfig, condominium_month
from simulator.webhook_receiver import Received, WebhookReceiver

PLAN: dict[str, Any] = json.loads(Path(os.environ["LOADTEST_PLAN"]).read_text(encoding="utf-8"))
CONFIG = WorkloadConfig(**PLAN["workload"])
PEAK = MonthEndPeak(**PLAN["shape"])
CONDOMINIUMS: list[dict[str, Any]] = PLAN["condominiums"]
E2E_PATH = Path(PLAN["e2e_path"])
POLL_SECONDS: float = PLAN["poll_seconds"]
TASK_TIMEOUT_SECONDS: float = PLAN["task_timeout_seconds"]
ENDED = {"SUCCESS", "FAILURE"}

WEBHOOKS: dict[str, Any] | None = PLAN.get("webhooks")

# Batches whose completion webhook arrived (task id -> Event); the receiver sets them.
_ended: dict[str, Any] = {}


def _ended_event(task_id: str) -> Any:
    return _ended.setdefault(task_id, Event())


def _on_webhook(received: Received) -> None:
    if received.verified:
        _ended_event(str(received.json()["data"]["task_id"])).set()


if WEBHOOKS is not None:
    _receiver = WebhookReceiver(port=WEBHOOKS["port"], on_delivery=_on_webhook)
    _receiver.secrets = list(WEBHOOKS["secrets"])
    _receiver.start()

_next_condominium = itertools.count()
_finished = 0  # administrators done (success, failure or gave up): the shape stops at all


def _seconds_between(start: str, end: str) -> float:
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def _record(environment: Environment, entry: dict[str, Any]) -> None:
    global _finished
    _finished += 1
    with E2E_PATH.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
    if entry["status"] == "SUCCESS":
        # Also in locust's own CSV and HTML report, next to the HTTP latencies.
        environment.events.request.fire(  # type: ignore[no-untyped-call]
            request_type=E2E_TYPE,
            name="submission->SUCCESS",
            response_time=entry["e2e_seconds"] * 1000,
            response_length=0,
            exception=None,
            context={},
        )


class Administrator(FastHttpUser):
    """One administrator with one condominium's month to submit at month end."""

    def on_start(self) -> None:
        index = next(_next_condominium)
        self.condominium = CONDOMINIUMS[index] if index < len(CONDOMINIUMS) else None
        # Users start in arrival order, so the index-th user has the index-th arrival.
        self.arrival_seconds = PEAK.arrivals[index] if index < len(PEAK.arrivals) else 0.0
        self.headers = {"X-API-Key": self.condominium["key"]} if self.condominium else {}

    def _idle(self) -> None:
        while True:
            sleep(3600)

    @task
    def month_end(self) -> None:
        if self.condominium is None:
            self._idle()
        assert self.condominium is not None
        condominium_id = self.condominium["id"]
        month = condominium_month(CONFIG, self.condominium["index"])
        batch = month.batch_request(condominium_id)
        entry: dict[str, Any] = {"condominium": month.ref, "expenses": len(month.expenses)}
        # The shape started this user ahead of its arrival; submit at the arrival itself.
        shape = self.environment.shape_class
        if shape is not None:
            sleep(max(0.0, self.arrival_seconds - shape.get_run_time()))
        with self.client.post(
            "/batch-expenses",
            json=batch,
            headers=self.headers,
            name="/batch-expenses",
            catch_response=True,
        ) as response:
            accepted = response.status_code == 202
            if accepted:
                task_id = str(response.json()["task_id"])
            else:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")
        if not accepted:
            _record(self.environment, {**entry, "status": f"HTTP {response.status_code}"})
            self._idle()
        entry["task_id"] = task_id
        deadline = time.monotonic() + TASK_TIMEOUT_SECONDS
        status: dict[str, Any] = {"status": "PENDING"}
        if WEBHOOKS is not None:
            # Told by the webhook; then one read of the status (the poll loop below is the
            # fallback for a webhook that did not come in time).
            _ended_event(task_id).wait(timeout=max(0.0, deadline - time.monotonic()))
            _ended.pop(task_id, None)
        first = WEBHOOKS is not None
        while status["status"] not in ENDED and time.monotonic() < deadline:
            if not first:
                sleep(POLL_SECONDS)
            first = False
            with self.client.get(
                f"/tasks/{task_id}", headers=self.headers, name="/tasks/[id]", catch_response=True
            ) as polled:
                if polled.status_code == 200:
                    status = polled.json()
                else:
                    polled.failure(f"{polled.status_code}")
        entry["status"] = status["status"]
        if status["status"] == "SUCCESS":
            entry["submitted_at"] = status["submitted_at"]
            entry["finished_at"] = status["finished_at"]
            entry["e2e_seconds"] = _seconds_between(status["submitted_at"], status["finished_at"])
            self.client.get(
                f"/batches/{task_id}/findings?page_size=100",
                headers=self.headers,
                name="/batches/[id]/findings",
            )
            self.client.get(
                f"/condominiums/{condominium_id}/report?period={CONFIG.period}",
                headers=self.headers,
                name="/condominiums/[id]/report",
            )
        elif status["status"] not in ENDED:
            entry["status"] = f"gave up while {status['status']}"
        _record(self.environment, entry)
        self._idle()


class MonthEndShape(LoadTestShape):
    """`loadtests.shape.MonthEndPeak`, stopping once every administrator is done."""

    def tick(self) -> tuple[int, float] | None:
        return PEAK.tick(self.get_run_time(), _finished)  # type: ignore[no-untyped-call]


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _fresh_records(environment: Environment, **_: Any) -> None:
    E2E_PATH.parent.mkdir(parents=True, exist_ok=True)
    E2E_PATH.write_text("", encoding="utf-8")
