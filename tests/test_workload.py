"""The synthetic workload: valid API bodies, Pluggy-shaped transactions, planted irregularities."""

from __future__ import annotations

import datetime as dt
import re
import statistics
import tracemalloc
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import pytest

from audit.cnpj import normalize_cnpj
from ops.workload import (
    CATEGORIES,
    PLANT_KINDS,
    CondominiumMonth,
    WorkloadConfig,
    WorkloadStats,
    condominium_month,
    generate,
)

CONFIG = WorkloadConfig(condominiums=60, seed=7)
MONTHS = list(generate(CONFIG))
AMOUNT = re.compile(r"^\d+\.\d{2}$")


def debits(month: CondominiumMonth) -> list[dict[str, Any]]:
    return [t for t in month.transactions if t["type"] == "DEBIT"]


def paid_by(month: CondominiumMonth, expense: dict[str, Any]) -> list[dict[str, Any]]:
    """DEBITs that could pay the expense: same amount, within the lag, same receiver if any."""
    cnpj = normalize_cnpj(expense["supplier_cnpj"])
    date = dt.date.fromisoformat(expense["date"])
    found = []
    for tx in debits(month):
        lag = (dt.date.fromisoformat(tx["date"]) - date).days
        receiver = (tx["paymentData"] or {}).get("receiver", {}).get("documentNumber", {})
        if (
            Decimal(str(-tx["amount"])) == Decimal(expense["amount"])
            and 0 <= lag <= CONFIG.payment_lag_days
            and receiver.get("value", cnpj) == cnpj
        ):
            found.append(tx)
    return found


def test_same_seed_same_month_and_random_access_equals_streaming() -> None:
    again = condominium_month(CONFIG, 17)
    assert again.expenses == MONTHS[17].expenses
    assert again.transactions == MONTHS[17].transactions
    assert again.planted == MONTHS[17].planted
    other = condominium_month(WorkloadConfig(condominiums=60, seed=8), 17)
    assert other.expenses != MONTHS[17].expenses


def test_expenses_are_valid_batch_bodies() -> None:
    start, end = CONFIG.start, CONFIG.end
    for month in MONTHS:
        body = month.batch_request("4b7c2f7e-0000-4000-8000-000000000000")
        expenses = body["expenses"]
        # Planted irregularities add at most three expenses to the drawn count.
        assert CONFIG.min_expenses <= len(expenses) <= CONFIG.max_expenses + 3
        assert len({e["external_id"] for e in expenses}) == len(expenses)
        for e in expenses:
            assert set(e) == {
                "external_id",
                "supplier_cnpj",
                "amount",
                "date",
                "description",
                "category",
                "invoice_number",
            }
            normalize_cnpj(e["supplier_cnpj"])  # raises when invalid
            assert AMOUNT.match(e["amount"]), e
            assert Decimal(e["amount"]) > 0, e
            assert start <= dt.date.fromisoformat(e["date"]) <= end
            assert e["category"] in CATEGORIES
            assert e["invoice_number"] is None or e["invoice_number"].isdigit()
        assert normalize_cnpj(month.condominium_request()["cnpj"])


def test_cnpjs_include_masked_and_alphanumeric_forms() -> None:
    shown = [e["supplier_cnpj"] for m in MONTHS for e in m.expenses]
    assert any("/" in c for c in shown)
    assert any(c.isalnum() for c in shown)
    alphanumeric = {s for m in MONTHS for s in m.suppliers.values() if not s.cnpj.isdigit()}
    assert alphanumeric, "expected some alphanumeric CNPJs"
    # Alphanumeric CNPJs exist since July 2026: their firms cannot be older.
    assert all(s.opened_on >= dt.date(2026, 7, 1) for s in alphanumeric)


def test_transactions_have_pluggy_shape_and_pay_every_unplanted_expense() -> None:
    for month in MONTHS:
        ids = [t["id"] for t in month.transactions]
        assert len(set(ids)) == len(ids)
        for tx in month.transactions:
            assert tx["accountId"] == month.pluggy_account_id
            assert tx["status"] == "POSTED"
            assert (tx["amount"] < 0) == (tx["type"] == "DEBIT")
            assert CONFIG.start <= dt.date.fromisoformat(tx["date"]) <= CONFIG.end
            if tx["paymentData"]:
                document = tx["paymentData"]["receiver"]["documentNumber"]
                assert document["type"] == "CNPJ"
                assert normalize_cnpj(document["value"]) == document["value"]
        unpaid = {
            i for p in month.planted if p.kind == "missing_transaction" for i in p.external_ids
        }
        for expense in month.expenses:
            if expense["external_id"] in unpaid:
                assert paid_by(month, expense) == []
            else:
                assert paid_by(month, expense), expense
        assert month.transaction_pages == max(1, -(-len(month.transactions) // 500))


def test_each_kind_is_planted_and_holds() -> None:
    kinds: Counter[str] = Counter()
    threshold = CONFIG.approval_threshold
    for month in MONTHS:
        by_id = {e["external_id"]: e for e in month.expenses}
        for planted in month.planted:
            kinds[planted.kind] += 1
            rows = [by_id[i] for i in planted.external_ids]
            assert all(normalize_cnpj(r["supplier_cnpj"]) == planted.supplier_cnpj for r in rows)
            amounts = [Decimal(r["amount"]) for r in rows]
            supplier = month.suppliers[planted.supplier_cnpj]
            if planted.kind == "duplicate_invoice":
                assert len(rows) == 2
                assert rows[0]["invoice_number"] == rows[1]["invoice_number"] is not None
                assert amounts[0] == amounts[1]
            elif planted.kind == "split_payment":
                assert len(rows) >= 2
                assert all(a < threshold for a in amounts)
                assert sum(amounts) > threshold
                dates = sorted(dt.date.fromisoformat(r["date"]) for r in rows)
                assert (dates[-1] - dates[0]).days <= 10
            elif planted.kind == "amount_outlier":
                same = [
                    Decimal(e["amount"])
                    for e in month.expenses
                    if e["category"] == rows[0]["category"] and e is not rows[0]
                ]
                assert amounts[0] > 10 * statistics.median(same)
            elif planted.kind == "inactive_supplier":
                assert supplier.status in {"BAIXADA", "INAPTA", "SUSPENSA", "NULA"}
                assert supplier.status_date < dt.date.fromisoformat(rows[0]["date"])
                assert supplier.registry_record()["found"] is True
            elif planted.kind == "supplier_not_found":
                assert supplier.registry_record()["found"] is False
    # 60 condominiums x irregular_share 0.6 = 36 planted, round robin over 6 kinds.
    assert kinds == dict.fromkeys(PLANT_KINDS, 6)


def test_nothing_irregular_outside_the_plants() -> None:
    threshold = CONFIG.approval_threshold
    for month in MONTHS:
        planted_ids = {i for p in month.planted for i in p.external_ids}
        planted_suppliers = {p.supplier_cnpj for p in month.planted}
        small: defaultdict[str, list[Decimal]] = defaultdict(list)
        invoices: Counter[tuple[str, str]] = Counter()
        for e in month.expenses:
            cnpj = normalize_cnpj(e["supplier_cnpj"])
            if e["external_id"] in planted_ids:
                continue
            assert month.suppliers[cnpj].status == "ATIVA"
            if e["invoice_number"]:
                invoices[cnpj, e["invoice_number"]] += 1
            if cnpj not in planted_suppliers and Decimal(e["amount"]) < threshold:
                small[cnpj].append(Decimal(e["amount"]))
        assert max(invoices.values(), default=1) == 1
        for amounts in small.values():
            assert len(amounts) < 2 or sum(amounts) <= threshold


@pytest.mark.slow  # generates a whole month for thousands of condominiums
def test_supplier_use_is_skewed_with_a_long_tail() -> None:
    config = WorkloadConfig(condominiums=1500, seed=3)
    uses: Counter[str] = Counter()
    stats = WorkloadStats()
    for month in generate(config):
        uses.update(month.suppliers.keys())
        stats.add(month)
    summary = stats.summary()
    top_share = uses.most_common(1)[0][1] / config.condominiums
    counts = sorted(uses.values(), reverse=True)
    head = counts[: len(counts) // 50]
    assert top_share > 0.4, "a national utility serves a large share of condominiums"
    assert sum(head) > 0.3 * sum(counts), "2% of the suppliers take a third of the use"
    assert statistics.median(counts) <= 3, "the typical supplier is local: a few condominiums"
    assert summary["unique_cnpjs"] == len(uses)
    assert summary["unique_cnpjs"] < summary["lookups_without_shared_cache"] / 5
    assert 0 < summary["unique_alphanumeric_cnpjs"] < summary["unique_cnpjs"] / 4
    assert summary["planted"] == dict.fromkeys(PLANT_KINDS, 150)


@pytest.mark.slow  # streams a large workload to measure its memory
def test_streams_without_holding_the_workload() -> None:
    config = WorkloadConfig(condominiums=10_000, seed=1)
    stream = generate(config)
    tracemalloc.start()
    try:
        for _, month in zip(range(300), stream, strict=False):
            assert month.expenses
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One condominium's month is a few hundred kilobytes; 300 kept would be tens of MB.
    assert peak < 3 * 2**20
    last = condominium_month(config, 9_999)
    assert last.ref == "c009999"
    with pytest.raises(IndexError):
        condominium_month(config, 10_000)


def test_ten_condominiums_carry_every_kind() -> None:
    kinds = Counter(p.kind for m in generate(WorkloadConfig(condominiums=10)) for p in m.planted)
    assert kinds == dict.fromkeys(PLANT_KINDS, 1)


def test_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="period"):
        WorkloadConfig(condominiums=10, period="2026-13")
    with pytest.raises(ValueError, match="condominiums"):
        WorkloadConfig(condominiums=0)
