"""The engine over a whole batch, fingerprints, and the per-condominium settings."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
from collections import defaultdict
from decimal import Decimal

import pytest
from pydantic import ValidationError

from audit.cnpj import check_digits, is_valid_cnpj
from audit.providers.base import BankTransactionRecord, Registration, RegistrationStatus
from audit.rules import (
    ExpenseFacts,
    RuleCode,
    RuleSettings,
    Severity,
    default_cnae_mapping,
    evaluate,
    evaluate_batch,
    fingerprint,
)
from audit.rules.engine import RULE_ORDER


def cnpj(base12: str) -> str:
    return base12 + check_digits(base12)


CLEANER = "11222333000181"  # classic digits
CLOSED = "12ABC34501DE35"  # alphanumeric, BAIXADA
GHOST = cnpj("GH0ST0000001")  # valid, but the registry does not know it
NEWCO = cnpj("NEWC0MPANY01")  # opened weeks before the expense
GARDEN = cnpj("JARD1M000001")
LIFTS = cnpj("ELEV4D0RES01")
PLUMBER = cnpj("HIDR4UL1CA01")
DINER = cnpj("RESTAUR4NTE1")  # a restaurant paid for security


def registration(cnpj_: str, cnae: str, **fields: object) -> Registration:
    base: dict[str, object] = {
        "found": True,
        "provider": "cnpjws",
        "legal_name": "Empresa",
        "status": RegistrationStatus.ATIVA,
        "status_date": dt.date(2015, 1, 1),
        "opened_on": dt.date(2015, 1, 1),
        "main_cnae": cnae,
    }
    base.update(fields)
    return Registration(cnpj=cnpj_, **base)  # type: ignore[arg-type]


REGISTRATIONS = {
    CLEANER: registration(CLEANER, "8121-4/00"),
    CLOSED: registration(
        CLOSED, "4321-5/00", status=RegistrationStatus.BAIXADA, status_date=dt.date(2025, 12, 1)
    ),
    GHOST: Registration(cnpj=GHOST, found=False, provider="cnpjws"),
    NEWCO: registration(NEWCO, "4330-4/04", opened_on=dt.date(2026, 2, 20)),
    GARDEN: registration(GARDEN, "8130-3/00"),
    LIFTS: registration(LIFTS, "4329-1/03"),
    PLUMBER: registration(PLUMBER, "4322-3/01"),
    DINER: registration(DINER, "5611-2/01"),
}


def expense(
    expense_id: int,
    external_id: str,
    supplier: str,
    amount: str,
    day: dt.date,
    category: str,
    invoice: str | None = None,
) -> ExpenseFacts:
    return ExpenseFacts(
        expense_id=expense_id,
        condominium_id="condo-1",
        external_id=external_id,
        supplier_cnpj=supplier,
        amount=Decimal(amount),
        expense_date=day,
        description=f"Despesa {external_id}",
        category=category,
        invoice_number=invoice,
    )


D = dt.date
HISTORY = [
    *(
        expense(100 + m, f"H-CLEAN-{m}", CLEANER, "1000.00", D(2025, 8 + m, 5), "limpeza", f"40{m}")
        for m in range(5)
    ),
    expense(105, "H-CLEAN-5", CLEANER, "1000.00", D(2026, 1, 5), "limpeza", "405"),
    expense(110, "H-LIFT", LIFTS, "1450.00", D(2026, 2, 10), "elevadores", "NF 777"),
]

BATCH = [
    expense(1, "E-OK", CLEANER, "1000.00", D(2026, 3, 5), "limpeza", "5001"),
    expense(2, "E-OUTLIER", CLEANER, "3900.00", D(2026, 3, 20), "limpeza", "5002"),
    expense(3, "E-INACTIVE", CLOSED, "800.00", D(2026, 3, 10), "manutencao", "61"),
    expense(4, "E-NOTFOUND", GHOST, "350.00", D(2026, 3, 11), "manutencao", "62"),
    expense(5, "E-NEW", NEWCO, "2200.00", D(2026, 3, 12), "manutencao", "63"),
    expense(6, "E-NOMATCH", GARDEN, "1780.45", D(2026, 3, 13), "jardinagem", "64"),
    expense(7, "E-DUP", LIFTS, "1450.00", D(2026, 3, 14), "elevadores", "777"),
    expense(8, "E-SPLIT-1", PLUMBER, "2600.00", D(2026, 3, 2), "manutencao", "301"),
    expense(9, "E-SPLIT-2", PLUMBER, "2600.00", D(2026, 3, 16), "manutencao", "302"),
    expense(10, "E-CNAE", DINER, "600.00", D(2026, 3, 9), "seguranca", "65"),
]


def debit(tx_id: str, amount: str, day: dt.date, receiver: str | None) -> BankTransactionRecord:
    return BankTransactionRecord(
        id=tx_id,
        account_id="acc-1",
        date=day,
        description="PAGAMENTO",
        amount=Decimal(amount),
        type="DEBIT",
        status="POSTED",
        receiver_document=receiver,
    )


TRANSACTIONS = [
    debit("tx-ok", "-1000.00", D(2026, 3, 6), CLEANER),
    debit("tx-outlier", "-3900.00", D(2026, 3, 20), None),
    debit("tx-inactive", "-800.00", D(2026, 3, 10), CLOSED),
    debit("tx-notfound", "-350.00", D(2026, 3, 12), None),
    debit("tx-new", "-2200.00", D(2026, 3, 13), NEWCO),
    debit("tx-nomatch-wrong-amount", "-1780.54", D(2026, 3, 13), GARDEN),
    debit("tx-dup", "-1450.00", D(2026, 3, 15), LIFTS),
    debit("tx-split-1", "-2600.00", D(2026, 3, 2), PLUMBER),
    debit("tx-split-2", "-2600.00", D(2026, 3, 17), PLUMBER),
    debit("tx-cnae", "-600.00", D(2026, 3, 9), DINER),
    BankTransactionRecord(
        id="tx-credit",
        account_id="acc-1",
        date=D(2026, 3, 13),
        description="TAXA CONDOMINIAL",
        amount=Decimal("1780.45"),
        type="CREDIT",
        status="POSTED",
    ),
]

EXPECTED = {
    ("E-OUTLIER", RuleCode.AMOUNT_OUTLIER, Severity.INFO, "supplier"),
    ("E-OUTLIER", RuleCode.AMOUNT_OUTLIER, Severity.INFO, "category"),
    ("E-INACTIVE", RuleCode.SUPPLIER_INACTIVE, Severity.CRITICAL, None),
    ("E-NOTFOUND", RuleCode.SUPPLIER_NOT_FOUND, Severity.CRITICAL, None),
    ("E-NEW", RuleCode.SUPPLIER_RECENTLY_OPENED, Severity.WARNING, None),
    ("E-NOMATCH", RuleCode.NO_BANK_MATCH, Severity.WARNING, None),
    ("E-DUP", RuleCode.DUPLICATE_PAYMENT, Severity.CRITICAL, None),
    ("E-SPLIT-1", RuleCode.SPLIT_PAYMENT, Severity.WARNING, None),
    ("E-SPLIT-2", RuleCode.SPLIT_PAYMENT, Severity.WARNING, None),
    ("E-CNAE", RuleCode.CNAE_MISMATCH, Severity.INFO, None),
}


def run(**overrides: object) -> list:  # type: ignore[type-arg]
    arguments: dict[str, object] = {
        "expenses": BATCH,
        "registrations": REGISTRATIONS,
        "transactions": TRANSACTIONS,
        "history": HISTORY,
        "settings": RuleSettings(),
        "bank_data_available": True,
    }
    arguments.update(overrides)
    return evaluate_batch(**arguments)  # type: ignore[arg-type]


def test_sample_cnpjs_are_valid() -> None:
    assert all(is_valid_cnpj(c) for c in REGISTRATIONS)


def test_sample_batch_fires_every_rule_exactly_where_expected() -> None:
    external = {e.expense_id: e.external_id for e in BATCH}
    found = {
        (external[f.expense_id], f.rule_code, f.severity, f.evidence.get("scope"))
        for f in run()
        if f.expense_id is not None
    }
    assert found == EXPECTED
    assert {code for _, code, _, _ in found} == set(RuleCode)


def test_matches_pair_each_paid_expense_with_its_debit() -> None:
    result = evaluate(
        BATCH, REGISTRATIONS, TRANSACTIONS, HISTORY, RuleSettings(), bank_data_available=True
    )
    assert result.matches == {
        1: "tx-ok",
        2: "tx-outlier",
        3: "tx-inactive",
        4: "tx-notfound",
        5: "tx-new",
        7: "tx-dup",
        8: "tx-split-1",
        9: "tx-split-2",
        10: "tx-cnae",
    }


def test_without_bank_data_there_is_no_bank_finding() -> None:
    result = evaluate(
        BATCH, REGISTRATIONS, TRANSACTIONS, HISTORY, RuleSettings(), bank_data_available=False
    )
    assert result.matches == {}
    assert RuleCode.NO_BANK_MATCH not in {f.rule_code for f in result.findings}
    assert len(result.findings) == len(EXPECTED) - 1


def test_findings_are_ordered_by_batch_position_then_rule() -> None:
    # Reversed, the batch's positions no longer follow its expense ids: position must win.
    batch = list(reversed(BATCH))
    findings = run(expenses=batch)
    position = {e.expense_id: k for k, e in enumerate(batch)}
    keys = [(position[f.expense_id], RULE_ORDER[f.rule_code]) for f in findings]
    assert keys == sorted(keys)
    assert [f.expense_id for f in findings] != sorted(f.expense_id for f in findings)
    # Some expense carries more than one finding, so the rule order is really exercised.
    per_expense = [f.expense_id for f in findings]
    assert len(per_expense) > len(set(per_expense))


def test_fingerprints_are_stable_distinct_and_order_independent() -> None:
    first = [f.fingerprint for f in run()]
    assert len(set(first)) == len(first)
    assert all(len(fp) == 64 for fp in first)
    rng = random.Random(3)
    for _ in range(3):
        batch, transactions, history = list(BATCH), list(TRANSACTIONS), list(HISTORY)
        rng.shuffle(transactions)
        rng.shuffle(history)
        again = run(expenses=batch, transactions=transactions, history=history)
        assert [f.fingerprint for f in again] == first
        assert [f.as_dict() for f in again] == [f.as_dict() for f in run()]


def test_fingerprint_names_the_finding_not_its_evidence() -> None:
    before = {f.rule_code: f for f in run() if f.expense_id == 7}
    more_history = [
        *HISTORY,
        expense(111, "H-LIFT-2", LIFTS, "1450.00", D(2025, 11, 10), "elevadores", "777"),
    ]
    after = {f.rule_code: f for f in run(history=more_history) if f.expense_id == 7}
    dup_before, dup_after = before[RuleCode.DUPLICATE_PAYMENT], after[RuleCode.DUPLICATE_PAYMENT]
    assert len(dup_after.evidence["repeats"]) == 2 != len(dup_before.evidence["repeats"])
    assert dup_after.fingerprint == dup_before.fingerprint
    assert dup_before.fingerprint == fingerprint(RuleCode.DUPLICATE_PAYMENT, 7)
    assert fingerprint(RuleCode.DUPLICATE_PAYMENT, 8) != dup_before.fingerprint
    assert fingerprint(RuleCode.SPLIT_PAYMENT, 7) != dup_before.fingerprint


def test_evidence_is_plain_json() -> None:
    for finding in run():
        text = json.dumps(finding.as_dict())
        assert json.loads(text) == finding.as_dict()
        for key in ("amount", "total", "median", "approval_threshold"):
            value = finding.evidence.get(key)
            assert value is None or (isinstance(value, str) and Decimal(value) >= 0)


def test_history_that_repeats_the_batch_counts_it_once() -> None:
    # a re-run passes the batch's own rows in the history too: no self-duplicates
    findings = run(history=[*HISTORY, *BATCH])
    assert [f.as_dict() for f in findings] == [f.as_dict() for f in run()]


def test_other_suppliers_history_as_cents_by_category_finds_what_the_full_history_does() -> None:
    """audit.pgbatch sends the batch's suppliers' history in full and the others' as amounts
    by category (raw, as stored: the engine normalizes them)."""
    rng = random.Random(17)
    others = [cnpj(f"0UTR0{n:07d}") for n in range(12)]
    categories = ["limpeza", "Limpeza ", "manutenção", "manutencao", "elevadores", "seguranca"]
    history = [
        expense(
            1000 + n,
            f"H-{n}",
            rng.choice([*others, *others, CLEANER, LIFTS, PLUMBER]),
            f"{rng.randint(150, 1400)}.{rng.randint(0, 99):02d}",
            D(2025, 4, 1) + dt.timedelta(days=rng.randint(0, 330)),
            rng.choice(categories),
            str(rng.randint(1, 10**6)),
        )
        for n in range(300)
    ]
    paid = {e.supplier_cnpj for e in BATCH}
    peers = [h for h in history if h.supplier_cnpj in paid]
    cents: dict[str, list[int]] = defaultdict(list)
    for h in history:
        if h.supplier_cnpj not in paid:
            cents[h.category].append(h.cents)
    assert peers
    assert cents

    def compact(by_category: dict[str, list[int]]) -> list[dict[str, object]]:
        result = evaluate(
            BATCH,
            REGISTRATIONS,
            TRANSACTIONS,
            peers,
            RuleSettings(),
            bank_data_available=True,
            history_cents_by_category=by_category,
        )
        return [f.as_dict() for f in result.findings]

    full = [f.as_dict() for f in run(history=history)]
    assert compact(cents) == full
    # The other suppliers' amounts count: without them the category outliers differ.
    assert compact({}) != full


def test_other_condominiums_history_is_ignored() -> None:
    elsewhere = [
        dataclasses.replace(h, condominium_id="condo-2", expense_id=h.expense_id + 500)
        for h in HISTORY
    ]
    codes = {f.rule_code for f in run(history=elsewhere)}
    assert RuleCode.DUPLICATE_PAYMENT not in codes
    assert RuleCode.AMOUNT_OUTLIER not in codes


def test_missing_registration_silences_supplier_rules_only() -> None:
    registrations = {k: v for k, v in REGISTRATIONS.items() if k != CLOSED}
    codes = {(f.expense_id, f.rule_code) for f in run(registrations=registrations)}
    assert (3, RuleCode.SUPPLIER_INACTIVE) not in codes
    assert (7, RuleCode.DUPLICATE_PAYMENT) in codes


class TestRuleSettings:
    def test_round_trip_through_json(self) -> None:
        settings = RuleSettings(approval_threshold=Decimal("8000.00"), match_window_days=3)
        stored = json.loads(json.dumps(settings.to_stored()))
        assert stored["approval_threshold"] == "8000.00"
        assert RuleSettings.from_stored(stored) == settings

    def test_partial_or_empty_stored_settings_take_defaults(self) -> None:
        assert RuleSettings.from_stored(None) == RuleSettings()
        partial = RuleSettings.from_stored({"split_window_days": 10})
        assert partial.split_window_days == 10
        assert partial.approval_threshold == Decimal("5000.00")
        assert partial.cnae_mapping == default_cnae_mapping()

    @pytest.mark.parametrize(
        "stored",
        [
            {"match_window_days": -1},
            {"approval_threshold": "0"},
            {"approval_threshold": "10.001"},
            {"outlier_min_history": 1},
            {"unknown_field": 1},
            {"cnae_mapping": {"limpeza": ["abc"]}},
            {"cnae_mapping": {"limpeza": ["12345678"]}},
        ],
    )
    def test_invalid_settings_are_rejected(self, stored: dict[str, object]) -> None:
        with pytest.raises(ValidationError):
            RuleSettings.from_stored(stored)

    def test_default_mapping_covers_the_condominium_categories(self) -> None:
        mapping = default_cnae_mapping()
        for category in (
            "manutencao",
            "limpeza",
            "seguranca",
            "portaria",
            "energia",
            "agua",
            "gas",
            "elevadores",
            "jardinagem",
            "administracao",
            "seguros",
            "obras",
        ):
            assert mapping[category], category
        assert all(p.isdigit() and 1 <= len(p) <= 7 for ps in mapping.values() for p in ps)
        assert "8121400" in mapping["limpeza"]
        assert "4329103" in mapping["elevadores"]
        assert "6822600" in mapping["administracao"]
