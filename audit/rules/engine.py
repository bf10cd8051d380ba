"""The engine: every rule over a batch, plus the reconciliation.

Pure: the caller loads the batch's expenses, the suppliers' registrations, the
condominium's debits for the batch's period (widened by match_window_days on each side,
excluding debits already paid to expenses outside the batch) and the condominium's
earlier expenses, and stores what comes back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from audit.providers.base import BankTransactionRecord, Registration
from audit.rules.model import ExpenseFacts, FindingDraft, RuleCode, to_cents
from audit.rules.payments import AmountPool, duplicate_payment, outlier_findings, split_payment
from audit.rules.reconciliation import is_debit, match_transactions, no_bank_match
from audit.rules.settings import RuleSettings, normalize_category
from audit.rules.supplier import (
    cnae_mismatch,
    supplier_inactive,
    supplier_not_found,
    supplier_recently_opened,
)

SUPPLIER_RULES = (supplier_not_found, supplier_inactive, supplier_recently_opened, cnae_mismatch)
RULE_ORDER = {code: rank for rank, code in enumerate(RuleCode)}


@dataclass(frozen=True)
class BatchEvaluation:
    findings: list[FindingDraft]
    matches: dict[int, str]  # expense_id -> bank transaction id (empty without bank data)


def evaluate(
    expenses: Sequence[ExpenseFacts],
    registrations: Mapping[str, Registration],
    transactions: Sequence[BankTransactionRecord],
    history: Sequence[ExpenseFacts],
    settings: RuleSettings,
    *,
    bank_data_available: bool,
    history_cents_by_category: Mapping[str, Sequence[int]] | None = None,
) -> BatchEvaluation:
    """Findings ordered by (expense, rule, fingerprint), and the matches to store.

    history: the condominium's other expenses; one also present in the batch (same
    expense_id) counts once. history_cents_by_category: the amounts, in cents, of the batch's
    condominium's other expenses that `history` leaves out, by category: the category's
    outlier pool is all the rules read of an expense of a supplier the batch does not pay, so
    a caller may send only the batch's suppliers' expenses in full (audit.pgbatch does).
    NO_BANK_MATCH is only judged when bank_data_available.
    """
    known: dict[int, ExpenseFacts] = {h.expense_id: h for h in history}
    known.update((e.expense_id, e) for e in expenses)
    by_supplier: dict[tuple[str, str], list[ExpenseFacts]] = defaultdict(list)
    supplier_cents: dict[tuple[str, str], list[int]] = defaultdict(list)
    category_cents: dict[tuple[str, str], list[int]] = defaultdict(list)
    for item in known.values():
        supplier_key = (item.condominium_id, item.supplier_cnpj)
        by_supplier[supplier_key].append(item)
        supplier_cents[supplier_key].append(item.cents)
        category_cents[(item.condominium_id, normalize_category(item.category))].append(item.cents)
    if expenses and history_cents_by_category:
        condominium_id = expenses[0].condominium_id
        for category, cents in history_cents_by_category.items():
            category_cents[(condominium_id, normalize_category(category))].extend(cents)

    matches: dict[int, str] = {}
    debits_by_cents: dict[int, list[BankTransactionRecord]] = defaultdict(list)
    if bank_data_available:
        matches = match_transactions(expenses, transactions, settings)
        for tx in transactions:
            if is_debit(tx):
                debits_by_cents[to_cents(abs(tx.amount))].append(tx)

    supplier_pools: dict[tuple[str, str], AmountPool] = {}
    category_pools: dict[tuple[str, str], AmountPool] = {}
    findings: list[FindingDraft] = []
    for expense in expenses:
        registration = registrations.get(expense.supplier_cnpj)
        for rule in SUPPLIER_RULES:
            findings.extend(rule(expense, registration, settings))
        supplier_peers = by_supplier[(expense.condominium_id, expense.supplier_cnpj)]
        findings.extend(duplicate_payment(expense, supplier_peers, settings))
        findings.extend(split_payment(expense, supplier_peers, settings))
        # amount_outlier over the supplier's and the category's other expenses, each group
        # sorted once for the batch rather than once per expense
        supplier_key = (expense.condominium_id, expense.supplier_cnpj)
        category_key = (expense.condominium_id, normalize_category(expense.category))
        findings.extend(
            outlier_findings(
                expense,
                pool(supplier_pools, supplier_cents, supplier_key).without(expense.cents),
                pool(category_pools, category_cents, category_key).without(expense.cents),
                settings,
            )
        )
        if bank_data_available:
            candidates = debits_by_cents.get(expense.cents, [])
            findings.extend(no_bank_match(expense, matches, candidates, settings))

    position = {e.expense_id: k for k, e in enumerate(expenses)}
    findings.sort(
        key=lambda f: (
            position.get(f.expense_id or 0, 0),
            RULE_ORDER[f.rule_code],
            f.fingerprint,
        )
    )
    return BatchEvaluation(findings=findings, matches=matches)


def pool(
    pools: dict[tuple[str, str], AmountPool],
    groups: Mapping[tuple[str, str], list[int]],
    key: tuple[str, str],
) -> AmountPool:
    """The group's amount pool (its members' cents), built on first use."""
    found = pools.get(key)
    if found is None:
        found = pools[key] = AmountPool(groups[key])
    return found


def evaluate_batch(
    expenses: Sequence[ExpenseFacts],
    registrations: Mapping[str, Registration],
    transactions: Sequence[BankTransactionRecord],
    history: Sequence[ExpenseFacts],
    settings: RuleSettings,
    *,
    bank_data_available: bool,
) -> list[FindingDraft]:
    """All findings of a batch (see evaluate, which also returns the matches)."""
    return evaluate(
        expenses,
        registrations,
        transactions,
        history,
        settings,
        bank_data_available=bank_data_available,
    ).findings
