"""A condominium's monthly report: what was audited, what was found, what the bank lacks."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from audit.batches import BatchStatus
from audit.models import BankTransaction, Batch, Expense, Finding, SupplierRegistration

TOP_SUPPLIERS = 10


def parse_period(period: str) -> tuple[dt.date, dt.date]:
    """'2026-10' -> (2026-10-01, 2026-11-01); ValueError with the reason otherwise."""
    try:
        start = dt.datetime.strptime(period, "%Y-%m").date()
    except ValueError:
        raise ValueError("period must be YYYY-MM, e.g. 2026-10") from None
    end = dt.date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return start, end


def monthly_report(session: Session, condominium_id: str, period: str) -> dict[str, Any]:
    start, end = parse_period(period)
    audited = (
        select(Expense)
        .join(Batch, Batch.id == Expense.batch_id)
        .where(
            Expense.condominium_id == condominium_id,
            Expense.expense_date >= start,
            Expense.expense_date < end,
            Batch.status == BatchStatus.SUCCESS,
        )
        .subquery()
    )
    count, total = session.execute(
        select(func.count(), func.coalesce(func.sum(audited.c.amount), 0))
    ).one()

    finding_rows = session.execute(
        select(Finding.rule_code, Finding.severity, func.count())
        .join(audited, audited.c.id == Finding.expense_id)
        .group_by(Finding.rule_code, Finding.severity)
    ).all()
    by_rule: dict[str, int] = {}
    by_severity: dict[str, int] = {}
    for rule_code, severity, n in finding_rows:
        by_rule[rule_code] = by_rule.get(rule_code, 0) + n
        by_severity[severity] = by_severity.get(severity, 0) + n

    supplier_rows = session.execute(
        select(
            audited.c.supplier_cnpj,
            SupplierRegistration.legal_name,
            func.count(),
            func.sum(audited.c.amount),
        )
        .outerjoin(SupplierRegistration, SupplierRegistration.cnpj == audited.c.supplier_cnpj)
        .group_by(audited.c.supplier_cnpj, SupplierRegistration.legal_name)
        .order_by(func.sum(audited.c.amount).desc(), audited.c.supplier_cnpj)
        .limit(TOP_SUPPLIERS)
    ).all()

    unmatched_rows = session.execute(
        select(
            audited.c.id,
            audited.c.external_id,
            audited.c.supplier_cnpj,
            audited.c.amount,
            audited.c.expense_date,
        )
        .join(
            Finding,
            and_(Finding.expense_id == audited.c.id, Finding.rule_code == "NO_BANK_MATCH"),
        )
        .order_by(audited.c.expense_date, audited.c.id)
    ).all()
    matched = session.scalar(
        select(func.count())
        .select_from(BankTransaction)
        .where(BankTransaction.matched_expense_id.in_(select(audited.c.id)))
    )
    return {
        "condominium_id": condominium_id,
        "period": period,
        "expenses_audited": count,
        "amount_audited": money(total),
        "expenses_matched_to_bank": matched or 0,
        "findings": {
            "total": sum(by_rule.values()),
            "by_rule": dict(sorted(by_rule.items())),
            "by_severity": dict(sorted(by_severity.items())),
        },
        "top_suppliers": [
            {"cnpj": cnpj, "legal_name": name, "expenses": n, "amount": money(amount)}
            for cnpj, name, n, amount in supplier_rows
        ],
        "unmatched_expenses": [
            {
                "expense_id": expense_id,
                "external_id": external_id,
                "supplier_cnpj": cnpj,
                "amount": money(amount),
                "date": day.isoformat(),
            }
            for expense_id, external_id, cnpj, amount, day in unmatched_rows
        ],
    }


def money(value: Decimal | int | float) -> str:
    return str(Decimal(str(value)).quantize(Decimal("0.01")))
