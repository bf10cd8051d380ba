"""What the rules read (an expense's facts) and what they write (finding drafts).

The rules are pure: they take these frozen values and return drafts; storing drafts as
``Finding`` rows is the caller's business. A draft's fingerprint names the finding's
identity (rule, expense and, where a rule can fire more than once per expense, its scope),
never its evidence, so a re-run over changed history updates rather than duplicates.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

CENT = Decimal("0.01")


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class RuleCode(StrEnum):
    """Stable codes: stored in ``findings.rule_code`` and used by API filters."""

    SUPPLIER_INACTIVE = "SUPPLIER_INACTIVE"
    SUPPLIER_NOT_FOUND = "SUPPLIER_NOT_FOUND"
    SUPPLIER_RECENTLY_OPENED = "SUPPLIER_RECENTLY_OPENED"
    NO_BANK_MATCH = "NO_BANK_MATCH"
    DUPLICATE_PAYMENT = "DUPLICATE_PAYMENT"
    SPLIT_PAYMENT = "SPLIT_PAYMENT"
    AMOUNT_OUTLIER = "AMOUNT_OUTLIER"
    CNAE_MISMATCH = "CNAE_MISMATCH"


@dataclass(frozen=True)
class ExpenseFacts:
    """One expense as the rules see it; supplier_cnpj is canonical (14 characters)."""

    expense_id: int
    condominium_id: str
    external_id: str
    supplier_cnpj: str
    amount: Decimal
    expense_date: dt.date
    description: str
    category: str
    invoice_number: str | None = None
    # to_cents(amount), once: the history rules compare it against every peer. Set on
    # creation (a cached_property takes a lock on first use, costlier than the sum itself).
    cents: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cents", to_cents(self.amount))


@dataclass(frozen=True)
class FindingDraft:
    rule_code: RuleCode
    severity: Severity
    message: str
    evidence: dict[str, Any]
    expense_id: int | None
    fingerprint: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule_code": str(self.rule_code),
            "severity": str(self.severity),
            "message": self.message,
            "evidence": self.evidence,
            "expense_id": self.expense_id,
            "fingerprint": self.fingerprint,
        }


def fingerprint(rule_code: RuleCode, expense_id: int | None, *scope: str) -> str:
    """sha256 hex (64 characters, the width of ``findings.fingerprint``)."""
    parts = [str(rule_code), "" if expense_id is None else str(expense_id), *scope]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def draft(
    rule_code: RuleCode,
    severity: Severity,
    expense: ExpenseFacts,
    message: str,
    evidence: dict[str, Any],
    *scope: str,
) -> FindingDraft:
    return FindingDraft(
        rule_code=rule_code,
        severity=severity,
        message=message,
        evidence=evidence,
        expense_id=expense.expense_id,
        fingerprint=fingerprint(rule_code, expense.expense_id, *scope),
    )


def to_cents(amount: Decimal) -> int:
    """Whole cents, half-up: comparisons 'to the cent' are integer comparisons."""
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def money(amount: Decimal) -> str:
    """Evidence form of an amount: '1234.50' (no thousands separator, two places)."""
    return str(amount.quantize(CENT, rounding=ROUND_HALF_UP))


def brl(amount: Decimal) -> str:
    """Message form of an amount: 'R$ 1.234,50'."""
    text = f"{amount.quantize(CENT, rounding=ROUND_HALF_UP):,.2f}"
    return "R$ " + text.replace(",", "_").replace(".", ",").replace("_", ".")


def br_date(day: dt.date) -> str:
    return day.strftime("%d/%m/%Y")
