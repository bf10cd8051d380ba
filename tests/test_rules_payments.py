"""Rules over the condominium's expenses: duplicate payment, split payments, amount outlier."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from decimal import Decimal

import pytest

from audit.cnpj import check_digits
from audit.rules import (
    ExpenseFacts,
    RuleCode,
    RuleSettings,
    Severity,
    amount_outlier,
    duplicate_payment,
    split_payment,
)
from audit.rules.payments import normalize_invoice

SUPPLIER = "12ABC34501DE35"
OTHER_SUPPLIER = "ZZ99YY88XX77" + check_digits("ZZ99YY88XX77")
DAY = dt.date(2026, 3, 15)
SETTINGS = RuleSettings()
SPLIT_30_DAYS = RuleSettings(split_window_days=30)


def expense(
    expense_id: int,
    amount: str,
    day: dt.date = DAY,
    *,
    supplier: str = SUPPLIER,
    invoice: str | None = None,
    category: str = "manutencao",
    condominium: str = "c1",
) -> ExpenseFacts:
    return ExpenseFacts(
        expense_id=expense_id,
        condominium_id=condominium,
        external_id=f"E-{expense_id}",
        supplier_cnpj=supplier,
        amount=Decimal(amount),
        expense_date=day,
        description="Serviço",
        category=category,
        invoice_number=invoice,
    )


def days(n: int) -> dt.date:
    return DAY + dt.timedelta(days=n)


class TestDuplicatePayment:
    def test_same_invoice_months_apart_is_critical(self) -> None:
        first = expense(1, "800.00", days(-200), invoice="NF 000123")
        again = expense(2, "900.00", invoice="123")
        [finding] = duplicate_payment(again, [first, again], SETTINGS)
        assert finding.rule_code == RuleCode.DUPLICATE_PAYMENT
        assert finding.severity == Severity.CRITICAL
        [repeat] = finding.evidence["repeats"]
        assert repeat == {
            "expense_id": 1,
            "external_id": "E-1",
            "expense_date": "2025-08-27",
            "amount": "800.00",
            "invoice_number": "NF 000123",
            "reason": "same_invoice",
            "days_apart": 200,
        }
        assert "nota fiscal 123" in finding.message
        # the other side is flagged too
        assert duplicate_payment(first, [first, again], SETTINGS)

    def test_invoice_normalization(self) -> None:
        for text in (" 000123 ", "NF 000123", "NFS-e 123", "nf-e 0123", "NF-123"):
            assert normalize_invoice(text) == "123"
        assert normalize_invoice("nf-45/a") == "45A"
        assert normalize_invoice("A-0045") == "A0045"
        assert normalize_invoice("NFE") == "NFE"
        assert normalize_invoice("000") is None
        assert normalize_invoice("  ") is None

    def test_same_invoice_for_another_supplier_does_not_fire(self) -> None:
        mine = expense(1, "800.00", invoice="123")
        theirs = expense(2, "800.00", days(40), invoice="123", supplier=OTHER_SUPPLIER)
        assert duplicate_payment(mine, [mine, theirs], SETTINGS) == []

    def test_same_amount_at_the_window_edge_fires(self) -> None:
        first = expense(1, "1500.00", days(-15))
        again = expense(2, "1500.00")
        [finding] = duplicate_payment(again, [first], SETTINGS)
        assert finding.evidence["repeats"][0]["reason"] == "same_amount_within_window"
        assert finding.evidence["repeats"][0]["days_apart"] == 15

    def test_same_amount_one_day_past_the_window_does_not_fire(self) -> None:
        first = expense(1, "1500.00", days(-16))
        assert duplicate_payment(expense(2, "1500.00"), [first], SETTINGS) == []

    def test_amount_must_match_to_the_cent(self) -> None:
        first = expense(1, "10.00", days(-1))
        assert duplicate_payment(expense(2, "10.01"), [first], SETTINGS) == []
        assert duplicate_payment(expense(2, "10.00"), [first], SETTINGS)

    def test_two_different_invoices_of_equal_value_are_two_bills(self) -> None:
        first = expense(1, "1500.00", days(-3), invoice="77")
        assert duplicate_payment(expense(2, "1500.00", invoice="78"), [first], SETTINGS) == []
        assert duplicate_payment(expense(2, "1500.00", invoice=None), [first], SETTINGS)

    def test_itself_and_other_condominiums_are_ignored(self) -> None:
        mine = expense(1, "1500.00", invoice="9")
        elsewhere = expense(2, "1500.00", invoice="9", condominium="c2")
        assert duplicate_payment(mine, [mine, elsewhere], SETTINGS) == []

    def test_all_repeats_listed_in_date_order(self) -> None:
        target = expense(3, "300.00")
        peers = [expense(5, "300.00", days(2)), expense(4, "300.00", days(-2)), target]
        [finding] = duplicate_payment(target, peers, SETTINGS)
        assert [r["expense_id"] for r in finding.evidence["repeats"]] == [4, 5]
        # the message names this expense and every repeat by the client's external_id
        assert finding.message.startswith("Possível pagamento em duplicidade: a despesa E-3 ")
        assert "na despesa E-4 de " in finding.message
        assert finding.message.endswith(" e em mais 1: E-5 de 17/03/2026.")

    def test_window_follows_the_setting(self) -> None:
        first = expense(1, "1500.00", days(-30))
        settings = RuleSettings(duplicate_window_days=30)
        assert duplicate_payment(expense(2, "1500.00"), [first], settings)


class TestSplitPayment:
    def test_two_halves_exactly_at_the_threshold_do_not_fire(self) -> None:
        a, b = expense(1, "2500.00", days(-5)), expense(2, "2500.00")
        assert split_payment(b, [a, b], SETTINGS) == []

    def test_one_cent_above_the_threshold_fires(self) -> None:
        a, b = expense(1, "2500.00", days(-5)), expense(2, "2500.01")
        [finding] = split_payment(b, [a, b], SETTINGS)
        assert finding.rule_code == RuleCode.SPLIT_PAYMENT
        assert finding.severity == Severity.WARNING
        assert finding.evidence["total"] == "5000.01"
        assert finding.evidence["count"] == 2
        assert finding.evidence["approval_threshold"] == "5000.00"
        assert finding.evidence["window_start"] == "2026-03-10"
        assert finding.evidence["window_end"] == "2026-03-15"
        assert [p["expense_id"] for p in finding.evidence["payments"]] == [1, 2]
        # both payments of the batch are flagged
        assert split_payment(a, [a, b], SETTINGS)

    def test_span_exactly_the_window_fires_and_one_more_day_does_not(self) -> None:
        b = expense(2, "3000.00")
        assert split_payment(b, [expense(1, "3000.00", days(-30)), b], SPLIT_30_DAYS)
        assert split_payment(b, [expense(1, "3000.00", days(-31)), b], SPLIT_30_DAYS) == []
        assert split_payment(b, [expense(1, "3000.00", days(31)), b], SPLIT_30_DAYS) == []

    def test_the_default_window_spares_consecutive_monthly_fees(self) -> None:
        b = expense(2, "3000.00")
        assert split_payment(b, [expense(1, "3000.00", days(-15)), b], SETTINGS)
        assert split_payment(b, [expense(1, "3000.00", days(-16)), b], SETTINGS) == []
        assert split_payment(b, [expense(1, "3000.00", days(-28)), b], SETTINGS) == []

    def test_a_payment_at_the_threshold_counts_as_under_it(self) -> None:
        a, b = expense(1, "5000.00", days(-1)), expense(2, "0.01")
        [finding] = split_payment(b, [a, b], SETTINGS)
        assert finding.evidence["total"] == "5000.01"

    def test_payments_above_the_threshold_are_not_split(self) -> None:
        big, small = expense(1, "5000.01", days(-1)), expense(2, "100.00")
        assert split_payment(small, [big, small], SETTINGS) == []
        assert split_payment(big, [big, small], SETTINGS) == []

    def test_other_suppliers_do_not_add_up(self) -> None:
        a = expense(1, "3000.00", days(-1), supplier=OTHER_SUPPLIER)
        b = expense(2, "3000.00")
        assert split_payment(b, [a, b], SETTINGS) == []

    def test_history_adds_up_and_the_heaviest_window_is_shown(self) -> None:
        history = [
            expense(1, "1000.00", days(-40)),
            expense(2, "2000.00", days(-29)),
            expense(3, "1500.00", days(-20)),
        ]
        target = expense(9, "1600.00")
        [finding] = split_payment(target, [*history, target], SPLIT_30_DAYS)
        assert finding.evidence["total"] == "5100.00"
        assert [p["expense_id"] for p in finding.evidence["payments"]] == [2, 3, 9]
        assert finding.message.startswith(
            "Possível fracionamento: a despesa E-9 e as despesas E-2 e E-3 são 3 pagamentos"
        )

    def test_each_payment_of_a_split_gets_its_own_message_naming_the_others(self) -> None:
        group = [expense(1, "2000.00", days(-2)), expense(2, "2000.00", days(-1))]
        group.append(expense(3, "2000.00"))
        messages = [split_payment(p, group, SETTINGS)[0].message for p in group]
        assert len(set(messages)) == 3  # three lines, not one repeated three times
        assert messages[0].startswith(
            "Possível fracionamento: a despesa E-1 e as despesas E-2 e E-3 são 3 pagamentos "
            "ao mesmo fornecedor entre 13/03/2026 e 15/03/2026"
        )
        assert "a despesa E-2 e as despesas E-1 e E-3 são" in messages[1]
        assert "a despesa E-3 e as despesas E-1 e E-2 são" in messages[2]
        pair = split_payment(group[0], [*group[:1], expense(4, "4000.00", days(-1))], SETTINGS)
        assert "a despesa E-1 e a despesa E-4 são 2 pagamentos" in pair[0].message

    def test_threshold_and_window_follow_the_settings(self) -> None:
        a, b = expense(1, "600.00", days(-60)), expense(2, "600.00")
        settings = RuleSettings(approval_threshold=Decimal("1000.00"), split_window_days=60)
        assert split_payment(b, [a, b], settings)
        assert split_payment(b, [a, b], SETTINGS) == []

    def test_fires_exactly_when_some_payments_within_the_window_add_up(self) -> None:
        """Against the definition, by brute force over every set of the supplier's payments."""
        rng = random.Random(7)
        threshold = Decimal("1000.00")
        verdicts = []
        for _ in range(200):
            window = rng.choice((0, 5, 15))
            settings = RuleSettings(approval_threshold=threshold, split_window_days=window)
            payments = [
                expense(k, str(Decimal(rng.randrange(100_00, 1_100_00)) / 100),
                        days(rng.randrange(-20, 21)))
                for k in range(1, rng.randrange(3, 8))
            ]  # fmt: skip
            for target in payments:
                expected = any(
                    target in chosen and sum(p.amount for p in chosen) > threshold
                    for size in range(2, len(payments) + 1)
                    for chosen in itertools.combinations(payments, size)
                    if all(p.amount <= threshold for p in chosen)
                    and max(p.expense_date for p in chosen) - min(p.expense_date for p in chosen)
                    <= dt.timedelta(days=window)
                )
                assert bool(split_payment(target, payments, settings)) == expected, target
                verdicts.append(expected)
        assert 0.2 < sum(verdicts) / len(verdicts) < 0.8, "the data should hold both verdicts"


def history(
    amounts: list[str], *, supplier: str = SUPPLIER, start: int = 100
) -> list[ExpenseFacts]:
    return [
        expense(start + k, a, days(-30 * (k + 1)), supplier=supplier) for k, a in enumerate(amounts)
    ]


class TestAmountOutlier:
    def test_identical_history_uses_the_median_floor(self) -> None:
        past = history(["1000.00"] * 5)
        # scale = 5% of 1000 = 50; 3.5 x 50 = 175 above the median is the edge
        assert amount_outlier(expense(1, "1175.00"), past, SETTINGS) == []
        findings = amount_outlier(expense(1, "1175.01"), past, SETTINGS)
        assert {f.evidence["scope"] for f in findings} == {"supplier", "category"}
        supplier = next(f for f in findings if f.evidence["scope"] == "supplier")
        assert supplier.rule_code == RuleCode.AMOUNT_OUTLIER
        assert supplier.severity == Severity.INFO
        assert supplier.evidence["median"] == "1000.00"
        assert supplier.evidence["scale"] == "50.00"
        assert supplier.evidence["scale_method"] == "median_floor"
        assert supplier.evidence["robust_zscore"] == "3.50"
        assert supplier.evidence["history_count"] == 5

    def test_mad_edge(self) -> None:
        past = history(["90.00", "95.00", "100.00", "105.00", "110.00"])
        # MAD = 5, scale = 1.4826 x 5 = 7.413, edge at 100 + 3.5 x 7.413 = 125.9455
        assert amount_outlier(expense(1, "125.94"), past, SETTINGS) == []
        [finding, _] = amount_outlier(expense(1, "125.95"), past, SETTINGS)
        assert finding.evidence["scale_method"] == "mad"
        assert finding.evidence["mad"] == "5.00"
        assert finding.evidence["scale"] == "7.41"

    def test_mean_absolute_deviation_when_mad_is_zero(self) -> None:
        past = history(["100.00", "100.00", "100.00", "100.00", "200.00", "300.00"])
        [finding, _] = amount_outlier(expense(1, "400.00"), past, SETTINGS)
        assert finding.evidence["scale_method"] == "mean_absolute_deviation"
        assert finding.evidence["mean_absolute_deviation"] == "50.00"

    def test_needs_the_minimum_history(self) -> None:
        assert amount_outlier(expense(1, "9000.00"), history(["1000.00"] * 4), SETTINGS) == []
        assert amount_outlier(expense(1, "9000.00"), history(["1000.00"] * 5), SETTINGS)

    def test_the_expense_itself_is_not_its_own_history(self) -> None:
        target = expense(1, "9000.00")
        assert amount_outlier(target, [*history(["1000.00"] * 4), target], SETTINGS) == []

    def test_low_amounts_do_not_fire(self) -> None:
        assert amount_outlier(expense(1, "10.00"), history(["1000.00"] * 8), SETTINGS) == []

    def test_category_scope_across_suppliers(self) -> None:
        past = [
            *history(["1000.00"] * 3, supplier=OTHER_SUPPLIER),
            *history(["1000.00"] * 3, start=200),
        ]
        [finding] = amount_outlier(expense(1, "5000.00"), past, SETTINGS)
        assert finding.evidence["scope"] == "category"
        assert finding.evidence["history_count"] == 6
        assert "categoria 'manutencao'" in finding.message

    def test_scopes_have_distinct_fingerprints(self) -> None:
        findings = amount_outlier(expense(1, "5000.00"), history(["1000.00"] * 5), SETTINGS)
        assert len({f.fingerprint for f in findings}) == 2

    @pytest.mark.parametrize("threshold", ["2.0", "5.0"])
    def test_threshold_follows_the_setting(self, threshold: str) -> None:
        settings = RuleSettings(outlier_zscore=Decimal(threshold))
        past = history(["1000.00"] * 5)
        # 1150 scores 3.0 against scale 50
        fired = bool(amount_outlier(expense(1, "1150.00"), past, settings))
        assert fired is (Decimal(threshold) < 3)
