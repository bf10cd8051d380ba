"""Rules that compare an expense with the condominium's other expenses.

``peers`` is every expense of the condominium the caller knows (the batch and its
history); it may contain the expense itself, which is skipped by expense_id, and
expenses of other suppliers or condominiums, which the rules filter out.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from itertools import accumulate
from typing import Any

from audit.rules.model import (
    ExpenseFacts,
    FindingDraft,
    RuleCode,
    Severity,
    br_date,
    brl,
    draft,
    money,
    to_cents,
)
from audit.rules.settings import RuleSettings, normalize_category

_NOT_ALNUM = re.compile(r"[^0-9A-Z]")
_INVOICE_PREFIX = re.compile(r"^(NFSE|NFE|NFS|NF)(?=[0-9])")

# Consistency constants that make MAD and the mean absolute deviation estimate the
# standard deviation of normal data.
MAD_TO_SIGMA = Decimal("1.4826")
MEAN_AD_TO_SIGMA = Decimal("1.2533")


@lru_cache(maxsize=65536)
def normalize_invoice(invoice_number: str | None) -> str | None:
    """'NF-e 000123', 'NFS-e 123' and '123' are one invoice; '000' or blank is none."""
    if invoice_number is None:
        return None
    compact = _INVOICE_PREFIX.sub("", _NOT_ALNUM.sub("", invoice_number.upper())).lstrip("0")
    return compact or None


def _others(expense: ExpenseFacts, peers: Sequence[ExpenseFacts]) -> list[ExpenseFacts]:
    return [
        p
        for p in peers
        if p.expense_id != expense.expense_id and p.condominium_id == expense.condominium_id
    ]


def _enumerate(names: Iterable[str]) -> str:
    """'a', 'a e b', 'a, b e c': the expenses a message names, in Portuguese."""
    items = list(names)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} e {items[-1]}"


def _ref(p: ExpenseFacts) -> dict[str, Any]:
    return {
        "expense_id": p.expense_id,
        "external_id": p.external_id,
        "expense_date": p.expense_date.isoformat(),
        "amount": money(p.amount),
        "invoice_number": p.invoice_number,
    }


def duplicate_payment(
    expense: ExpenseFacts, peers: Sequence[ExpenseFacts], settings: RuleSettings
) -> list[FindingDraft]:
    """Critical when another payment to the same supplier repeats this one.

    Repeats: the same invoice number (normalized, any date), or the same amount to the
    cent at most duplicate_window_days apart (inclusive) unless both carry invoice numbers
    and they differ (two invoices of equal value are two bills). Every expense of the
    batch that has a repeat gets its own finding, listing the others.
    """
    invoice = normalize_invoice(expense.invoice_number)
    cents = expense.cents
    repeats: list[tuple[ExpenseFacts, str, int]] = []
    for other in _others(expense, peers):
        if other.supplier_cnpj != expense.supplier_cnpj:
            continue
        other_invoice = normalize_invoice(other.invoice_number)
        days = abs((other.expense_date - expense.expense_date).days)
        if invoice is not None and invoice == other_invoice:
            reason = "same_invoice"
        elif (
            other.cents == cents
            and days <= settings.duplicate_window_days
            and (invoice is None or other_invoice is None)
        ):
            reason = "same_amount_within_window"
        else:
            continue
        repeats.append((other, reason, days))
    if not repeats:
        return []
    repeats.sort(key=lambda r: (r[0].expense_date, r[0].expense_id))
    first, first_reason, _ = repeats[0]
    if first_reason == "same_invoice":
        what = f"a nota fiscal {expense.invoice_number}, já lançada"
    else:
        what = f"o valor {brl(expense.amount)}, já lançado"
    message = (
        f"Possível pagamento em duplicidade: a despesa {expense.external_id} repete {what} "
        f"para o mesmo fornecedor na despesa {first.external_id} de "
        f"{br_date(first.expense_date)}"
        + (
            f" e em mais {len(repeats) - 1}: "
            + _enumerate(
                f"{other.external_id} de {br_date(other.expense_date)}"
                for other, _, _ in repeats[1:]
            )
            + "."
            if len(repeats) > 1
            else "."
        )
    )
    evidence = {
        "supplier_cnpj": expense.supplier_cnpj,
        "amount": money(expense.amount),
        "expense_date": expense.expense_date.isoformat(),
        "invoice_number": expense.invoice_number,
        "duplicate_window_days": settings.duplicate_window_days,
        "repeats": [
            {**_ref(other), "reason": reason, "days_apart": days} for other, reason, days in repeats
        ],
    }
    return [draft(RuleCode.DUPLICATE_PAYMENT, Severity.CRITICAL, expense, message, evidence)]


def split_payment(
    expense: ExpenseFacts, peers: Sequence[ExpenseFacts], settings: RuleSettings
) -> list[FindingDraft]:
    """Warning when this payment and others to the supplier look split to dodge approval.

    Fires when some set of at least two payments to the supplier, this one among them,
    each at or below approval_threshold (a payment needs approval only above it), dated
    within a span of at most split_window_days (inclusive), sums to strictly more than
    the threshold. The evidence shows the window with the largest total (earliest first
    on ties).
    """
    threshold = settings.approval_threshold
    if expense.amount > threshold:
        return []
    window = settings.split_window_days
    payments = [
        p
        for p in _others(expense, peers)
        if p.supplier_cnpj == expense.supplier_cnpj
        and p.amount <= threshold
        and abs((p.expense_date - expense.expense_date).days) <= window
    ]
    payments.append(expense)
    # No window can sum to more than all of them together (amounts are not negative): the
    # usual case, decided without the windows.
    if len(payments) < 2 or (
        sum((p.amount for p in payments), Decimal(0)) <= threshold
        and all(p.amount >= 0 for p in payments)
    ):
        return []
    payments.sort(key=lambda p: (p.expense_date, p.expense_id))
    best: tuple[Decimal, list[ExpenseFacts]] | None = None
    starts = sorted({p.expense_date for p in payments if p.expense_date <= expense.expense_date})
    for start in starts:
        group = [p for p in payments if 0 <= (p.expense_date - start).days <= window]
        total = sum((p.amount for p in group), Decimal(0))
        if len(group) >= 2 and total > threshold and (best is None or total > best[0]):
            best = (total, group)
    if best is None:
        return []
    total, group = best
    others = [p.external_id for p in group if p.expense_id != expense.expense_id]
    message = (
        f"Possível fracionamento: a despesa {expense.external_id} e "
        f"{'a despesa' if len(others) == 1 else 'as despesas'} {_enumerate(others)} são "
        f"{len(group)} pagamentos ao mesmo fornecedor entre {br_date(group[0].expense_date)} "
        f"e {br_date(group[-1].expense_date)}, cada um até o limite de aprovação de "
        f"{brl(threshold)}, que somam {brl(total)}."
    )
    evidence = {
        "supplier_cnpj": expense.supplier_cnpj,
        "approval_threshold": money(threshold),
        "split_window_days": window,
        "total": money(total),
        "count": len(group),
        "window_start": group[0].expense_date.isoformat(),
        "window_end": group[-1].expense_date.isoformat(),
        "payments": [_ref(p) for p in group],
    }
    return [draft(RuleCode.SPLIT_PAYMENT, Severity.WARNING, expense, message, evidence)]


@dataclass(frozen=True)
class RobustStats:
    median: Decimal
    mad: Decimal
    mean_ad: Decimal
    scale: Decimal
    method: str  # mad, mean_absolute_deviation or median_floor


def _median_halves(ordered: Sequence[int]) -> int:
    """Median of sorted integers that share one parity, so a half-sum is whole."""
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) // 2


def _robust(
    median_halves: int, mad_halves: int, deviation_sum: int, count: int, floor_ratio: Decimal
) -> RobustStats:
    median = Decimal(median_halves) / 200
    mad = Decimal(mad_halves) / 200
    mean_ad = Decimal(deviation_sum) / (200 * count)
    if mad > 0:
        scale, method = MAD_TO_SIGMA * mad, "mad"
    else:
        scale, method = MEAN_AD_TO_SIGMA * mean_ad, "mean_absolute_deviation"
    floor = floor_ratio * abs(median)
    if scale < floor:
        scale, method = floor, "median_floor"
    return RobustStats(median=median, mad=mad, mean_ad=mean_ad, scale=scale, method=method)


def robust_stats(amounts: Sequence[Decimal], floor_ratio: Decimal) -> RobustStats:
    """Median and a robust spread: 1.4826 x MAD, else 1.2533 x mean absolute deviation
    when MAD is 0, never below floor_ratio x |median|.

    The definition, by sorting; AmountSample gives the same figures without the sorts."""
    # Exact integer arithmetic in half-cents: a median of an even count is a half-sum.
    halves = sorted(2 * to_cents(a) for a in amounts)
    median_halves = _median_halves(halves)
    deviations = sorted(abs(v - median_halves) for v in halves)
    return _robust(
        median_halves, _median_halves(deviations), sum(deviations), len(halves), floor_ratio
    )


class AmountPool:
    """One group's amounts (a supplier's or a category's, history and batch) as sorted
    half-cents with prefix sums, built once per batch.

    Each expense of the batch is judged against the group without itself; sorting the
    group again for each one made the rule's cost grow with the history."""

    def __init__(self, cents: Iterable[int]) -> None:
        self.halves = sorted(2 * c for c in cents)
        self.prefix = [0, *accumulate(self.halves)]

    def without(self, cents: int | None) -> AmountSample:
        """The group less one member of `cents` (None: the whole group)."""
        if cents is None:
            return AmountSample(self, None)
        index = bisect.bisect_left(self.halves, 2 * cents)
        if index == len(self.halves) or self.halves[index] != 2 * cents:
            raise ValueError(f"{cents} cents is not a member of the pool")
        return AmountSample(self, index)


class AmountSample:
    """A pool, possibly less one member: order statistics by index, counts by bisection,
    so robust statistics take O(log n) (the same figures as robust_stats)."""

    def __init__(self, pool: AmountPool, skip: int | None) -> None:
        self.pool = pool
        self.skip = skip
        self.count = len(pool.halves) - (skip is not None)

    def at(self, k: int) -> int:
        """The k-th smallest half-cents value (0-based)."""
        if self.skip is not None and k >= self.skip:
            k += 1
        return self.pool.halves[k]

    def low(self) -> Decimal:
        return Decimal(self.at(0)) / 200

    def high(self) -> Decimal:
        return Decimal(self.at(self.count - 1)) / 200

    def median(self) -> Decimal:
        """The median alone (what `stats` reports as its median), in O(1)."""
        return Decimal(self._median(self.at)) / 200

    def _median(self, kth: Callable[[int], int]) -> int:
        mid = self.count // 2
        if self.count % 2:
            return kth(mid)
        return (kth(mid - 1) + kth(mid)) // 2

    def _within(self, center: int, radius: int) -> int:
        """How many values lie in [center - radius, center + radius]."""
        halves = self.pool.halves
        n = bisect.bisect_right(halves, center + radius) - bisect.bisect_left(
            halves, center - radius
        )
        if self.skip is not None and abs(halves[self.skip] - center) <= radius:
            n -= 1
        return n

    def _deviation(self, median: int, k: int) -> int:
        """The k-th smallest |v - median|: the least radius holding k + 1 values."""
        low, high = 0, max(median - self.at(0), self.at(self.count - 1) - median)
        while low < high:
            radius = (low + high) // 2
            if self._within(median, radius) >= k + 1:
                high = radius
            else:
                low = radius + 1
        return low

    def stats(self, floor_ratio: Decimal) -> RobustStats:
        halves, prefix = self.pool.halves, self.pool.prefix
        median = self._median(self.at)
        mad = self._median(lambda k: self._deviation(median, k))
        below = bisect.bisect_left(halves, median)
        total = len(halves)
        deviation_sum = (
            median * below
            - prefix[below]
            + (prefix[total] - prefix[below])
            - median * (total - below)
        )
        if self.skip is not None:
            deviation_sum -= abs(halves[self.skip] - median)
        return _robust(median, mad, deviation_sum, self.count, floor_ratio)


def _q(value: Decimal, places: str = "0.01") -> str:
    return str(value.quantize(Decimal(places)))


def amount_outlier(
    expense: ExpenseFacts, peers: Sequence[ExpenseFacts], settings: RuleSettings
) -> list[FindingDraft]:
    """Info when the amount is unusually high for the supplier and/or the category.

    Reference: the condominium's other expenses of the same supplier (or the same
    category), at least outlier_min_history of them. Robust z-score
    (amount - median) / scale (see robust_stats); fires when strictly above
    outlier_zscore. Only high amounts fire: an unusually small payment is not a loss.
    One finding per scope ("supplier", "category").
    """
    category = normalize_category(expense.category)
    others = _others(expense, peers)
    supplier = [p.cents for p in others if p.supplier_cnpj == expense.supplier_cnpj]
    same_category = [p.cents for p in others if normalize_category(p.category) == category]
    return outlier_findings(
        expense,
        AmountPool(supplier).without(None),
        AmountPool(same_category).without(None),
        settings,
    )


def outlier_findings(
    expense: ExpenseFacts,
    supplier: AmountSample,
    category: AmountSample,
    settings: RuleSettings,
) -> list[FindingDraft]:
    """amount_outlier against the expense's other expenses of its supplier and its category,
    given as samples (the engine keeps one pool per group for the whole batch)."""
    category_key = normalize_category(expense.category)
    findings: list[FindingDraft] = []
    for scope, history in (("supplier", supplier), ("category", category)):
        if history.count < settings.outlier_min_history:
            continue
        # The spread is never below the floor (floor ratio x |median|), so an excess within
        # the threshold times the floor cannot fire: most expenses are judged by the median
        # alone, without the spread's binary searches.
        median = history.median()
        floor = settings.outlier_scale_floor_ratio * abs(median)
        if expense.amount - median <= settings.outlier_zscore * floor:
            continue
        stats = history.stats(settings.outlier_scale_floor_ratio)
        median, scale = stats.median, stats.scale
        excess = expense.amount - median
        if scale <= 0 or excess <= settings.outlier_zscore * scale:
            continue
        score = excess / scale
        what = "o fornecedor" if scope == "supplier" else f"a categoria '{expense.category}'"
        message = (
            f"Valor atípico para {what}: {brl(expense.amount)} contra mediana de "
            f"{brl(median)} em {history.count} despesas do condomínio "
            f"(escore robusto {_q(score)}, limite {settings.outlier_zscore})."
        )
        evidence = {
            "scope": scope,
            "supplier_cnpj": expense.supplier_cnpj,
            "category": category_key,
            "amount": money(expense.amount),
            "history_count": history.count,
            "history_min": money(history.low()),
            "history_max": money(history.high()),
            "median": money(median),
            "mad": _q(stats.mad),
            "mean_absolute_deviation": _q(stats.mean_ad),
            "scale": _q(scale),
            "scale_method": stats.method,
            "robust_zscore": _q(score),
            "zscore_threshold": str(settings.outlier_zscore),
        }
        findings.append(
            draft(RuleCode.AMOUNT_OUTLIER, Severity.INFO, expense, message, evidence, scope)
        )
    return findings
