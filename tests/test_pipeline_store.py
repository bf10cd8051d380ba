"""What the worker reads and writes for a batch, on SQLite and PostgreSQL alike (PostgreSQL
takes the bank rows as one JSON document, their pairings with them, SQLite executemany)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from decimal import Decimal
from typing import cast

import pytest
from pydantic import ValidationError
from redis import Redis
from sqlalchemy import select, text
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from audit import pgbatch
from audit.auditlog import AuditLogService
from audit.auth import create_tenant
from audit.batches import ExpenseInput, findings_summary, submit_batch
from audit.db import make_engine, session_factory, session_scope
from audit.models import BankTransaction, Batch, Condominium, Finding
from audit.pipeline import (
    BatchAuditor,
    SupplierSource,
    load_history,
    load_work,
    store_result,
    store_transactions,
    summarize,
)
from audit.providers.base import (
    BankTransactionRecord,
    CnpjLookup,
    Registration,
    RegistrationStatus,
)
from audit.rules import BatchEvaluation, FindingDraft, RuleCode, Severity, fingerprint
from audit.suppliers import SupplierDirectory, upsert_registration
from tests.support.helpers import make_cnpj

DAY = dt.date(2026, 10, 10)
SUPPLIER = "11222333000181"


def submit(url: str, condominium_id: str, tenant_id: str, days: list[dt.date]) -> str:
    expenses = [
        ExpenseInput(
            external_id=f"e{n}",
            supplier_cnpj=SUPPLIER,
            amount=Decimal("100.50") + n,
            expense_date=day,
            description="Serviço",
            category="manutencao",
            invoice_number=None,
        )
        for n, day in enumerate(days)
    ]
    with session_scope(url) as session:
        return submit_batch(session, tenant_id, condominium_id, expenses).batch_id


def setup(url: str) -> tuple[str, str]:
    with session_scope(url) as session:
        tenant = create_tenant(session, "store")
        condominium = Condominium(tenant_id=tenant.id, name="C", audit_settings={})
        session.add(condominium)
        session.flush()
        return tenant.id, condominium.id


def record(n: int, **overrides: object) -> BankTransactionRecord:
    values: dict[str, object] = {
        "id": f"tx{n}",
        "account_id": "acc",
        "date": DAY + dt.timedelta(days=n),
        "description": f"PIX {n}",
        "amount": -(Decimal("100.50") + n),
        "type": "DEBIT",
        "status": "POSTED",
        "receiver_document": SUPPLIER if n % 2 else None,
    }
    values.update(overrides)
    return BankTransactionRecord(**values)  # type: ignore[arg-type]


def stored_records(session: Session) -> list[BankTransactionRecord]:
    """The stored bank rows in the order they were inserted, as the provider's records."""
    rows = session.scalars(select(BankTransaction).order_by(BankTransaction.id)).all()
    return [
        BankTransactionRecord(
            id=r.provider_transaction_id,
            account_id=r.account_id,
            date=r.date,
            description=r.description,
            amount=r.amount,
            type=r.type,
            status=r.status,
            receiver_document=r.receiver_document,
        )
        for r in rows
    ]


def test_transactions_are_stored_once_with_every_column(database_url: str) -> None:
    _, condominium_id = setup(database_url)
    records = [record(n) for n in range(5)] + [record(5, description="x" * 600)]
    with session_scope(database_url) as session:
        store_transactions(session, condominium_id, records)
    with session_scope(database_url) as session:
        store_transactions(session, condominium_id, [*records, record(6)])
        store_transactions(session, condominium_id, [])
    with session_scope(database_url) as session:
        condominiums = set(session.scalars(select(BankTransaction.condominium_id)))
        stored = stored_records(session)
    assert condominiums == {condominium_id}
    expected = [*records[:5], record(5, description="x" * 500), record(6)]
    assert stored == expected


def test_a_rerun_replaces_the_batch_s_matches_and_findings(database_url: str) -> None:
    tenant_id, condominium_id = setup(database_url)
    batch_id = submit(database_url, condominium_id, tenant_id, [DAY, DAY, DAY])
    with session_scope(database_url) as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        expenses = load_work(session, batch).expenses
        store_transactions(session, condominium_id, [record(n) for n in range(3)])
    first, second, third = (e.expense_id for e in expenses)

    def finding(expense_id: int, code: RuleCode, severity: Severity) -> FindingDraft:
        return FindingDraft(code, severity, "m", {}, expense_id, fingerprint(code, expense_id))

    runs = [
        BatchEvaluation(
            findings=[
                finding(first, RuleCode.NO_BANK_MATCH, Severity.WARNING),
                finding(second, RuleCode.AMOUNT_OUTLIER, Severity.INFO),
                finding(third, RuleCode.NO_BANK_MATCH, Severity.WARNING),
            ],
            matches={first: "tx0", second: "tx1"},
        ),
        BatchEvaluation(
            findings=[finding(first, RuleCode.DUPLICATE_PAYMENT, Severity.CRITICAL)],
            matches={third: "tx2"},
        ),
    ]
    for result in runs:
        with session_scope(database_url) as session:
            store_result(session, batch_id, condominium_id, result, expenses)
        with session_scope(database_url) as session:
            matched = dict(
                session.execute(
                    select(
                        BankTransaction.provider_transaction_id, BankTransaction.matched_expense_id
                    )
                ).all()
            )
            assert {k: v for k, v in matched.items() if v is not None} == {
                tx: expense_id for expense_id, tx in result.matches.items()
            }
            assert findings_summary(session, batch_id) == summarize(result.findings)


def test_history_is_the_condominium_s_other_batches_within_the_window(database_url: str) -> None:
    tenant_id, condominium_id = setup(database_url)
    _, other_condominium = setup(database_url)
    old = submit(database_url, condominium_id, tenant_id, [DAY - dt.timedelta(days=400)])
    recent = submit(database_url, condominium_id, tenant_id, [DAY - dt.timedelta(days=300)])
    later = submit(database_url, condominium_id, tenant_id, [DAY + dt.timedelta(days=20)])
    with session_scope(database_url) as session:
        other_tenant = session.get(Condominium, other_condominium)
        assert other_tenant is not None
        other_tenant_id = other_tenant.tenant_id
    submit(database_url, other_condominium, other_tenant_id, [DAY])
    batch_id = submit(database_url, condominium_id, tenant_id, [DAY, DAY])
    with session_scope(database_url) as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        expenses = load_work(session, batch).expenses
        history = load_history(session, condominium_id, batch_id, expenses)
        batches = {
            e.expense_id: b
            for b in (old, recent, later)
            for e in load_work(session, session.get_one(Batch, b)).expenses
        }
    assert sorted(batches[h.expense_id] for h in history) == sorted([recent, later])


def test_history_rules_see_the_condominium_s_other_batches(database_url: str) -> None:
    """What the history rules read of the other batches (in full on SQLite; on PostgreSQL the
    batch's suppliers' expenses in full and the others' amounts by category): a repeated
    invoice of the supplier is a duplicate, and an amount far above what other suppliers were
    paid in its category ('Manutenção ' and 'manutencao' are one) is an outlier; the year's
    window and the condominium bound both."""
    tenant_id, condominium_id = setup(database_url)
    _, elsewhere = setup(database_url)
    others = [make_cnpj(f"history-{n}") for n in range(3)]

    def item(
        external_id: str, supplier: str, amount: str, days_before: int, category: str, invoice: str
    ) -> ExpenseInput:
        return ExpenseInput(
            external_id=external_id,
            supplier_cnpj=supplier,
            amount=Decimal(amount),
            expense_date=DAY - dt.timedelta(days=days_before),
            description="Serviço",
            category=category,
            invoice_number=invoice,
        )

    past = [
        item(f"h{n}", others[n % 3], f"{100 + n}.00", 30 + n, ("Manutenção ", "manutencao")[n % 2],
             f"{n}")
        for n in range(8)
    ]  # fmt: skip
    past.append(item("paid-before", SUPPLIER, "50.00", 60, "limpeza", "NF 77"))
    past.append(item("too-old", others[0], "9000.00", 400, "manutencao", "1"))
    with session_scope(database_url) as session:
        submit_batch(session, tenant_id, condominium_id, past)
        elsewhere_tenant = session.get_one(Condominium, elsewhere).tenant_id
        submit_batch(
            session,
            elsewhere_tenant,
            elsewhere,
            [item("elsewhere", others[1], "1.00", 5, "manutencao", "2")],
        )
        batch_id = submit_batch(
            session,
            tenant_id,
            condominium_id,
            [item("big", SUPPLIER, "5000.00", 0, "MANUTENÇÃO", "NF-e 000077")],
        ).batch_id
    auditor = BatchAuditor(session_factory(database_url), cached_supplier(database_url), None)
    run_batch(auditor, batch_id)
    with session_scope(database_url) as session:
        findings = {
            (f.rule_code, f.evidence.get("scope")): f.evidence
            for f in session.scalars(select(Finding).where(Finding.batch_id == batch_id))
        }
    duplicate = findings[("DUPLICATE_PAYMENT", None)]
    assert [r["external_id"] for r in duplicate["repeats"]] == ["paid-before"]
    outlier = findings[("AMOUNT_OUTLIER", "category")]
    assert (outlier["history_count"], outlier["history_min"], outlier["history_max"]) == (
        8,
        "100.00",
        "107.00",
    )
    assert ("AMOUNT_OUTLIER", "supplier") not in findings  # one earlier payment is too few


def test_settings_the_rules_reject_fail_the_audit_not_the_start(database_url: str) -> None:
    """The worker reads the batch in the transaction that marks it started; settings that do
    not validate must not undo that start: the audit, after it, rejects them."""
    tenant_id, condominium_id = setup(database_url)
    with session_scope(database_url) as session:
        stored = session.get_one(Condominium, condominium_id)
        stored.audit_settings = {"match_window_days": 9999}
    batch_id = submit(database_url, condominium_id, tenant_id, [DAY])
    with session_scope(database_url) as session:
        work = load_work(session, session.get_one(Batch, batch_id))
    assert work.stored_settings == {"match_window_days": 9999}
    auditor = BatchAuditor(
        session_factory(database_url), cast(SupplierSource, object()), transactions=None
    )
    with pytest.raises(ValidationError, match="match_window_days"):
        auditor.audit(work)


class FixedTransactions:
    """A TransactionSource that answers every fetch with the same bank rows."""

    name = "fixed"

    def __init__(self, records: list[BankTransactionRecord]) -> None:
        self.records = records

    def fetch(self, account_id: str, start: dt.date, end: dt.date) -> list[BankTransactionRecord]:
        return [r for r in self.records if start <= r.date <= end]


def cached_supplier(url: str) -> SupplierDirectory:
    """The directory over a cache that already holds the supplier (no lookup is made)."""
    with session_scope(url) as session:
        upsert_registration(
            session,
            Registration(SUPPLIER, True, "test", "Fornecedor", RegistrationStatus.ATIVA,
                         opened_on=dt.date(2010, 1, 1)),
        )  # fmt: skip
    return SupplierDirectory(
        session_factory(url), cast(CnpjLookup, object()), Redis.from_url("redis://127.0.0.1:1")
    )


def test_a_run_starts_audits_and_records_the_batch(database_url: str) -> None:
    """begin() and audit(), the worker's two transactions (one pipeline each on PostgreSQL):
    the start and its audit entry, the inputs read, the result and the trail written."""
    tenant_id, condominium_id = setup(database_url)
    with session_scope(database_url) as session:
        session.get_one(Condominium, condominium_id).pluggy_account_id = "acc"
    batch_id = submit(database_url, condominium_id, tenant_id, [DAY, DAY + dt.timedelta(days=2)])
    auditor = BatchAuditor(
        session_factory(database_url),
        cached_supplier(database_url),
        FixedTransactions([record(0, receiver_document=SUPPLIER), record(7)]),
    )
    begun = auditor.begin(batch_id)
    assert begun is not None
    work, attempt = begun
    assert attempt == 1
    assert (work.tenant_id, work.condominium_id, work.account_id) == (
        tenant_id,
        condominium_id,
        "acc",
    )
    assert [e.external_id for e in work.expenses] == ["e0", "e1"]
    assert set(work.registrations) == {SUPPLIER}
    with session_scope(database_url) as session:
        assert session.get_one(Batch, batch_id).status == "STARTED"

    outcome = auditor.audit(work)
    assert outcome.deliveries == 0
    with session_scope(database_url) as session:
        batch = session.get_one(Batch, batch_id)
        assert (batch.status, batch.expenses_done, batch.error) == ("SUCCESS", 2, None)
        assert batch.summary == outcome.summary == findings_summary(session, batch_id)
        assert batch.started_at is not None
        assert batch.finished_at is not None
        assert outcome.summary["by_rule"].get("NO_BANK_MATCH") == 1  # e1 has no payment
        matched = dict(
            session.execute(
                select(BankTransaction.provider_transaction_id, BankTransaction.matched_expense_id)
            ).all()
        )
        # tx7 is stored too, but pays nothing (its amount is no expense's). On PostgreSQL it
        # is sent with the inputs' reads, tx0 with the result: both whole.
        assert matched == {"tx0": work.expenses[0].expense_id, "tx7": None}
        stored = sorted(stored_records(session), key=lambda r: r.id)
        assert stored == [record(0, receiver_document=SUPPLIER), record(7)]
        trail = [(e.event, e.attempt, e.detail) for e in AuditLogService(session).entries(batch_id)]
    assert trail[1:] == [("started", 1, {}), ("finished", None, outcome.summary)]
    # Finished: a duplicate message finds nothing to do and writes nothing.
    assert auditor.begin(batch_id) is None
    with session_scope(database_url) as session:
        assert len(AuditLogService(session).entries(batch_id)) == len(trail)

    # A re-run (a recovered batch) replaces the matches: a stale pairing of e1 goes.
    e0, e1 = (e.expense_id for e in work.expenses)
    with session_scope(database_url) as session:
        session.get_one(Batch, batch_id).status = "RETRY"
        stale = session.scalars(
            select(BankTransaction).where(BankTransaction.provider_transaction_id == "tx7")
        ).one()
        stale.matched_expense_id = e1
    rerun = auditor.begin(batch_id)
    assert rerun is not None
    assert rerun[1] == 1
    assert auditor.audit(rerun[0]).summary == outcome.summary
    with session_scope(database_url) as session:
        matched = dict(
            session.execute(
                select(BankTransaction.provider_transaction_id, BankTransaction.matched_expense_id)
            ).all()
        )
        assert matched == {"tx0": e0, "tx7": None}
        assert findings_summary(session, batch_id) == outcome.summary
        events = [e.event for e in AuditLogService(session).entries(batch_id)]
    assert events[-4:] == ["started", "finished", "started", "finished"]


def test_an_unknown_batch_is_not_started(database_url: str) -> None:
    auditor = BatchAuditor(
        session_factory(database_url), cast(SupplierSource, object()), transactions=None
    )
    assert auditor.begin("no-such-batch") is None


@pytest.mark.postgres
def test_a_driver_error_on_the_pipelined_path_is_sqlalchemy_s(postgres_url: str) -> None:
    """The worker's retry policy tells SQLAlchemy's exception classes apart (the pipelined
    path is PostgreSQL's)."""
    with (
        pytest.raises(DataError, match="division by zero"),
        session_scope(postgres_url) as session,
        pgbatch.driver(session) as raw,
        raw.pipeline(),
    ):
        raw.execute("SELECT 1 / 0")


@pytest.mark.postgres
def test_after_a_dropped_connection_the_next_transaction_gets_a_live_one(
    postgres_url: str,
) -> None:
    """The worker's engine does not ping before use: the first transaction on connections
    the server dropped fails (the task retries it, uncounted), and the ones after must not
    meet the pool's other dead connections."""
    engine = make_engine(postgres_url, pool_size=2, pre_ping=False)
    sessions = sessionmaker(engine)
    try:
        with sessions() as first, sessions() as second:  # two connections in the pool
            pids = [
                s.execute(text("SELECT pg_backend_pid()")).scalar_one() for s in (first, second)
            ]
        with session_scope(postgres_url) as admin:
            admin.execute(
                text("SELECT pg_terminate_backend(pid) FROM unnest(:pids) AS pid"), {"pids": pids}
            )
        with (
            pytest.raises(OperationalError) as dropped,
            sessions.begin() as session,
            pgbatch.driver(session) as raw,
            raw.pipeline(),
        ):
            raw.execute("SELECT 1")
        assert dropped.value.connection_invalidated
        for _ in range(2):
            with sessions.begin() as session, pgbatch.driver(session) as raw:
                assert raw.execute("SELECT 1").fetchone() == (1,)
    finally:
        engine.dispose()


def run_batch(auditor: BatchAuditor, batch_id: str) -> dict[str, object]:
    begun = auditor.begin(batch_id)
    assert begun is not None
    return auditor.audit(begun[0]).summary


def pairings(url: str) -> dict[str, int | None]:
    with session_scope(url) as session:
        return dict(
            session.execute(
                select(BankTransaction.provider_transaction_id, BankTransaction.matched_expense_id)
            ).all()
        )


def expense_ids(url: str, batch_id: str) -> list[int]:
    with session_scope(url) as session:
        return [e.expense_id for e in load_work(session, session.get_one(Batch, batch_id)).expenses]


def test_a_fetched_row_already_stored_counts_as_stored(database_url: str) -> None:
    """Each month's fetch overlaps the last: a row another batch paired with its expense is
    no candidate however often it is fetched again, and a stored row nobody paired is paired
    in place."""
    tenant_id, condominium_id = setup(database_url)
    with session_scope(database_url) as session:
        session.get_one(Condominium, condominium_id).pluggy_account_id = "acc"
    earlier = submit(database_url, condominium_id, tenant_id, [DAY])
    later = submit(database_url, condominium_id, tenant_id, [DAY, DAY])
    auditor = BatchAuditor(
        session_factory(database_url),
        cached_supplier(database_url),
        FixedTransactions([record(0), record(1)]),
    )
    run_batch(auditor, earlier)
    (paid_earlier,) = expense_ids(database_url, earlier)
    assert pairings(database_url) == {"tx0": paid_earlier, "tx1": None}

    summary = run_batch(auditor, later)
    first, second = expense_ids(database_url, later)
    # tx0 could pay the later batch's first expense too, but the earlier batch has it.
    assert pairings(database_url) == {"tx0": paid_earlier, "tx1": second}
    assert summary["by_rule"]["NO_BANK_MATCH"] == 1  # type: ignore[index]
    with session_scope(database_url) as session:
        unpaid = session.scalars(
            select(Finding.expense_id).where(
                Finding.batch_id == later, Finding.rule_code == "NO_BANK_MATCH"
            )
        ).all()
    assert unpaid == [first]


@pytest.mark.postgres
def test_a_fetched_row_pays_as_it_is_stored(postgres_url: str) -> None:
    """A candidate taken from the fetched page is the row a later batch reads back: the amount
    in cents as numeric(14, 2) rounds it, the description cut to its column."""
    tenant_id, condominium_id = setup(postgres_url)
    with session_scope(postgres_url) as session:
        session.get_one(Condominium, condominium_id).pluggy_account_id = "acc"
    batch_id = submit(postgres_url, condominium_id, tenant_id, [DAY])
    fetched = record(0, amount=Decimal("-100.495"), description="y" * 600)
    auditor = BatchAuditor(
        session_factory(postgres_url), cached_supplier(postgres_url), FixedTransactions([fetched])
    )
    first = run_batch(auditor, batch_id)
    assert "NO_BANK_MATCH" not in first["by_rule"]  # type: ignore[operator]
    (expense_id,) = expense_ids(postgres_url, batch_id)
    with session_scope(postgres_url) as session:
        stored = session.scalars(select(BankTransaction)).one()
        assert (stored.amount, stored.description, stored.matched_expense_id) == (
            Decimal("-100.50"),
            "y" * 500,
            expense_id,
        )
        session.get_one(Batch, batch_id).status = "RETRY"
    assert run_batch(auditor, batch_id) == first  # the re-run reads the stored row


@pytest.mark.postgres
def test_two_batches_of_a_condominium_never_pair_one_debit_twice(postgres_url: str) -> None:
    """A batch reads its candidates only once the condominium's other batch in flight has
    stored its pairings (a lock per condominium, held to the commit). Here the other batch
    is a transaction holding that lock with tx0 paired but not yet committed."""
    tenant_id, condominium_id = setup(postgres_url)
    with session_scope(postgres_url) as session:
        session.get_one(Condominium, condominium_id).pluggy_account_id = "acc"
    first = submit(postgres_url, condominium_id, tenant_id, [DAY])
    second = submit(postgres_url, condominium_id, tenant_id, [DAY])
    (paid_first,) = expense_ids(postgres_url, first)
    auditor = BatchAuditor(
        session_factory(postgres_url), cached_supplier(postgres_url), FixedTransactions([record(0)])
    )
    begun = auditor.begin(second)
    assert begun is not None
    engine = make_engine(postgres_url)
    outcome: list[dict[str, object]] = []
    try:
        with engine.connect() as holder:
            holder.execute(
                text("SELECT pg_advisory_xact_lock(:space, hashtext(:condominium))"),
                {"space": pgbatch.CONDOMINIUM_LOCK_SPACE, "condominium": condominium_id},
            )
            holder.execute(
                text(
                    "INSERT INTO bank_transactions (condominium_id, provider_transaction_id, "
                    "account_id, date, amount, description, type, status, matched_expense_id) "
                    "VALUES (:c, 'tx0', 'acc', :day, -100.50, 'PIX 0', 'DEBIT', 'POSTED', :e)"
                ),
                {"c": condominium_id, "day": DAY, "e": paid_first},
            )
            worker = threading.Thread(
                target=lambda: outcome.append(auditor.audit(begun[0]).summary)
            )
            worker.start()
            deadline = time.monotonic() + 30
            while not holder.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
                )
            ).scalar_one():
                assert worker.is_alive(), "the batch read its inputs without waiting"
                assert time.monotonic() < deadline
                time.sleep(0.05)
            holder.commit()
        worker.join(30)
    finally:
        engine.dispose()
    (summary,) = outcome
    assert summary["by_rule"]["NO_BANK_MATCH"] == 1  # type: ignore[index]
    assert pairings(postgres_url) == {"tx0": paid_first}
