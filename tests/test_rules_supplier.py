"""Supplier rules: inactive, not found, recently opened, CNAE incompatible with category."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from audit.cnpj import check_digits, normalize_cnpj
from audit.providers.base import Registration, RegistrationStatus
from audit.rules import (
    ExpenseFacts,
    RuleCode,
    RuleSettings,
    Severity,
    cnae_mismatch,
    supplier_inactive,
    supplier_not_found,
    supplier_recently_opened,
)

CLASSIC = "11222333000181"
ALNUM = "12ABC34501DE35"
ALNUM_2 = normalize_cnpj("AB12CD34EF56" + check_digits("AB12CD34EF56"))
DAY = dt.date(2026, 3, 15)
SETTINGS = RuleSettings()


def expense(cnpj: str = CLASSIC, day: dt.date = DAY, category: str = "limpeza") -> ExpenseFacts:
    return ExpenseFacts(
        expense_id=1,
        condominium_id="c1",
        external_id="E-1",
        supplier_cnpj=cnpj,
        amount=Decimal("1200.00"),
        expense_date=day,
        description="Serviço",
        category=category,
        invoice_number="100",
    )


def registration(cnpj: str = CLASSIC, **fields: object) -> Registration:
    base: dict[str, object] = {
        "found": True,
        "provider": "minha-receita",
        "status": RegistrationStatus.ATIVA,
        "status_date": dt.date(2010, 1, 1),
        "opened_on": dt.date(2010, 1, 1),
        "main_cnae": "8121400",
    }
    base.update(fields)
    return Registration(cnpj=cnpj, **base)  # type: ignore[arg-type]


class TestSupplierInactive:
    @pytest.mark.parametrize(
        "status",
        [
            RegistrationStatus.BAIXADA,
            RegistrationStatus.NULA,
            RegistrationStatus.SUSPENSA,
            RegistrationStatus.INAPTA,
        ],
    )
    def test_inactive_status_dated_the_day_before_is_critical(
        self, status: RegistrationStatus
    ) -> None:
        reg = registration(status=status, status_date=DAY - dt.timedelta(days=1))
        [finding] = supplier_inactive(expense(), reg, SETTINGS)
        assert finding.rule_code == RuleCode.SUPPLIER_INACTIVE
        assert finding.severity == Severity.CRITICAL
        assert finding.expense_id == 1
        assert finding.evidence == {
            "supplier_cnpj": CLASSIC,
            "status": str(status),
            "status_date": "2026-03-14",
            "expense_date": "2026-03-15",
            "days_inactive_before_expense": 1,
            "provider": "minha-receita",
        }
        assert str(status) in finding.message
        assert "14/03/2026" in finding.message

    def test_status_dated_on_the_expense_day_does_not_fire(self) -> None:
        reg = registration(status=RegistrationStatus.BAIXADA, status_date=DAY)
        assert supplier_inactive(expense(), reg, SETTINGS) == []

    def test_status_dated_after_the_expense_does_not_fire(self) -> None:
        reg = registration(status=RegistrationStatus.BAIXADA, status_date=DAY + dt.timedelta(1))
        assert supplier_inactive(expense(), reg, SETTINGS) == []

    def test_active_supplier_does_not_fire(self) -> None:
        assert supplier_inactive(expense(), registration(), SETTINGS) == []

    def test_inactive_without_date_is_a_warning(self) -> None:
        reg = registration(status=RegistrationStatus.INAPTA, status_date=None)
        [finding] = supplier_inactive(expense(), reg, SETTINGS)
        assert finding.severity == Severity.WARNING
        assert finding.evidence["status_date"] is None

    def test_no_registration_or_not_found_is_left_to_other_rules(self) -> None:
        assert supplier_inactive(expense(), None, SETTINGS) == []
        missing = Registration(cnpj=CLASSIC, found=False, provider="cnpjws")
        assert supplier_inactive(expense(), missing, SETTINGS) == []

    def test_alphanumeric_cnpj_is_named_in_the_message(self) -> None:
        reg = registration(
            ALNUM, status=RegistrationStatus.BAIXADA, status_date=dt.date(2025, 1, 2)
        )
        [finding] = supplier_inactive(expense(ALNUM), reg, SETTINGS)
        assert "12.ABC.345/01DE-35" in finding.message
        assert finding.evidence["supplier_cnpj"] == ALNUM


class TestSupplierNotFound:
    def test_registry_says_it_does_not_exist(self) -> None:
        missing = Registration(cnpj=ALNUM_2, found=False, provider="cnpjws")
        [finding] = supplier_not_found(expense(ALNUM_2), missing, SETTINGS)
        assert finding.rule_code == RuleCode.SUPPLIER_NOT_FOUND
        assert finding.severity == Severity.CRITICAL
        assert finding.evidence == {"supplier_cnpj": ALNUM_2, "provider": "cnpjws"}
        assert "não consta" in finding.message

    def test_found_supplier_or_no_answer_does_not_fire(self) -> None:
        assert supplier_not_found(expense(), registration(), SETTINGS) == []
        assert supplier_not_found(expense(), None, SETTINGS) == []


class TestSupplierRecentlyOpened:
    def test_opened_exactly_n_days_before_fires(self) -> None:
        reg = registration(opened_on=DAY - dt.timedelta(days=90))
        [finding] = supplier_recently_opened(expense(), reg, SETTINGS)
        assert finding.rule_code == RuleCode.SUPPLIER_RECENTLY_OPENED
        assert finding.severity == Severity.WARNING
        assert finding.evidence["days_opened_before_expense"] == 90
        assert finding.evidence["opened_after_expense"] is False
        assert finding.evidence["recently_opened_days"] == 90

    def test_opened_n_plus_one_days_before_does_not_fire(self) -> None:
        reg = registration(opened_on=DAY - dt.timedelta(days=91))
        assert supplier_recently_opened(expense(), reg, SETTINGS) == []

    def test_opened_on_the_expense_day_fires(self) -> None:
        reg = registration(opened_on=DAY)
        [finding] = supplier_recently_opened(expense(), reg, SETTINGS)
        assert finding.evidence["days_opened_before_expense"] == 0

    def test_opened_after_the_expense_fires(self) -> None:
        reg = registration(ALNUM, opened_on=DAY + dt.timedelta(days=3))
        [finding] = supplier_recently_opened(expense(ALNUM), reg, SETTINGS)
        assert finding.evidence["opened_after_expense"] is True
        assert finding.evidence["days_opened_before_expense"] == -3
        assert "depois da despesa" in finding.message

    def test_window_follows_the_setting(self) -> None:
        settings = RuleSettings(recently_opened_days=0)
        assert supplier_recently_opened(expense(), registration(opened_on=DAY), settings)
        one_day = registration(opened_on=DAY - dt.timedelta(days=1))
        assert supplier_recently_opened(expense(), one_day, settings) == []

    def test_unknown_opening_date_does_not_fire(self) -> None:
        assert supplier_recently_opened(expense(), registration(opened_on=None), SETTINGS) == []
        assert supplier_recently_opened(expense(), None, SETTINGS) == []


class TestCnaeMismatch:
    @pytest.mark.parametrize("cnae", ["8121400", "8121-4/00", "81.21-4-00", "8122200"])
    def test_cleaning_company_for_cleaning_does_not_fire(self, cnae: str) -> None:
        assert cnae_mismatch(expense(), registration(main_cnae=cnae), SETTINGS) == []

    def test_supermarket_for_cleaning_is_info(self) -> None:
        [finding] = cnae_mismatch(expense(), registration(main_cnae="4711-3/02"), SETTINGS)
        assert finding.rule_code == RuleCode.CNAE_MISMATCH
        assert finding.severity == Severity.INFO
        assert finding.evidence["main_cnae"] == "4711302"
        assert finding.evidence["category"] == "limpeza"
        assert "8121400" in finding.evidence["allowed_cnae_prefixes"]

    def test_category_accents_and_case_are_ignored(self) -> None:
        electrician = registration(main_cnae="4321-5/00")
        assert cnae_mismatch(expense(category=" Manutenção "), electrician, SETTINGS) == []
        restaurant = registration(main_cnae="5611-2/01")
        assert cnae_mismatch(expense(category="MANUTENÇÃO"), restaurant, SETTINGS)

    def test_division_prefix_matches_only_its_division(self) -> None:
        # "43" (manutencao) accepts 4399-1/03 but not 4530-7/03 (auto parts).
        assert (
            cnae_mismatch(
                expense(category="manutencao"), registration(main_cnae="4399103"), SETTINGS
            )
            == []
        )
        assert cnae_mismatch(
            expense(category="manutencao"), registration(main_cnae="4530703"), SETTINGS
        )

    def test_elevator_maintenance_subclass(self) -> None:
        elevator = expense(category="elevadores")
        assert cnae_mismatch(elevator, registration(main_cnae="4329-1/03"), SETTINGS) == []
        assert cnae_mismatch(elevator, registration(main_cnae="4329-1/04"), SETTINGS)

    def test_unmapped_category_or_missing_cnae_does_not_fire(self) -> None:
        assert (
            cnae_mismatch(expense(category="festas"), registration(main_cnae="4711302"), SETTINGS)
            == []
        )
        assert cnae_mismatch(expense(), registration(main_cnae=None), SETTINGS) == []
        assert cnae_mismatch(expense(), None, SETTINGS) == []

    def test_condominium_mapping_replaces_the_default(self) -> None:
        settings = RuleSettings(cnae_mapping={"Limpeza": ["4711-3"]})
        assert cnae_mismatch(expense(), registration(main_cnae="4711302"), settings) == []
        assert cnae_mismatch(expense(), registration(main_cnae="8121400"), settings)
        assert (
            cnae_mismatch(
                expense(category="manutencao"), registration(main_cnae="5611201"), settings
            )
            == []
        )
