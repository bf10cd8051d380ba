"""One-to-one reconciliation of expenses with the condominium's bank debits.

A debit can pay an expense when (all inclusive):
- its type is DEBIT (CREDIT never pays an expense; status PENDING or POSTED both count);
- its absolute amount equals the expense amount to the cent (Pluggy may sign debits
  negative);
- its date is at most match_window_days before or after the expense date;
- it carries no receiver document, or the receiver document (mask removed) equals the
  supplier's CNPJ. A receiver CPF or another CNPJ rules the debit out.

Among all one-to-one assignments (a debit pays at most one expense, an expense is paid by
at most one debit) the matcher takes one that pays the most expenses, and among those the
one of least total cost, where a pair costs its distance in days plus (window + 1) when
the debit carries no receiver document: a debit naming the supplier beats any debit that
names no one, then the closer date wins. So when one debit could pay two expenses, it goes
to the one that leaves the other a candidate of its own.

Speed: candidates exist only within one amount in cents, so expenses and debits are
grouped by cents and each group is split into connected components; a component with one
expense or one debit is settled directly, larger ones by a primal-dual min-cost flow (see
_min_cost_max_matching). Inputs are sorted by (date, id) first, so the result does not
depend on input order.
"""

from __future__ import annotations

import bisect
import heapq
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from audit.providers.base import BankTransactionRecord
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
from audit.rules.settings import RuleSettings

_MASK = re.compile(r"[.\-/\s]")


def is_debit(tx: BankTransactionRecord) -> bool:
    return tx.type.strip().upper() == "DEBIT"


def receiver_document(tx: BankTransactionRecord) -> str | None:
    """The receiver's CPF/CNPJ without mask, upper-case; None when absent."""
    if not tx.receiver_document:
        return None
    return _MASK.sub("", tx.receiver_document).upper() or None


def pair_cost(expense: ExpenseFacts, tx: BankTransactionRecord, window: int) -> int | None:
    """The cost of paying expense with tx, None when tx cannot pay it (see module doc)."""
    if not is_debit(tx) or to_cents(abs(tx.amount)) != to_cents(expense.amount):
        return None
    days = abs((tx.date - expense.expense_date).days)
    if days > window:
        return None
    document = receiver_document(tx)
    if document is None:
        return days + window + 1
    if document != expense.supplier_cnpj:
        return None
    return days


def _min_cost_max_matching(
    n_left: int, n_right: int, pairs: Sequence[tuple[int, int, int]]
) -> list[tuple[int, int]]:
    """Max-cardinality, then min-cost bipartite matching; pairs are (left, right, cost).

    Primal-dual min-cost flow: Dijkstra with potentials finds the shortest augmenting
    distance, then a depth-first search augments along as many disjoint paths as it finds
    whose edges all have zero reduced cost (each is a shortest path, so optimality holds),
    and the two steps repeat until no augmenting path is left. Costs are small integers,
    so there are few rounds even when hundreds of expenses share one amount.
    """
    n = n_left + n_right + 2
    source, sink = n - 2, n - 1
    head: list[list[int]] = [[] for _ in range(n)]
    to: list[int] = []
    cap: list[int] = []
    cost: list[int] = []

    def add(u: int, v: int, c: int) -> None:
        # edge e and its reverse e ^ 1 are stored side by side
        head[u].append(len(to))
        to.append(v)
        cap.append(1)
        cost.append(c)
        head[v].append(len(to))
        to.append(u)
        cap.append(0)
        cost.append(-c)

    for i in range(n_left):
        add(source, i, 0)
    for i, j, c in pairs:
        add(i, n_left + j, c)
    for j in range(n_right):
        add(n_left + j, sink, 0)

    unreached = 1 << 62
    potential = [0] * n
    while True:
        dist = [unreached] * n
        dist[source] = 0
        heap = [(0, source)]
        while heap:
            d, u = heapq.heappop(heap)
            if d > dist[u]:
                continue
            base = d + potential[u]
            for e in head[u]:
                if cap[e]:
                    v = to[e]
                    nd = base + cost[e] - potential[v]
                    if nd < dist[v]:
                        dist[v] = nd
                        heapq.heappush(heap, (nd, v))
        if dist[sink] == unreached:
            break
        for v in range(n):
            if dist[v] != unreached:
                potential[v] += dist[v]

        pointer = [0] * n
        dead = [False] * n
        on_path = [False] * n
        while True:
            nodes, edges = [source], []
            on_path[source] = True
            while nodes and nodes[-1] != sink:
                u = nodes[-1]
                arcs = head[u]
                while pointer[u] < len(arcs):
                    e = arcs[pointer[u]]
                    v = to[e]
                    if (
                        cap[e]
                        and not on_path[v]
                        and not dead[v]
                        and dist[v] != unreached
                        and cost[e] + potential[u] - potential[v] == 0
                    ):
                        break
                    pointer[u] += 1
                if pointer[u] < len(arcs):
                    e = arcs[pointer[u]]
                    nodes.append(to[e])
                    edges.append(e)
                    on_path[to[e]] = True
                else:
                    dead[u] = True
                    on_path[u] = False
                    nodes.pop()
                    if edges:
                        edges.pop()
                        pointer[nodes[-1]] += 1
            if not nodes:
                break
            for e in edges:
                cap[e] -= 1
                cap[e ^ 1] += 1
            for v in nodes:
                on_path[v] = False

    matching = []
    for i in range(n_left):
        for e in head[i]:
            if e % 2 == 0 and cap[e] == 0 and n_left <= to[e] < n_left + n_right:
                matching.append((i, to[e] - n_left))
    return matching


def _components(
    n_left: int, n_right: int, pairs: Sequence[tuple[int, int, int]]
) -> list[list[tuple[int, int, int]]]:
    parent = list(range(n_left + n_right))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in pairs:
        a, b = find(i), find(n_left + j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    grouped: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for pair in pairs:
        grouped[find(pair[0])].append(pair)
    return [grouped[root] for root in sorted(grouped)]


def _settle(pairs: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    lefts = sorted({i for i, _, _ in pairs})
    rights = sorted({j for _, j, _ in pairs})
    if len(lefts) == 1 or len(rights) == 1:
        i, j, _ = min(pairs, key=lambda p: (p[2], p[0], p[1]))
        return [(i, j)]
    left_at = {i: k for k, i in enumerate(lefts)}
    right_at = {j: k for k, j in enumerate(rights)}
    local = [(left_at[i], right_at[j], c) for i, j, c in pairs]
    matched = _min_cost_max_matching(len(lefts), len(rights), local)
    return [(lefts[a], rights[b]) for a, b in matched]


def match_transactions(
    expenses: Sequence[ExpenseFacts],
    transactions: Sequence[BankTransactionRecord],
    settings: RuleSettings,
) -> dict[int, str]:
    """expense_id -> transaction id, one-to-one (see the module doc for the rules)."""
    window = settings.match_window_days
    by_cents_expenses: dict[int, list[ExpenseFacts]] = defaultdict(list)
    seen_expenses: set[int] = set()
    for expense in sorted(expenses, key=lambda e: (e.expense_date, e.expense_id)):
        if expense.expense_id not in seen_expenses:
            seen_expenses.add(expense.expense_id)
            by_cents_expenses[to_cents(expense.amount)].append(expense)
    by_cents_debits: dict[int, list[BankTransactionRecord]] = defaultdict(list)
    seen_tx: set[str] = set()
    for tx in sorted(transactions, key=lambda t: (t.date, t.id)):
        if is_debit(tx) and tx.id not in seen_tx:
            seen_tx.add(tx.id)
            by_cents_debits[to_cents(abs(tx.amount))].append(tx)

    matches: dict[int, str] = {}
    for cents, group in by_cents_expenses.items():
        debits = by_cents_debits.get(cents)
        if not debits:
            continue
        ordinals = [tx.date.toordinal() for tx in debits]
        pairs: list[tuple[int, int, int]] = []
        for i, expense in enumerate(group):
            day = expense.expense_date.toordinal()
            lo = bisect.bisect_left(ordinals, day - window)
            hi = bisect.bisect_right(ordinals, day + window)
            for j in range(lo, hi):
                cost = pair_cost(expense, debits[j], window)
                if cost is not None:
                    pairs.append((i, j, cost))
        for component in _components(len(group), len(debits), pairs):
            for i, j in _settle(component):
                matches[group[i].expense_id] = debits[j].id
    return matches


def _tx_ref(tx: BankTransactionRecord, expense: ExpenseFacts) -> dict[str, object]:
    return {
        "transaction_id": tx.id,
        "date": tx.date.isoformat(),
        "days_apart": abs((tx.date - expense.expense_date).days),
        "receiver_document": receiver_document(tx),
    }


def no_bank_match(
    expense: ExpenseFacts,
    matches: Mapping[int, str],
    transactions: Iterable[BankTransactionRecord],
    settings: RuleSettings,
) -> list[FindingDraft]:
    """Warning when the matcher paired no debit with the expense; the evidence says why.

    reason: no_debit_with_amount (no debit of that amount at all), outside_window (the
    nearest one is too far), receiver_mismatch (debits in the window pay someone else) or
    taken_by_other_expense (the compatible debits paid other expenses).
    """
    if expense.expense_id in matches:
        return []
    window = settings.match_window_days
    cents = to_cents(expense.amount)
    same_amount = sorted(
        (t for t in transactions if is_debit(t) and to_cents(abs(t.amount)) == cents),
        key=lambda t: (abs((t.date - expense.expense_date).days), t.date, t.id),
    )
    in_window = [t for t in same_amount if abs((t.date - expense.expense_date).days) <= window]
    compatible = [t for t in in_window if pair_cost(expense, t, window) is not None]
    paid_by = {tx_id: expense_id for expense_id, tx_id in matches.items()}
    start = expense.expense_date.fromordinal(expense.expense_date.toordinal() - window)
    end = expense.expense_date.fromordinal(expense.expense_date.toordinal() + window)
    evidence: dict[str, object] = {
        "supplier_cnpj": expense.supplier_cnpj,
        "amount": money(expense.amount),
        "expense_date": expense.expense_date.isoformat(),
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "match_window_days": window,
        "same_amount_debits": len(same_amount),
    }
    if not same_amount:
        reason, detail = "no_debit_with_amount", "não há débito desse valor no período consultado"
    elif not in_window:
        nearest = same_amount[0]
        reason = "outside_window"
        evidence["nearest"] = _tx_ref(nearest, expense)
        detail = (
            f"o débito de mesmo valor mais próximo é de {br_date(nearest.date)}, "
            f"{abs((nearest.date - expense.expense_date).days)} dia(s) de distância"
        )
    elif not compatible:
        reason = "receiver_mismatch"
        evidence["candidates"] = [_tx_ref(t, expense) for t in in_window]
        detail = "há débito desse valor na janela, mas para outro favorecido"
    else:
        reason = "taken_by_other_expense"
        evidence["candidates"] = [
            {**_tx_ref(t, expense), "paid_expense_id": paid_by.get(t.id)} for t in compatible
        ]
        detail = "os débitos compatíveis já foram conciliados com outras despesas"
    evidence["reason"] = reason
    message = (
        f"Nenhum débito bancário de {brl(expense.amount)} entre {br_date(start)} e "
        f"{br_date(end)} corresponde à despesa {expense.external_id}: {detail}."
    )
    return [draft(RuleCode.NO_BANK_MATCH, Severity.WARNING, expense, message, evidence)]
