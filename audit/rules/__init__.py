"""Audit rules and bank reconciliation: pure functions from facts to finding drafts.

Entry points: ``evaluate`` / ``evaluate_batch`` (all rules and the matcher over a batch),
``match_transactions`` (the one-to-one matcher) and the rules one by one.

Rule (severity): when it fires; every window and threshold is a RuleSettings field.
- SUPPLIER_NOT_FOUND (critical): the registry answered that the CNPJ does not exist.
- SUPPLIER_INACTIVE (critical): BAIXADA, NULA, SUSPENSA or INAPTA with a status date
  strictly before the expense date (warning when the registry gives no date).
- SUPPLIER_RECENTLY_OPENED (warning): opened after the expense, or 0..recently_opened_days
  days before it (inclusive).
- NO_BANK_MATCH (warning): no debit paired by the matcher (reconciliation.py), judged only
  when bank data is available.
- DUPLICATE_PAYMENT (critical): same supplier and same normalized invoice number at any
  date, or same amount to the cent at most duplicate_window_days apart unless both carry
  different invoice numbers.
- SPLIT_PAYMENT (warning): >= 2 payments to one supplier, each <= approval_threshold,
  dated within split_window_days of the first, summing to > approval_threshold.
- AMOUNT_OUTLIER (info): robust z-score above outlier_zscore against >= outlier_min_history
  other expenses of the supplier, or of the category (one finding per scope).
- CNAE_MISMATCH (info): the supplier's main CNAE starts with none of the prefixes mapped
  to the expense category (cnae_mapping.json by default).
"""

from audit.rules.engine import BatchEvaluation, evaluate, evaluate_batch
from audit.rules.model import ExpenseFacts, FindingDraft, RuleCode, Severity, fingerprint
from audit.rules.payments import amount_outlier, duplicate_payment, split_payment
from audit.rules.reconciliation import match_transactions, no_bank_match
from audit.rules.settings import RuleSettings, default_cnae_mapping
from audit.rules.supplier import (
    cnae_mismatch,
    supplier_inactive,
    supplier_not_found,
    supplier_recently_opened,
)

__all__ = [
    "BatchEvaluation",
    "ExpenseFacts",
    "FindingDraft",
    "RuleCode",
    "RuleSettings",
    "Severity",
    "amount_outlier",
    "cnae_mismatch",
    "default_cnae_mapping",
    "duplicate_payment",
    "evaluate",
    "evaluate_batch",
    "fingerprint",
    "match_transactions",
    "no_bank_match",
    "split_payment",
    "supplier_inactive",
    "supplier_not_found",
    "supplier_recently_opened",
]
