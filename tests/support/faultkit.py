"""What every fault test needs: a workload whose right answer is known, and the checks that
nothing was lost.

A workload is made of batch templates. Each batch instance gets its own condominium (so no
batch's history changes another's findings) and its own fresh CNPJs (so every instance
really calls the provider), registered in the simulator with the template's data. The
reference is a clean run of one instance per template: a faulted instance must end with
exactly the reference's findings, as (external_id, rule_code, severity) per expense.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from audit.db import session_scope
from audit.models import AuditLogEntry, Batch, DeadLetter, Expense, Finding
from tests.support.helpers import active_registration, expense, make_cnpj
from tests.support.platform import Platform

TERMINAL = {"SUCCESS", "FAILURE"}

# One registry record per kind; templates combine kinds so findings differ across expenses.
KINDS: dict[str, dict[str, Any]] = {
    "active": active_registration(),
    "absent": {"found": False},
    "closed": {
        **active_registration("Fechada Ltda"),
        "status": "BAIXADA",
        "status_date": "2021-05-04",
    },
    "fresh": active_registration("Nova Ltda", opened_on="2026-09-20"),
    "odd_cnae": active_registration("Mercado Ltda", cnae="4711302"),
}
TEMPLATES: list[list[str]] = [
    ["active", "absent", "closed", "fresh", "odd_cnae", "active"],
    ["absent", "absent", "active", "closed", "active", "fresh"],
    ["odd_cnae", "active", "fresh", "active", "closed", "absent"],
    ["active", "active", "active", "closed", "odd_cnae", "absent"],
]

Signature = list[tuple[str, str, str]]


@dataclasses.dataclass
class Submitted:
    task_id: str
    template: int
    expenses: int


@dataclasses.dataclass
class Outcome:
    """The figures a fault test reports: what was accepted, how it ended, what was lost."""

    fault: str
    batches: int = 0
    expenses: int = 0
    in_flight_batches: int = 0
    in_flight_expenses: int = 0
    success: int = 0
    failure_dead_lettered: int = 0
    lost_batches: int = 0
    lost_expenses: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        return (
            f"FAULT {self.fault}: batches={self.batches} expenses={self.expenses} "
            f"in_flight_batches={self.in_flight_batches} "
            f"in_flight_expenses={self.in_flight_expenses} success={self.success} "
            f"failure_dead_lettered={self.failure_dead_lettered} "
            f"lost_batches={self.lost_batches} lost_expenses={self.lost_expenses}"
        )

    def publish(self) -> None:
        """Print the figures, and append them to $FAULT_FIGURES when set."""
        print(self.line())
        target = os.environ.get("FAULT_FIGURES")
        if target:
            with Path(target).open("a") as out:
                out.write(self.line() + "\n")


class Workload:
    def __init__(self, platform: Platform, label: str | None = None) -> None:
        self.platform = platform
        self.label = label or uuid.uuid4().hex[:8]
        self.submitted: list[Submitted] = []
        self._count = 0

    def _instance(self, template: int) -> tuple[str, list[dict[str, Any]]]:
        self._count += 1
        tag = f"{self.label}-{self._count}"
        items: list[dict[str, Any]] = []
        with self.platform.sim() as sim:
            for slot, kind in enumerate(TEMPLATES[template]):
                cnpj = make_cnpj(f"{tag}-{slot}")
                sim.put(f"/_sim/registrations/{cnpj}", json=KINDS[kind]).raise_for_status()
                amount = f"{(template + 1) * 100 + slot * 7}.50"
                items.append(expense(f"exp-{slot}", cnpj, amount, invoice=f"NF-{slot}"))
        return self.platform.create_condominium(), items

    def submit(self, client: httpx.Client, template: int) -> httpx.Response:
        condominium, items = self._instance(template)
        response = client.post(
            "/batch-expenses", json={"condominium_id": condominium, "expenses": items}
        )
        if response.status_code == 202:
            self.submitted.append(Submitted(response.json()["task_id"], template, len(items)))
        return response

    def submit_many(self, count: int) -> list[Submitted]:
        start = len(self.submitted)
        with self.platform.client() as client:
            for i in range(count):
                response = self.submit(client, i % len(TEMPLATES))
                assert response.status_code == 202, response.text
        return self.submitted[start:]

    def task_ids(self) -> list[str]:
        return [s.task_id for s in self.submitted]

    def in_flight(self) -> tuple[int, int]:
        """Batches (and their expenses) accepted and not finished right now."""
        ids = self.task_ids()
        with session_scope(self.platform.database_url) as session:
            rows = session.execute(
                select(Batch.expenses_total).where(Batch.id.in_(ids), Batch.status.not_in(TERMINAL))
            ).all()
        return len(rows), sum(r[0] for r in rows)

    def statuses(self) -> Counter[str]:
        with session_scope(self.platform.database_url) as session:
            rows = session.execute(
                select(Batch.status, func.count())
                .where(Batch.id.in_(self.task_ids()))
                .group_by(Batch.status)
            ).all()
        return Counter({status: count for status, count in rows})

    def wait_all_terminal(self, timeout: float) -> Counter[str]:
        deadline = time.monotonic() + timeout
        counts: Counter[str] = Counter()
        while time.monotonic() < deadline:
            try:
                counts = self.statuses()
            except Exception:  # the database may be the fault under test
                time.sleep(0.5)
                continue
            if sum(counts[s] for s in TERMINAL) == len(self.submitted):
                return counts
            time.sleep(0.25)
        tails = "\n".join(
            f"--- {name}\n{p.log_tail(30)}" for name, p in self.platform.processes.items()
        )
        raise AssertionError(f"not all batches finished in {timeout}s: {dict(counts)}\n{tails}")


def signature(platform: Platform, task_id: str) -> Signature:
    with session_scope(platform.database_url) as session:
        rows = session.execute(
            select(Expense.external_id, Finding.rule_code, Finding.severity)
            .select_from(Finding)
            .join(Expense, Expense.id == Finding.expense_id, isouter=True)
            .where(Finding.batch_id == task_id)
        ).all()
    return sorted((ext or "-", rule, severity) for ext, rule, severity in rows)


def reference(platform: Platform) -> dict[int, Signature]:
    """One clean run per template, before any fault."""
    clean = Workload(platform, label=f"ref-{uuid.uuid4().hex[:6]}")
    with platform.client() as client:
        for template in range(len(TEMPLATES)):
            assert clean.submit(client, template).status_code == 202
    counts = clean.wait_all_terminal(120)
    assert counts["SUCCESS"] == len(TEMPLATES), counts
    result = {s.template: signature(platform, s.task_id) for s in clean.submitted}
    for template, found in result.items():
        assert found, f"template {template} has no findings: a weak reference"
    return result


def verify(workload: Workload, expected: dict[int, Signature], outcome: Outcome) -> Outcome:
    """Every batch SUCCESS with the reference's findings exactly once, or FAILURE with a dead
    letter that says why; the audit log starts with 'submitted' and ends with the ending."""
    platform = workload.platform
    outcome.batches = len(workload.submitted)
    outcome.expenses = sum(s.expenses for s in workload.submitted)
    with session_scope(platform.database_url) as session:
        duplicates = session.execute(
            select(Finding.batch_id, Finding.fingerprint, func.count())
            .where(Finding.batch_id.in_(workload.task_ids()))
            .group_by(Finding.batch_id, Finding.fingerprint)
            .having(func.count() > 1)
        ).all()
    for batch_id, fingerprint, count in duplicates:
        outcome.problems.append(f"{batch_id}: finding {fingerprint} stored {count} times")
    for item in workload.submitted:
        problem = _check_batch(platform, item, expected[item.template])
        if problem is None:
            continue
        outcome.problems.append(problem)
        outcome.lost_batches += 1
        outcome.lost_expenses += item.expenses
    with session_scope(platform.database_url) as session:
        rows = session.execute(
            select(Batch.status, func.count())
            .where(Batch.id.in_(workload.task_ids()))
            .group_by(Batch.status)
        ).all()
    counts = dict(rows)
    outcome.success = counts.get("SUCCESS", 0)
    outcome.failure_dead_lettered = counts.get("FAILURE", 0)
    return outcome


def _check_batch(platform: Platform, item: Submitted, expected: Signature) -> str | None:
    with session_scope(platform.database_url) as session:
        batch = session.get(Batch, item.task_id)
        if batch is None:
            return f"{item.task_id}: accepted but not stored"
        events = list(
            session.scalars(
                select(AuditLogEntry.event)
                .where(AuditLogEntry.batch_id == item.task_id)
                .order_by(AuditLogEntry.id)
            )
        )
        letters = list(
            session.scalars(select(DeadLetter).where(DeadLetter.batch_id == item.task_id))
        )
        status, done, total, error = (
            batch.status,
            batch.expenses_done,
            batch.expenses_total,
            batch.error,
        )
        open_letters = [letter for letter in letters if letter.status == "OPEN"]
        letter_errors = [letter.error for letter in open_letters]
    if not events or events[0] != "submitted":
        return f"{item.task_id}: audit log does not start with 'submitted': {events}"
    if status == "SUCCESS":
        if events[-1] != "finished":
            return f"{item.task_id}: SUCCESS but the audit log ends {events[-3:]}"
        if done != total:
            return f"{item.task_id}: SUCCESS with progress {done}/{total}"
        found = signature(platform, item.task_id)
        if found != expected:
            return f"{item.task_id}: findings {found} differ from the reference {expected}"
        return None
    if status == "FAILURE":
        if len(open_letters) != 1 or not all(letter_errors) or not error:
            return f"{item.task_id}: FAILURE without one open dead letter saying why"
        if events[-1] != "dead_lettered":
            return f"{item.task_id}: FAILURE but the audit log ends {events[-3:]}"
        return None
    return f"{item.task_id}: still {status}"


def child_pids(pid: int) -> list[int]:
    """Direct children of a process, from /proc (the prefork pool's processes)."""
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children
