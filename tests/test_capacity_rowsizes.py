"""The sizing model's bytes per row, checked against PostgreSQL holding generated rows."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, insert, text

from audit import models
from audit.cnpj import normalize_cnpj
from ops.capacity import ROW_BYTES
from ops.scratchdb import create_scratch_database, drop_scratch_database, postgres_unavailable
from ops.workload import WorkloadConfig, generate

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TOLERANCE = 0.3

# Fills PostgreSQL with generated rows: slow, and only where PostgreSQL answers.
pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    reason = postgres_unavailable(ADMIN_URL)
    if reason is not None:
        pytest.skip(reason)
    url = create_scratch_database(ADMIN_URL, "condo_rowsizes")
    db = create_engine(url)
    try:
        models.Base.metadata.create_all(db)
        yield db
    finally:
        db.dispose()
        drop_scratch_database(ADMIN_URL, url)


def _rows(condominiums: int) -> dict[str, list[dict[str, Any]]]:
    """Rows as the platform would write them for a generated month."""
    tenant = str(uuid.uuid4())
    now = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
    out: dict[str, list[dict[str, Any]]] = {
        "tenants": [{"id": tenant, "name": "Administradora Exemplo", "created_at": now}],
        "condominiums": [],
        "batches": [],
        "expenses": [],
        "bank_transactions": [],
        "findings": [],
        "audit_log": [],
        "supplier_registrations": [],
    }
    seen: set[str] = set()
    expense_id = 0
    for month in generate(WorkloadConfig(condominiums=condominiums, seed=11)):
        condo, batch = str(uuid.uuid4()), str(uuid.uuid4())
        out["condominiums"].append(
            {"id": condo, "tenant_id": tenant, **month.condominium_request(), "audit_settings": {}}
        )
        out["batches"].append(
            {
                "id": batch,
                "tenant_id": tenant,
                "condominium_id": condo,
                "idempotency_key": f"{month.ref}-{month.period}",
                "status": "SUCCESS",
                "expenses_total": len(month.expenses),
                "expenses_done": len(month.expenses),
                "summary": {
                    "expenses": len(month.expenses),
                    "findings": len(month.planted),
                    "by_rule": {p.kind: len(p.external_ids) for p in month.planted},
                    "by_severity": {"critical": 1, "warning": 0, "info": 0},
                    "amount_total": "123456.78",
                },
                "trace_id": uuid.uuid4().hex,
                "submitted_at": now,
                "started_at": now,
                "finished_at": now,
            }
        )
        ids = {}
        for e in month.expenses:
            expense_id += 1
            ids[e["external_id"]] = expense_id
            out["expenses"].append(
                {
                    "id": expense_id,
                    "batch_id": batch,
                    "condominium_id": condo,
                    "external_id": e["external_id"],
                    "supplier_cnpj": normalize_cnpj(e["supplier_cnpj"]),
                    "amount": Decimal(e["amount"]),
                    "expense_date": dt.date.fromisoformat(e["date"]),
                    "description": e["description"],
                    "category": e["category"],
                    "invoice_number": e["invoice_number"],
                }
            )
        for tx in month.transactions:
            document = (tx["paymentData"] or {}).get("receiver", {}).get("documentNumber", {})
            out["bank_transactions"].append(
                {
                    "condominium_id": condo,
                    "provider_transaction_id": tx["id"],
                    "account_id": tx["accountId"],
                    "date": dt.date.fromisoformat(tx["date"]),
                    "amount": Decimal(str(tx["amount"])),
                    "description": tx["description"],
                    "type": tx["type"],
                    "status": tx["status"],
                    "receiver_document": document.get("value"),
                }
            )
        for planted in month.planted:
            for external_id in planted.external_ids:
                out["findings"].append(
                    {
                        "batch_id": batch,
                        "condominium_id": condo,
                        "expense_id": ids[external_id],
                        "rule_code": planted.kind,
                        "severity": "critical",
                        "message": "Fornecedor com situação cadastral irregular na data da "
                        "despesa; pagamento sem transação bancária correspondente.",
                        "evidence": {
                            "supplier_cnpj": planted.supplier_cnpj,
                            "amount": "1234.56",
                            "window_days": 5,
                            "candidates": 0,
                            **planted.detail,
                        },
                        "fingerprint": hashlib.sha256(external_id.encode()).hexdigest(),
                        "created_at": now,
                    }
                )
        for attempt, event in enumerate(("submitted", "started", "rate_limited", "finished")):
            out["audit_log"].append(
                {
                    "batch_id": batch,
                    "event": event,
                    "attempt": attempt,
                    "detail": {"worker": "worker@condo-audit-worker-7d9f", "expenses": 50},
                    "trace_id": uuid.uuid4().hex,
                    "created_at": now,
                }
            )
        for cnpj, supplier in month.suppliers.items():
            if cnpj in seen:
                continue
            seen.add(cnpj)
            record = supplier.registry_record()
            out["supplier_registrations"].append(
                {
                    "cnpj": cnpj,
                    "found": record["found"],
                    "legal_name": record["legal_name"],
                    "status": record["status"],
                    "status_date": supplier.status_date if supplier.found else None,
                    "opened_on": supplier.opened_on if supplier.found else None,
                    "main_cnae": record["main_cnae"],
                    "legal_nature": "206-2 - Sociedade Empresária Limitada",
                    "is_mei": False,
                    "is_simples": True,
                    "provider": "cnpjws",
                    "fetched_at": now,
                }
            )
    return out


def test_row_bytes_match_postgresql(engine: Engine) -> None:
    rows = _rows(condominiums=400)
    tables = models.Base.metadata.tables
    size = "select pg_total_relation_size(:table)"
    with engine.connect() as conn:
        # An empty table already takes a few pages per index; count only the growth.
        empty = {t: conn.execute(text(size), {"table": t}).scalar_one() for t in ROW_BYTES}
    with engine.begin() as conn:
        for table, records in rows.items():
            for start in range(0, len(records), 2000):
                conn.execute(insert(tables[table]), records[start : start + 2000])
    measured: dict[str, float] = {}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
        for table in ROW_BYTES:
            total = conn.execute(text(size), {"table": table}).scalar_one()
            measured[table] = (total - empty[table]) / len(rows[table])
    print("measured bytes per row:", {t: round(b) for t, b in measured.items()})
    for table, expected in ROW_BYTES.items():
        assert abs(expected - measured[table]) <= TOLERANCE * measured[table], (
            f"{table}: model {expected} B/row, PostgreSQL {measured[table]:.0f} B/row"
        )
