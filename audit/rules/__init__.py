"""Audit rules and bank reconciliation: pure functions from facts to finding drafts.

Entry points: ``evaluate`` / ``evaluate_batch`` (all rules and the matcher over a batch),
``match_transactions`` (the one-to-one matcher) and the rules one by one.
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
