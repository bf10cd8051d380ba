"""The one-to-one matcher and the NO_BANK_MATCH rule."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from decimal import Decimal

import pytest

from audit.cnpj import check_digits, format_cnpj
from audit.providers.base import BankTransactionRecord
from audit.rules import (
    ExpenseFacts,
    RuleCode,
    RuleSettings,
    Severity,
    match_transactions,
    no_bank_match,
)
from audit.rules.reconciliation import pair_cost

SUPPLIER = "12ABC34501DE35"
OTHER = "11222333000181"
THIRD = "Q1W2E3R4T5Y6" + check_digits("Q1W2E3R4T5Y6")
DAY = dt.date(2026, 3, 15)
SETTINGS = RuleSettings()  # match window 5 days


def days(n: int) -> dt.date:
    return DAY + dt.timedelta(days=n)


def expense(
    expense_id: int, amount: str = "450.00", day: dt.date = DAY, supplier: str = SUPPLIER
) -> ExpenseFacts:
    return ExpenseFacts(
        expense_id=expense_id,
        condominium_id="c1",
        external_id=f"E-{expense_id}",
        supplier_cnpj=supplier,
        amount=Decimal(amount),
        expense_date=day,
        description="Serviço",
        category="manutencao",
    )


def tx(
    tx_id: str,
    amount: str = "-450.00",
    day: dt.date = DAY,
    *,
    receiver: str | None = None,
    kind: str = "DEBIT",
) -> BankTransactionRecord:
    return BankTransactionRecord(
        id=tx_id,
        account_id="acc",
        date=day,
        description="PIX",
        amount=Decimal(amount),
        type=kind,
        status="POSTED",
        receiver_document=receiver,
    )


class TestEligibility:
    def test_negative_and_positive_debits_both_match(self) -> None:
        assert match_transactions([expense(1)], [tx("t", "-450.00")], SETTINGS) == {1: "t"}
        assert match_transactions([expense(1)], [tx("t", "450.00")], SETTINGS) == {1: "t"}

    def test_credit_never_pays_an_expense(self) -> None:
        credit = tx("t", "450.00", kind="CREDIT")
        assert match_transactions([expense(1)], [credit], SETTINGS) == {}

    def test_amount_to_the_cent(self) -> None:
        assert match_transactions([expense(1, "10.00")], [tx("t", "-10.01")], SETTINGS) == {}
        assert match_transactions([expense(1, "10.01")], [tx("t", "-10.01")], SETTINGS) == {1: "t"}

    @pytest.mark.parametrize("offset", [-5, 5])
    def test_window_is_inclusive(self, offset: int) -> None:
        assert match_transactions([expense(1)], [tx("t", day=days(offset))], SETTINGS) == {1: "t"}

    @pytest.mark.parametrize("offset", [-6, 6])
    def test_one_day_past_the_window_does_not_match(self, offset: int) -> None:
        assert match_transactions([expense(1)], [tx("t", day=days(offset))], SETTINGS) == {}

    def test_receiver_document_must_be_the_supplier(self) -> None:
        for receiver in (SUPPLIER, format_cnpj(SUPPLIER), format_cnpj(SUPPLIER).lower()):
            found = match_transactions([expense(1)], [tx("t", receiver=receiver)], SETTINGS)
            assert found == {1: "t"}, receiver
        for receiver in (OTHER, "12345678909"):  # another CNPJ, a CPF
            assert match_transactions([expense(1)], [tx("t", receiver=receiver)], SETTINGS) == {}

    def test_pair_cost_orders_document_before_date(self) -> None:
        named_far = pair_cost(expense(1), tx("a", day=days(5), receiver=SUPPLIER), 5)
        anonymous_near = pair_cost(expense(1), tx("b"), 5)
        assert named_far is not None
        assert anonymous_near is not None
        assert named_far < anonymous_near


class TestPreferences:
    def test_prefers_the_debit_naming_the_supplier(self) -> None:
        found = match_transactions(
            [expense(1)],
            [tx("anon", day=DAY), tx("named", day=days(3), receiver=SUPPLIER)],
            SETTINGS,
        )
        assert found == {1: "named"}

    def test_then_the_closest_date(self) -> None:
        found = match_transactions(
            [expense(1)], [tx("far", day=days(-3)), tx("near", day=days(1))], SETTINGS
        )
        assert found == {1: "near"}

    def test_equal_candidates_break_ties_by_date_then_id(self) -> None:
        found = match_transactions(
            [expense(1)], [tx("b", day=days(1)), tx("a", day=days(-1))], SETTINGS
        )
        assert found == {1: "a"}
        found = match_transactions([expense(1)], [tx("b"), tx("a")], SETTINGS)
        assert found == {1: "a"}


class TestOneToOne:
    def test_a_debit_that_could_pay_two_expenses_leaves_the_other_its_own(self) -> None:
        # t10 is the closest debit for E-1, but it is E-2's only candidate;
        # E-1 takes t14 so both are paid (closest-first greedy would leave E-2 unpaid).
        e1, e2 = expense(1, day=days(0)), expense(2, day=days(-4))
        t10, t14 = tx("t10", day=days(0)), tx("t14", day=days(4))
        assert match_transactions([e1, e2], [t10, t14], SETTINGS) == {1: "t14", 2: "t10"}

    def test_a_debit_pays_at_most_one_expense(self) -> None:
        found = match_transactions([expense(2), expense(1)], [tx("t")], SETTINGS)
        assert found == {1: "t"}  # the earliest (date, id) expense wins the tie

    def test_supplier_named_debit_goes_to_its_supplier(self) -> None:
        mine, theirs = expense(1), expense(2, supplier=OTHER)
        debits = [tx("anon"), tx("named", receiver=OTHER)]
        assert match_transactions([mine, theirs], debits, SETTINGS) == {1: "anon", 2: "named"}

    def test_three_expenses_two_debits(self) -> None:
        found = match_transactions(
            [expense(1), expense(2), expense(3)], [tx("a"), tx("b")], SETTINGS
        )
        assert len(found) == 2
        assert len(set(found.values())) == 2

    def test_repeated_transaction_ids_count_once(self) -> None:
        found = match_transactions([expense(1), expense(2)], [tx("a"), tx("a")], SETTINGS)
        assert list(found.values()) == ["a"]

    def test_input_order_does_not_change_the_result(self) -> None:
        rng = random.Random(7)
        expenses = [expense(i, "100.00", days(rng.randint(-10, 10))) for i in range(12)]
        debits = [tx(f"t{i}", "-100.00", days(rng.randint(-10, 10))) for i in range(10)]
        expected = match_transactions(expenses, debits, SETTINGS)
        for _ in range(5):
            rng.shuffle(expenses)
            rng.shuffle(debits)
            assert match_transactions(expenses, debits, SETTINGS) == expected


def _brute_force(
    expenses: list[ExpenseFacts], debits: list[BankTransactionRecord], window: int
) -> tuple[int, int]:
    """(most expenses paid, least total cost among those) by trying every assignment."""
    best = (0, 0)
    options = [[None, *range(len(debits))] for _ in expenses]
    for choice in itertools.product(*options):
        used = [j for j in choice if j is not None]
        if len(used) != len(set(used)):
            continue
        total, ok = 0, True
        for i, j in enumerate(choice):
            if j is None:
                continue
            cost = pair_cost(expenses[i], debits[j], window)
            if cost is None:
                ok = False
                break
            total += cost
        if ok and (len(used), -total) > (best[0], -best[1]):
            best = (len(used), total)
    return best


def test_matcher_is_optimal_against_brute_force() -> None:
    rng = random.Random(20260315)
    suppliers = [SUPPLIER, OTHER, THIRD]
    for _ in range(400):
        expenses = [
            expense(
                i,
                rng.choice(["100.00", "100.00", "100.01"]),
                days(rng.randint(-9, 9)),
                rng.choice(suppliers),
            )
            for i in range(rng.randint(1, 5))
        ]
        debits = [
            tx(
                f"t{j}",
                rng.choice(["-100.00", "100.00", "-100.01"]),
                days(rng.randint(-9, 9)),
                receiver=rng.choice([None, None, *suppliers]),
                kind=rng.choice(["DEBIT", "DEBIT", "DEBIT", "CREDIT"]),
            )
            for j in range(rng.randint(0, 5))
        ]
        found = match_transactions(expenses, debits, SETTINGS)
        by_id = {d.id: d for d in debits}
        by_expense = {e.expense_id: e for e in expenses}
        assert len(set(found.values())) == len(found)
        costs = [pair_cost(by_expense[e], by_id[t], 5) for e, t in found.items()]
        assert all(c is not None for c in costs)
        total = sum(c for c in costs if c is not None)
        assert (len(found), total) == _brute_force(expenses, debits, 5), (expenses, debits)


class TestNoBankMatch:
    def test_matched_expense_does_not_fire(self) -> None:
        assert no_bank_match(expense(1), {1: "t"}, [tx("t")], SETTINGS) == []

    def test_no_debit_of_that_amount(self) -> None:
        [finding] = no_bank_match(expense(1), {}, [tx("t", "-450.01")], SETTINGS)
        assert finding.rule_code == RuleCode.NO_BANK_MATCH
        assert finding.severity == Severity.WARNING
        assert finding.evidence == {
            "supplier_cnpj": SUPPLIER,
            "amount": "450.00",
            "expense_date": "2026-03-15",
            "window_start": "2026-03-10",
            "window_end": "2026-03-20",
            "match_window_days": 5,
            "same_amount_debits": 0,
            "reason": "no_debit_with_amount",
        }
        assert "R$ 450,00" in finding.message
        assert "10/03/2026" in finding.message

    def test_outside_window_names_the_nearest(self) -> None:
        debits = [tx("far", day=days(-20)), tx("near", day=days(6))]
        [finding] = no_bank_match(expense(1), {}, debits, SETTINGS)
        assert finding.evidence["reason"] == "outside_window"
        assert finding.evidence["nearest"]["transaction_id"] == "near"
        assert finding.evidence["nearest"]["days_apart"] == 6

    def test_receiver_mismatch(self) -> None:
        [finding] = no_bank_match(expense(1), {}, [tx("t", receiver=OTHER)], SETTINGS)
        assert finding.evidence["reason"] == "receiver_mismatch"
        assert finding.evidence["candidates"][0]["receiver_document"] == OTHER

    def test_taken_by_another_expense(self) -> None:
        e1, e2 = expense(1), expense(2)
        debits = [tx("t")]
        matches = match_transactions([e1, e2], debits, SETTINGS)
        assert no_bank_match(e1, matches, debits, SETTINGS) == []
        [finding] = no_bank_match(e2, matches, debits, SETTINGS)
        assert finding.evidence["reason"] == "taken_by_other_expense"
        assert finding.evidence["candidates"][0]["paid_expense_id"] == 1

    def test_credits_are_not_candidates(self) -> None:
        [finding] = no_bank_match(expense(1), {}, [tx("t", "450.00", kind="CREDIT")], SETTINGS)
        assert finding.evidence["reason"] == "no_debit_with_amount"


def _reference_optimum(
    expenses: list[ExpenseFacts], debits: list[BankTransactionRecord], window: int
) -> tuple[int, int]:
    """(pairs, cost) of a min-cost max matching by plain Bellman-Ford augmenting paths."""
    n_e, n_d = len(expenses), len(debits)
    cost = {
        (i, j): c
        for i, e in enumerate(expenses)
        for j, d in enumerate(debits)
        if (c := pair_cost(e, d, window)) is not None
    }
    owner: dict[int, int] = {}  # debit -> expense
    paid: dict[int, int] = {}  # expense -> debit
    while True:
        # nodes: ("e", i) and ("d", j); sources are unpaid expenses, targets unowned debits
        dist: dict[tuple[str, int], int] = {("e", i): 0 for i in range(n_e) if i not in paid}
        prev: dict[tuple[str, int], tuple[str, int]] = {}
        for _ in range(n_e + n_d + 1):
            changed = False
            for (i, j), c in cost.items():
                if paid.get(i) == j:
                    if ("d", j) in dist and dist[("d", j)] - c < dist.get(("e", i), 1 << 60):
                        dist[("e", i)] = dist[("d", j)] - c
                        prev[("e", i)] = ("d", j)
                        changed = True
                elif ("e", i) in dist and dist[("e", i)] + c < dist.get(("d", j), 1 << 60):
                    dist[("d", j)] = dist[("e", i)] + c
                    prev[("d", j)] = ("e", i)
                    changed = True
            if not changed:
                break
        ends = [(dist[("d", j)], j) for j in range(n_d) if ("d", j) in dist and j not in owner]
        if not ends:
            break
        node: tuple[str, int] | None = ("d", min(ends)[1])
        while node is not None and node in prev:
            before = prev[node]
            if node[0] == "d":
                owner[node[1]] = before[1]
                paid[before[1]] = node[1]
            node = prev.get(before)
    return len(paid), sum(cost[(i, j)] for i, j in paid.items())


def test_matcher_is_optimal_on_crowded_months() -> None:
    """Dozens of expenses and debits of one amount within a few weeks."""
    rng = random.Random(99)
    suppliers = [SUPPLIER, OTHER, THIRD]
    for _ in range(25):
        size = rng.randint(10, 40)
        expenses = [
            expense(i, "150.00", days(rng.randint(-15, 15)), rng.choice(suppliers))
            for i in range(size)
        ]
        debits = [
            tx(
                f"t{j}",
                "-150.00",
                days(rng.randint(-15, 15)),
                receiver=rng.choice([None, None, *suppliers]),
            )
            for j in range(rng.randint(size // 2, size + 5))
        ]
        found = match_transactions(expenses, debits, SETTINGS)
        by_id = {d.id: d for d in debits}
        assert len(set(found.values())) == len(found)
        costs = [pair_cost(expenses[e], by_id[t], 5) for e, t in found.items()]
        assert None not in costs
        total = sum(c for c in costs if c is not None)
        assert (len(found), total) == _reference_optimum(expenses, debits, 5)
