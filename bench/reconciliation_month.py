"""Reconciling one condominium's month: 5,000 stored bank transactions against its expenses.

    python -m bench.reconciliation_month [--transactions N] [--expenses N] [--database-url URL]

Measures what the worker does after the providers answered: the candidate query on the
(condominium_id, date, amount) index, and the rules with the one-to-one matcher, on a real
database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from sqlalchemy import insert

from audit.auth import create_tenant
from audit.cnpj import check_digits
from audit.db import session_factory, session_scope, upgrade_database
from audit.models import BankTransaction, Batch, Condominium
from audit.pipeline import load_transactions
from audit.providers.base import Registration, RegistrationStatus
from audit.rules import ExpenseFacts, RuleSettings, evaluate


def cnpj(n: int) -> str:
    base = f"{n:08d}0001"
    return base + check_digits(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=5000)
    parser.add_argument("--expenses", type=int, default=1000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    rng = random.Random(2026)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade_database(url)
        suppliers = [cnpj(10_000 + i) for i in range(200)]
        expenses: list[ExpenseFacts] = []
        rows = []
        with session_scope(url) as session:
            tenant = create_tenant(session, "bench")
            condominium = Condominium(tenant_id=tenant.id, name="Bench", audit_settings={})
            session.add(condominium)
            session.flush()
            session.add(Batch(id="bench", tenant_id=tenant.id, condominium_id=condominium.id))
            for i in range(args.transactions):
                day = dt.date(2026, 10, 1) + dt.timedelta(days=rng.randrange(31))
                amount = Decimal(rng.randrange(5_000, 2_000_000)) / 100
                supplier = rng.choice(suppliers)
                rows.append({
                    "condominium_id": condominium.id, "provider_transaction_id": f"tx{i}",
                    "account_id": "acc", "date": day, "amount": -amount, "description": "PIX",
                    "type": "DEBIT", "status": "POSTED", "receiver_document": supplier,
                })  # fmt: skip
                if i < args.expenses:
                    expenses.append(ExpenseFacts(
                        expense_id=i, condominium_id=condominium.id, external_id=f"e{i}",
                        supplier_cnpj=supplier, amount=amount,
                        expense_date=day + dt.timedelta(days=rng.randrange(-2, 3)),
                        description="Serviço", category="manutencao", invoice_number=f"NF{i}",
                    ))  # fmt: skip
            session.execute(insert(BankTransaction), rows)
        registrations = {
            s: Registration(cnpj=s, found=True, provider="bench", status=RegistrationStatus.ATIVA,
                            opened_on=dt.date(2010, 1, 1), main_cnae="4321500")
            for s in suppliers
        }  # fmt: skip
        settings = RuleSettings()
        sessions = session_factory(url)
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            with sessions() as session:
                candidates = load_transactions(session, expenses[0].condominium_id, "bench",
                                               expenses, settings)  # fmt: skip
            queried = time.perf_counter()
            result = evaluate(expenses, registrations, candidates, [], settings,
                              bank_data_available=True)  # fmt: skip
            done = time.perf_counter()
            timings.append((queried - started, done - queried))
        query_s, rules_s = min(t[0] for t in timings), min(t[1] for t in timings)
    print(
        f"reconciliation, {args.transactions} transactions x {args.expenses} expenses "
        f"({url.split(':')[0]}): candidate query {query_s * 1000:.1f} ms "
        f"({len(candidates)} candidates), rules + matching {rules_s * 1000:.1f} ms, "
        f"{len(result.matches)} matched, best of 5"
    )


if __name__ == "__main__":
    main()
