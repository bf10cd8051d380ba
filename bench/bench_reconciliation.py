"""Speed of the pure reconciliation: one condominium, one month, 5,000 bank transactions.

Run from the repository root:
    PYTHONPATH=. python bench/bench_reconciliation.py [--expenses 3000] [--transactions 5000]

The month is synthetic but shaped like a large condominium's statement: most expenses
have their debit a few days away (some naming the supplier, some not), a tenth share a
handful of round amounts (the groups where one debit could pay several expenses), the
rest of the statement is unrelated debits and credits (condominium fees coming in). It
prints the matcher's time (best and median of --repeat runs), the whole engine's time
(all rules plus matching, with six months of history), and a stress case where every
expense and debit of the month has the same amount.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import time
from collections.abc import Callable
from decimal import Decimal

from audit.cnpj import check_digits
from audit.providers.base import BankTransactionRecord, Registration, RegistrationStatus
from audit.rules import ExpenseFacts, RuleSettings, evaluate, match_transactions

MONTH_START = dt.date(2026, 3, 1)
CATEGORIES = ["manutencao", "limpeza", "seguranca", "energia", "agua", "jardinagem", "obras"]
ROUND_AMOUNTS = [Decimal(a) for a in ("150.00", "200.00", "500.00", "1000.00", "2500.00")]


def _cnpj(n: int) -> str:
    base = f"{n:08d}0001" if n % 2 else f"B{n:07d}0001"
    return base + check_digits(base)


def _day(rng: random.Random, start: dt.date = MONTH_START, span: int = 31) -> dt.date:
    return start + dt.timedelta(days=rng.randrange(span))


def build_month(
    n_expenses: int, n_transactions: int, seed: int
) -> tuple[list[ExpenseFacts], list[BankTransactionRecord], list[str]]:
    rng = random.Random(seed)
    suppliers = [_cnpj(n) for n in range(1, 201)]
    expenses: list[ExpenseFacts] = []
    transactions: list[BankTransactionRecord] = []
    for i in range(n_expenses):
        if rng.random() < 0.10:
            amount = rng.choice(ROUND_AMOUNTS)
        else:
            amount = Decimal(rng.randrange(5_000, 2_000_000)) / 100
        supplier = rng.choice(suppliers)
        day = _day(rng)
        expenses.append(
            ExpenseFacts(
                expense_id=i + 1,
                condominium_id="condo-bench",
                external_id=f"E-{i + 1}",
                supplier_cnpj=supplier,
                amount=amount,
                expense_date=day,
                description="despesa",
                category=rng.choice(CATEGORIES),
                invoice_number=str(10_000 + i),
            )
        )
        if rng.random() < 0.9 and len(transactions) < n_transactions:
            transactions.append(
                BankTransactionRecord(
                    id=f"tx-{len(transactions)}",
                    account_id="acc",
                    date=day + dt.timedelta(days=rng.randint(-3, 3)),
                    description="PAGAMENTO",
                    amount=-amount,
                    type="DEBIT",
                    status="POSTED",
                    receiver_document=supplier if rng.random() < 0.6 else None,
                )
            )
    while len(transactions) < n_transactions:
        credit = rng.random() < 0.5
        amount = (
            rng.choice(ROUND_AMOUNTS)
            if rng.random() < 0.1
            else Decimal(rng.randrange(1_000, 500_000)) / 100
        )
        transactions.append(
            BankTransactionRecord(
                id=f"tx-{len(transactions)}",
                account_id="acc",
                date=_day(rng),
                description="TAXA" if credit else "DEBITO",
                amount=amount if credit else -amount,
                type="CREDIT" if credit else "DEBIT",
                status="POSTED",
                receiver_document=None,
            )
        )
    rng.shuffle(transactions)
    return expenses, transactions, suppliers


def build_history(
    n_per_month: int, months: int, suppliers: list[str], seed: int
) -> list[ExpenseFacts]:
    rng = random.Random(seed + 1)
    history = []
    for m in range(months):
        start = MONTH_START - dt.timedelta(days=31 * (m + 1))
        for k in range(n_per_month):
            history.append(
                ExpenseFacts(
                    expense_id=1_000_000 + m * n_per_month + k,
                    condominium_id="condo-bench",
                    external_id=f"H-{m}-{k}",
                    supplier_cnpj=rng.choice(suppliers),
                    amount=Decimal(rng.randrange(5_000, 2_000_000)) / 100,
                    expense_date=_day(rng, start),
                    description="despesa",
                    category=rng.choice(CATEGORIES),
                    invoice_number=f"H{m}-{k}",
                )
            )
    return history


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expenses", type=int, default=3000)
    parser.add_argument("--transactions", type=int, default=5000)
    parser.add_argument("--history-months", type=int, default=6)
    parser.add_argument("--history-per-month", type=int, default=500)
    parser.add_argument("--stress", type=int, default=500, help="expenses and debits of one amount")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    settings = RuleSettings()

    expenses, transactions, suppliers = build_month(args.expenses, args.transactions, args.seed)
    debits = sum(1 for t in transactions if t.type == "DEBIT")
    best, median, matches = timed(
        lambda: match_transactions(expenses, transactions, settings), args.repeat
    )
    assert isinstance(matches, dict)
    print(
        f"match_transactions: {len(expenses)} expenses x {len(transactions)} transactions "
        f"({debits} debits): best {best * 1000:.1f} ms, median {median * 1000:.1f} ms, "
        f"{len(matches)} matched"
    )

    history = build_history(args.history_per_month, args.history_months, suppliers, args.seed)
    registrations = {
        s: Registration(
            cnpj=s,
            found=True,
            provider="bench",
            status=RegistrationStatus.ATIVA,
            status_date=dt.date(2015, 1, 1),
            opened_on=dt.date(2015, 1, 1),
            main_cnae="8121400",
        )
        for s in suppliers
    }
    best, median, result = timed(
        lambda: evaluate(
            expenses, registrations, transactions, history, settings, bank_data_available=True
        ),
        max(1, args.repeat // 2),
    )
    findings = getattr(result, "findings", [])
    print(
        f"evaluate (all rules + matching), history {len(history)} expenses: "
        f"best {best * 1000:.1f} ms, median {median * 1000:.1f} ms, {len(findings)} findings"
    )

    rng = random.Random(args.seed)
    same = Decimal("150.00")
    stress_expenses = [
        ExpenseFacts(
            i, "condo-bench", f"S-{i}", rng.choice(suppliers), same, _day(rng), "", "limpeza"
        )
        for i in range(args.stress)
    ]
    stress_debits = [
        BankTransactionRecord(f"s-{j}", "acc", _day(rng), "", -same, "DEBIT", "POSTED")
        for j in range(args.stress)
    ]
    best, median, stress = timed(
        lambda: match_transactions(stress_expenses, stress_debits, settings), 1
    )
    assert isinstance(stress, dict)
    print(
        f"stress, one amount: {args.stress} expenses x {args.stress} debits: "
        f"{best * 1000:.1f} ms, {len(stress)} matched"
    )


if __name__ == "__main__":
    main()
