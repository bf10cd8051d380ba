"""Rules over an expense and its supplier's registry record.

Each takes the expense, the registration (None when no lookup answered yet, and then the
rule stays silent: absence of data is not evidence) and the settings.
"""

from __future__ import annotations

from audit.cnpj import format_cnpj
from audit.providers.base import Registration, RegistrationStatus
from audit.rules.model import (
    ExpenseFacts,
    FindingDraft,
    RuleCode,
    Severity,
    br_date,
    draft,
)
from audit.rules.settings import RuleSettings, cnae_digits, normalize_category

INACTIVE_STATUSES = frozenset(
    {
        RegistrationStatus.BAIXADA,
        RegistrationStatus.NULA,
        RegistrationStatus.SUSPENSA,
        RegistrationStatus.INAPTA,
    }
)


def _cnpj_text(cnpj: str) -> str:
    try:
        return format_cnpj(cnpj)
    except ValueError:
        return cnpj


def supplier_inactive(
    expense: ExpenseFacts, registration: Registration | None, settings: RuleSettings
) -> list[FindingDraft]:
    """Critical when the status was inactive strictly before the expense date.

    A status dated the same day as the expense or later does not fire (the company may
    still have been active when it billed). An inactive status without a date cannot be
    placed in time: it fires as a warning.
    """
    if registration is None or not registration.found:
        return []
    status = registration.status
    if status is None or status not in INACTIVE_STATUSES:
        return []
    status_date = registration.status_date
    if status_date is not None and status_date >= expense.expense_date:
        return []
    evidence = {
        "supplier_cnpj": expense.supplier_cnpj,
        "status": str(status),
        "status_date": status_date.isoformat() if status_date else None,
        "expense_date": expense.expense_date.isoformat(),
        "days_inactive_before_expense": (
            (expense.expense_date - status_date).days if status_date else None
        ),
        "provider": registration.provider,
    }
    if status_date is None:
        message = (
            f"Fornecedor {_cnpj_text(expense.supplier_cnpj)} está com situação cadastral "
            f"{status} sem data informada; a despesa é de {br_date(expense.expense_date)}."
        )
        severity = Severity.WARNING
    else:
        message = (
            f"Fornecedor {_cnpj_text(expense.supplier_cnpj)} está com situação cadastral "
            f"{status} desde {br_date(status_date)}, antes da despesa de "
            f"{br_date(expense.expense_date)}."
        )
        severity = Severity.CRITICAL
    return [draft(RuleCode.SUPPLIER_INACTIVE, severity, expense, message, evidence)]


def supplier_not_found(
    expense: ExpenseFacts, registration: Registration | None, settings: RuleSettings
) -> list[FindingDraft]:
    """Critical when the registry answered that the CNPJ does not exist."""
    if registration is None or registration.found:
        return []
    message = (
        f"O CNPJ {_cnpj_text(expense.supplier_cnpj)} do fornecedor não consta no cadastro "
        f"da Receita Federal (consulta via {registration.provider})."
    )
    evidence = {"supplier_cnpj": expense.supplier_cnpj, "provider": registration.provider}
    return [draft(RuleCode.SUPPLIER_NOT_FOUND, Severity.CRITICAL, expense, message, evidence)]


def supplier_recently_opened(
    expense: ExpenseFacts, registration: Registration | None, settings: RuleSettings
) -> list[FindingDraft]:
    """Warning when the supplier opened after the expense or at most N days before it.

    N = settings.recently_opened_days, inclusive: opened exactly N days before fires,
    N + 1 days before does not.
    """
    if registration is None or not registration.found or registration.opened_on is None:
        return []
    opened = registration.opened_on
    days_before = (expense.expense_date - opened).days
    if days_before > settings.recently_opened_days:
        return []
    after = days_before < 0
    evidence = {
        "supplier_cnpj": expense.supplier_cnpj,
        "opened_on": opened.isoformat(),
        "expense_date": expense.expense_date.isoformat(),
        "days_opened_before_expense": days_before,
        "opened_after_expense": after,
        "recently_opened_days": settings.recently_opened_days,
    }
    if after:
        message = (
            f"Fornecedor {_cnpj_text(expense.supplier_cnpj)} foi aberto em {br_date(opened)}, "
            f"depois da despesa de {br_date(expense.expense_date)}."
        )
    else:
        message = (
            f"Fornecedor {_cnpj_text(expense.supplier_cnpj)} foi aberto em {br_date(opened)}, "
            f"{days_before} dia(s) antes da despesa de {br_date(expense.expense_date)} "
            f"(limite: {settings.recently_opened_days} dias)."
        )
    return [draft(RuleCode.SUPPLIER_RECENTLY_OPENED, Severity.WARNING, expense, message, evidence)]


def cnae_mismatch(
    expense: ExpenseFacts, registration: Registration | None, settings: RuleSettings
) -> list[FindingDraft]:
    """Info when the supplier's main CNAE starts with none of the category's prefixes.

    Silent when the category is not in the map or the registry gave no CNAE.
    """
    if registration is None or not registration.found or not registration.main_cnae:
        return []
    category = normalize_category(expense.category)
    allowed = settings.cnae_mapping.get(category)
    if allowed is None:
        return []
    cnae = cnae_digits(registration.main_cnae)
    if not cnae or any(cnae.startswith(prefix) for prefix in allowed):
        return []
    message = (
        f"A atividade principal do fornecedor {_cnpj_text(expense.supplier_cnpj)} "
        f"(CNAE {registration.main_cnae}) não é compatível com a categoria "
        f"'{expense.category}' da despesa."
    )
    evidence = {
        "supplier_cnpj": expense.supplier_cnpj,
        "main_cnae": cnae,
        "category": category,
        "allowed_cnae_prefixes": list(allowed),
    }
    return [draft(RuleCode.CNAE_MISMATCH, Severity.INFO, expense, message, evidence)]
