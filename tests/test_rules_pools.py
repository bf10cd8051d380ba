"""The engine's amount pools give exactly what the rules' definitions give, member by member."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest

from audit.cnpj import check_digits
from audit.rules import ExpenseFacts, RuleCode, RuleSettings, amount_outlier, evaluate
from audit.rules.model import to_cents
from audit.rules.payments import AmountPool, outlier_findings, robust_stats
from audit.rules.settings import normalize_category

FLOORS = [Decimal(0), Decimal("0.05"), Decimal("0.5")]


def amounts(rng: random.Random, count: int) -> list[Decimal]:
    """Repeated values, spread and outliers, and sub-cent amounts that round half-up."""
    shape = rng.choice(("flat", "spread", "repeats"))
    values = []
    for _ in range(count):
        if shape == "flat":
            cents = 150_000
        elif shape == "repeats":
            cents = rng.choice((99_90, 100_00, 100_00, 250_00))
        else:
            cents = rng.randrange(1_00, 20_000_00)
        values.append(Decimal(cents) / 100 + rng.choice((0, 0, Decimal("0.005"))))
    return values


@pytest.mark.parametrize("seed", range(40))
def test_a_pool_less_one_member_has_the_statistics_of_the_others(seed: int) -> None:
    rng = random.Random(seed)
    group = amounts(rng, rng.randrange(2, 60))
    pool = AmountPool(to_cents(a) for a in group)
    for position, member in enumerate(group):
        others = group[:position] + group[position + 1 :]
        sample = pool.without(to_cents(member))
        floor = rng.choice(FLOORS)
        assert sample.stats(floor) == robust_stats(others, floor)
        assert sample.count == len(others)
        assert (sample.low(), sample.high()) == (
            Decimal(to_cents(min(others))) / 100,
            Decimal(to_cents(max(others))) / 100,
        )


@pytest.mark.parametrize("seed", range(40))
def test_an_amount_is_an_outlier_exactly_when_its_robust_score_passes_the_threshold(
    seed: int,
) -> None:
    """outlier_findings judges most amounts by the median alone (the spread is never below
    the floor); the verdict must be the one the definition's statistics give."""
    rng = random.Random(seed)
    group = amounts(rng, rng.randrange(2, 60))
    settings = RuleSettings(
        outlier_min_history=2,
        outlier_scale_floor_ratio=rng.choice(FLOORS),
        outlier_zscore=rng.choice((Decimal("0.5"), Decimal("1"), Decimal("3.5"))),
    )
    pool = AmountPool(to_cents(a) for a in group)
    none = AmountPool([]).without(None)
    verdicts = set()
    for position, member in enumerate(group):
        others = group[:position] + group[position + 1 :]
        if len(others) < 2:
            continue
        stats = robust_stats(others, settings.outlier_scale_floor_ratio)
        expected = stats.scale > 0 and member - stats.median > settings.outlier_zscore * stats.scale
        expense = ExpenseFacts(
            expense_id=position,
            condominium_id="c1",
            external_id=f"e{position}",
            supplier_cnpj=cnpj(1),
            amount=member,
            expense_date=dt.date(2026, 10, 1),
            description="x",
            category="x",
        )
        found = outlier_findings(expense, pool.without(to_cents(member)), none, settings)
        assert bool(found) == expected, (member, stats)
        if found:
            assert found[0].evidence["median"] == str(stats.median.quantize(Decimal("0.01")))
        verdicts.add(expected)
    if seed == 0:
        assert verdicts == {True, False}, "the data should hold both verdicts"


def test_a_whole_pool_has_the_statistics_of_its_amounts() -> None:
    group = amounts(random.Random(99), 31)
    assert AmountPool(to_cents(a) for a in group).without(None).stats(
        Decimal("0.05")
    ) == robust_stats(group, Decimal("0.05"))


def test_only_a_member_can_be_left_out() -> None:
    with pytest.raises(ValueError, match="not a member"):
        AmountPool([100, 200]).without(150)


def cnpj(n: int) -> str:
    base = f"{n:08d}0001"
    return base + check_digits(base)


@pytest.mark.parametrize("seed", range(10))
def test_the_engine_finds_the_outliers_amount_outlier_finds(seed: int) -> None:
    """A year of history in a few suppliers and categories: the engine's pooled outliers are
    amount_outlier's over the category's expenses plus the supplier's in other categories."""
    rng = random.Random(seed)
    suppliers = [cnpj(n) for n in range(1, 6)]
    categories = ["Limpeza", "limpeza ", "Manutenção", "energia"]
    known = [
        ExpenseFacts(
            expense_id=n,
            condominium_id="c1",
            external_id=f"e{n}",
            supplier_cnpj=rng.choice(suppliers),
            amount=Decimal(rng.randrange(900_00, 1_100_00) * rng.choice((1, 1, 1, 1, 10))) / 100,
            expense_date=dt.date(2026, 1, 1) + dt.timedelta(days=rng.randrange(365)),
            description="x",
            category=rng.choice(categories),
        )
        for n in range(1, 300)
    ]
    batch, history = known[:40], known[40:]
    settings = RuleSettings()
    result = evaluate(batch, {}, [], history, settings, bank_data_available=False)
    pooled = [f for f in result.findings if f.rule_code == RuleCode.AMOUNT_OUTLIER]
    expected = []
    for expense in batch:
        category = normalize_category(expense.category)
        same_category = [p for p in known if normalize_category(p.category) == category]
        others = [p for p in known if p.supplier_cnpj == expense.supplier_cnpj]
        peers = same_category + [p for p in others if p not in same_category]
        expected.extend(amount_outlier(expense, peers, settings))
    assert pooled, "the data should hold outliers"
    assert sorted(pooled, key=lambda f: f.fingerprint) == sorted(
        expected, key=lambda f: f.fingerprint
    )
