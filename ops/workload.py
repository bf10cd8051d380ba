"""A synthetic month of condominium expenses and bank transactions, for load tests and sizing.

Everything is a pure function of the seed: condominium ``i`` is generated from ``(seed, i)``
alone, so a load-test user can build its own condominium on demand and 10,000 condominiums
stream one at a time (memory holds one condominium plus the summary's set of CNPJs).

Suppliers come from per-category pools whose ranks are drawn from a bounded power law
(Zipf-like): a handful of utilities, elevator firms and insurers serve thousands of
condominiums, while maintenance, works and cleaning have a long tail of local firms. A
supplier's CNPJ, name and registry record are a function of ``(seed, category, rank)``.

Bank transactions follow Pluggy's shape. Amounts are JSON numbers, negative for DEBIT and
positive for CREDIT, as Pluggy reports bank accounts: match on the absolute value and
``type``. Every expense is paid by one DEBIT within ``payment_lag_days`` (inside the
month), unless a ``missing_transaction`` irregularity was planted; the unit owners' monthly
fees arrive as CREDITs, which is what makes large condominiums need a second page.

Planted irregularities (``PLANT_KINDS``) are listed per condominium so tests can check that
the audit finds them; everything not planted is built to stay clean of them (single monthly
contract payments, per-supplier sums of small payments kept under the approval threshold,
invoice numbers unique per supplier, amounts with random cents).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
import statistics
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from audit.cnpj import check_digits, format_cnpj, normalize_cnpj

CATEGORIES = (
    "manutencao",
    "limpeza",
    "seguranca",
    "energia",
    "agua",
    "gas",
    "elevadores",
    "jardinagem",
    "administracao",
    "seguros",
    "obras",
)

PLANT_KINDS = (
    "duplicate_invoice",
    "split_payment",
    "missing_transaction",
    "amount_outlier",
    "inactive_supplier",
    "supplier_not_found",
)

PAGE_SIZE = 500
ROSTER_SHARE = 0.6  # share of a condominium's variable expenses paid to its regular firms
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_CENT = Decimal("0.01")
# Alphanumeric CNPJs are issued from July 2026 on; their firms cannot be older.
_ALPHANUMERIC_START = dt.date(2026, 7, 1)


@dataclass(frozen=True)
class Pool:
    """A category's supplier pool: its size as a function of N and how skewed its use is."""

    fixed: int  # pool size that does not grow with the number of condominiums
    per_condominium: float  # plus this many suppliers per condominium (the local tail)
    exponent: float  # power-law exponent of the rank distribution; higher = more skewed
    median: float  # median amount in BRL for a condominium of 60 units
    sigma: float  # log-normal spread of amounts
    cnae: str  # the pool's main CNAE (7 digits), served as the registry's atividade_principal
    head: int  # ranks below this are national firms: always active, always classic CNPJs


POOLS: dict[str, Pool] = {
    "energia": Pool(12, 0.0, 1.3, 2600, 0.30, "3514000", 12),
    "agua": Pool(10, 0.0, 1.3, 4800, 0.30, "3600601", 10),
    "gas": Pool(5, 0.0, 1.4, 900, 0.35, "3520402", 5),
    "elevadores": Pool(8, 0.0, 1.2, 1400, 0.25, "4329103", 8),
    "seguros": Pool(15, 0.0, 1.2, 950, 0.25, "6512000", 15),
    "administracao": Pool(10, 0.03, 1.1, 2900, 0.25, "6822600", 10),
    "limpeza": Pool(20, 0.2, 1.05, 7200, 0.30, "8121400", 20),
    "seguranca": Pool(20, 0.15, 1.05, 16000, 0.30, "8011101", 20),
    "manutencao": Pool(30, 2.0, 1.0, 320, 0.55, "4321500", 30),
    "jardinagem": Pool(10, 0.3, 1.0, 650, 0.35, "8130300", 10),
    "obras": Pool(20, 1.0, 1.0, 1300, 0.50, "4120400", 20),
}

# Monthly contracts: one payment a month to the condominium's contracted supplier.
CONTRACTS = ("energia", "agua", "elevadores", "seguros", "administracao", "limpeza", "seguranca")
# Purchases and services paid as they happen, several a month: weight, amount factor.
VARIABLE = {
    "manutencao": (0.62, 1.0),
    "obras": (0.16, 1.0),
    "jardinagem": (0.1, 1.0),
    "limpeza": (0.12, 0.05),  # cleaning material, not the monthly contract
}

DESCRIPTIONS = {
    "energia": ("Conta de energia elétrica - áreas comuns", "Energia elétrica bombas e elevadores"),
    "agua": ("Conta de água e esgoto", "Consumo de água - hidrômetro geral"),
    "gas": ("Gás canalizado - área comum", "Gás encanado - aquecimento central"),
    "elevadores": ("Contrato de manutenção de elevadores", "Manutenção preventiva elevadores"),
    "seguros": ("Seguro predial obrigatório - parcela", "Seguro do condomínio - parcela mensal"),
    "administracao": ("Taxa de administração", "Honorários da administradora"),
    "limpeza": ("Contrato de limpeza e conservação", "Material de limpeza", "Limpeza de vidros"),
    "seguranca": ("Portaria e vigilância", "Monitoramento de alarmes e CFTV"),
    "manutencao": (
        "Reparo hidráulico",
        "Troca de lâmpadas e reatores",
        "Manutenção do portão eletrônico",
        "Conserto de interfone",
        "Desentupimento",
        "Manutenção de bombas d'água",
        "Recarga de extintores",
        "Pintura de corrimãos",
    ),
    "jardinagem": ("Manutenção de jardins", "Poda de árvores", "Adubo e mudas"),
    "obras": ("Impermeabilização da laje", "Reforma da fachada - medição", "Troca de piso"),
}

_NAME_A = (
    "Alfa",
    "Atlântica",
    "Horizonte",
    "Paulista",
    "Central",
    "Nova",
    "Real",
    "União",
    "Prime",
    "Sul",
    "Norte",
    "Capital",
    "Litoral",
    "Planalto",
    "Serra",
    "Vale",
)
_NAME_B = (
    "Serviços",
    "Soluções",
    "Engenharia",
    "Comércio",
    "Técnica",
    "Facilities",
    "Brasil",
    "Manutenção",
    "Gestão",
    "Construções",
    "Sistemas",
    "Ambiental",
)
_SUFFIX = ("Ltda", "S.A.", "Eireli", "ME", "Ltda")


@dataclass(frozen=True)
class WorkloadConfig:
    condominiums: int
    seed: int = 1
    period: str = "2026-11"  # YYYY-MM; alphanumeric suppliers opened in July 2026
    min_expenses: int = 20
    max_expenses: int = 80
    approval_threshold: Decimal = Decimal("5000.00")  # must equal the condominiums' setting
    payment_lag_days: int = 2  # a DEBIT falls 0..lag days after its expense
    alphanumeric_share: float = 0.12  # of tail suppliers (firms opened since July 2026)
    masked_share: float = 0.4  # expenses whose CNPJ is sent masked (12.345.678/0001-95)
    null_invoice_share: float = 0.08
    irregular_share: float = 0.6  # condominiums with one planted irregularity
    credits: bool = True  # emit the unit owners' fee CREDITs (they fill transaction pages)

    def __post_init__(self) -> None:
        if not 1 <= self.condominiums <= 1_000_000:
            raise ValueError("condominiums must be between 1 and 1,000,000")
        if not 1 <= self.min_expenses <= self.max_expenses:
            raise ValueError("need 1 <= min_expenses <= max_expenses")
        month_bounds(self.period)

    @property
    def start(self) -> dt.date:
        return month_bounds(self.period)[0]

    @property
    def end(self) -> dt.date:
        return month_bounds(self.period)[1]


def month_bounds(period: str) -> tuple[dt.date, dt.date]:
    """First and last day of a YYYY-MM period."""
    try:
        year, month = (int(part) for part in period.split("-"))
        start = dt.date(year, month, 1)
    except ValueError as exc:
        raise ValueError(f"period must be YYYY-MM, got {period!r}") from exc
    following = dt.date(year + month // 12, month % 12 + 1, 1)
    return start, following - dt.timedelta(days=1)


@dataclass(frozen=True)
class Supplier:
    cnpj: str  # canonical 14 characters
    category: str
    rank: int
    legal_name: str
    status: str  # ATIVA, BAIXADA, INAPTA, ... or NOT_FOUND
    status_date: dt.date
    opened_on: dt.date
    main_cnae: str

    @property
    def found(self) -> bool:
        return self.status != "NOT_FOUND"

    def registry_record(self) -> dict[str, Any]:
        """What the provider simulator should answer for this CNPJ."""
        return {
            "cnpj": self.cnpj,
            "found": self.found,
            "legal_name": self.legal_name if self.found else None,
            "status": self.status if self.found else None,
            "status_date": self.status_date.isoformat() if self.found else None,
            "opened_on": self.opened_on.isoformat() if self.found else None,
            "main_cnae": self.main_cnae if self.found else None,
            "category": self.category,
        }


@dataclass(frozen=True)
class Planted:
    kind: str
    condominium: str  # the condominium's ref
    external_ids: tuple[str, ...]
    supplier_cnpj: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "condominium": self.condominium,
            "external_ids": list(self.external_ids),
            "supplier_cnpj": self.supplier_cnpj,
            "detail": self.detail,
        }


@dataclass
class CondominiumMonth:
    """One condominium's month: what its administrator submits and what its bank shows."""

    index: int
    ref: str
    name: str
    cnpj: str
    pluggy_account_id: str
    units: int
    period: str
    expenses: list[dict[str, Any]]
    transactions: list[dict[str, Any]]
    planted: list[Planted]
    suppliers: dict[str, Supplier]  # canonical CNPJ -> supplier, those this month uses

    def condominium_request(self) -> dict[str, Any]:
        """Body for POST /condominiums."""
        return {"name": self.name, "cnpj": self.cnpj, "pluggy_account_id": self.pluggy_account_id}

    def batch_request(self, condominium_id: str) -> dict[str, Any]:
        """Body for POST /batch-expenses, once the API has given the condominium its id."""
        return {"condominium_id": condominium_id, "expenses": self.expenses}

    @property
    def transaction_pages(self) -> int:
        """GET /transactions calls at PAGE_SIZE per page (an empty month still costs one)."""
        return max(1, math.ceil(len(self.transactions) / PAGE_SIZE))


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=32).digest()


def _cnpj(seed: int, kind: str, key: object, alphanumeric: bool) -> str:
    raw = _digest("cnpj", seed, kind, key)
    if alphanumeric:
        root = "".join(_ALNUM[b % 36] for b in raw[:8])
        if root.isdigit():  # make sure it really is alphanumeric
            root = "A" + root[1:]
    else:
        root = "".join(str(b % 10) for b in raw[:8])
    base = root + "0001"
    return base + check_digits(base)


def _uuid(*parts: object) -> str:
    return str(uuid.UUID(bytes=_digest("uuid", *parts)[:16], version=4))


def pool_size(category: str, condominiums: int) -> int:
    pool = POOLS[category]
    return pool.fixed + int(pool.per_condominium * condominiums)


def _zipf_rank(rng: random.Random, size: int, exponent: float) -> int:
    """A rank in [0, size) with P(rank) roughly proportional to (rank + 1) ** -exponent."""
    u = rng.random()
    top = size + 1.0
    if abs(exponent - 1.0) < 1e-9:
        x = top**u
    else:
        a = 1.0 - exponent
        x = ((top**a - 1.0) * u + 1.0) ** (1.0 / a)
    return min(size - 1, max(0, int(x) - 1))


def supplier(config: WorkloadConfig, category: str, rank: int, state: str = "ATIVA") -> Supplier:
    """The supplier at a pool rank; a pure function of (seed, category, rank, state)."""
    pool = POOLS[category]
    raw = _digest("supplier", config.seed, category, rank, state)
    alphanumeric = (
        state == "ATIVA" and rank >= pool.head and raw[0] / 256 < config.alphanumeric_share
    )
    cnpj = _cnpj(config.seed, f"{category}:{state}", rank, alphanumeric)
    name = (
        f"{_NAME_A[raw[1] % len(_NAME_A)]} {_NAME_B[raw[2] % len(_NAME_B)]} {rank} "
        + (_SUFFIX[raw[3] % len(_SUFFIX)])
    )
    if alphanumeric:
        opened = _ALPHANUMERIC_START + dt.timedelta(days=raw[4] % 20)
    elif rank < pool.head:
        opened = dt.date(1955, 1, 1) + dt.timedelta(days=int.from_bytes(raw[4:6], "big") % 15000)
    else:
        opened = dt.date(1995, 1, 1) + dt.timedelta(days=int.from_bytes(raw[4:6], "big") % 10500)
    status_date = opened
    if state not in ("ATIVA", "NOT_FOUND"):
        # Closed or irregular well before the month audited.
        status_date = config.start - dt.timedelta(days=200 + int.from_bytes(raw[6:8], "big") % 900)
        opened = min(opened, status_date - dt.timedelta(days=400))
    return Supplier(cnpj, category, rank, name, state, status_date, opened, pool.cnae)


def _money(value: float) -> Decimal:
    return Decimal(value).quantize(_CENT, rounding=ROUND_HALF_UP).max(Decimal("1.00"))


class _Month:
    """Builds one condominium's month; keeps the bookkeeping that keeps it clean."""

    def __init__(self, config: WorkloadConfig, index: int) -> None:
        self.config = config
        self.index = index
        self.rng = random.Random(f"condo-audit-workload:{config.seed}:{index}")
        self.ref = f"c{index:06d}"
        self.start, self.end = config.start, config.end
        self.days = (self.end - self.start).days + 1
        self.expenses: list[dict[str, Any]] = []
        self.debits: list[dict[str, Any]] = []
        self.suppliers: dict[str, Supplier] = {}
        self.small_sum: Counter[str] = Counter()  # per CNPJ, payments under the threshold
        self.invoices: set[tuple[str, str]] = set()
        self.account = _uuid(config.seed, "account", index)
        self.units = max(8, min(1200, int(self.rng.lognormvariate(math.log(60), 0.8))))
        self.size = (self.units / 60) ** 0.6  # how bills scale with the condominium

    def amount(self, category: str, factor: float = 1.0) -> Decimal:
        pool = POOLS[category]
        return _money(
            self.rng.lognormvariate(math.log(pool.median * self.size), pool.sigma) * factor
        )

    def draw(self, category: str) -> Supplier:
        n = pool_size(category, self.config.condominiums)
        return supplier(self.config, category, _zipf_rank(self.rng, n, POOLS[category].exponent))

    def fresh(self, category: str, state: str = "ATIVA") -> Supplier:
        """A tail supplier this condominium has not used, for a planted irregularity."""
        n = pool_size(category, self.config.condominiums)
        for _ in range(100):
            rank = self.rng.randrange(POOLS[category].head, max(POOLS[category].head + 1, n))
            if state != "ATIVA":
                rank = self.rng.randrange(max(3, self.config.condominiums // 20))
            candidate = supplier(self.config, category, rank, state)
            if candidate.cnpj not in self.suppliers:
                return candidate
        raise RuntimeError("no fresh supplier left in the pool")  # pragma: no cover

    def day(self) -> dt.date:
        return self.start + dt.timedelta(days=self.rng.randrange(self.days))

    def invoice(self, cnpj: str) -> str:
        while True:
            number = str(self.rng.randrange(1000, 999_999_999))
            if (cnpj, number) not in self.invoices:
                self.invoices.add((cnpj, number))
                return number

    def add(
        self,
        sup: Supplier,
        amount: Decimal,
        date: dt.date,
        *,
        invoice: str | bool | None = True,
        paid: bool = True,
        description: str | None = None,
    ) -> dict[str, Any]:
        self.suppliers[sup.cnpj] = sup
        if amount < self.config.approval_threshold:
            self.small_sum[sup.cnpj] += int(amount * 100)
        number: str | None
        if invoice is True:
            number = (
                None
                if self.rng.random() < self.config.null_invoice_share
                else (self.invoice(sup.cnpj))
            )
        elif invoice is False:
            number = None
        else:
            number = invoice
        shown = format_cnpj(sup.cnpj) if self.rng.random() < self.config.masked_share else sup.cnpj
        expense = {
            "external_id": f"{self.ref}-{self.config.period}-{len(self.expenses) + 1:03d}",
            "supplier_cnpj": shown,
            "amount": str(amount),
            "date": date.isoformat(),
            "description": description or self.rng.choice(DESCRIPTIONS[sup.category]),
            "category": sup.category,
            "invoice_number": number,
        }
        self.expenses.append(expense)
        if paid:
            self.pay(sup, amount, date)
        return expense

    def pay(self, sup: Supplier, amount: Decimal, date: dt.date) -> None:
        paid_on = min(
            self.end, date + dt.timedelta(days=self.rng.randint(0, self.config.payment_lag_days))
        )
        method = self.rng.choice(("PIX", "BOLETO", "TED"))
        payment: dict[str, Any] | None = None
        if method != "BOLETO" or self.rng.random() < 0.5:  # boletos often carry no receiver
            payment = {
                "paymentMethod": method,
                "receiver": {
                    "name": sup.legal_name,
                    "documentNumber": {"type": "CNPJ", "value": sup.cnpj},
                },
            }
        label = {"PIX": "PIX ENVIADO", "BOLETO": "PAGTO BOLETO", "TED": "TED ENVIADA"}[method]
        self.debits.append(
            self.transaction(paid_on, f"{label} {sup.legal_name[:30].upper()}", -amount, payment)
        )

    def transaction(
        self, date: dt.date, description: str, amount: Decimal, payment: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "id": "",  # numbered once the month is complete
            "accountId": self.account,
            "date": date.isoformat(),
            "description": description,
            "amount": float(amount),
            "currencyCode": "BRL",
            "type": "DEBIT" if amount < 0 else "CREDIT",
            "status": "POSTED",
            "paymentData": payment,
        }

    def fits(self, sup: Supplier, amount: Decimal) -> bool:
        """Would this small payment keep the supplier's small payments under the threshold?"""
        if amount >= self.config.approval_threshold:
            return True
        limit = int(self.config.approval_threshold * 100)
        return self.small_sum[sup.cnpj] + int(amount * 100) <= limit

    def build(self) -> CondominiumMonth:
        config, rng = self.config, self.rng
        target = rng.randint(config.min_expenses, config.max_expenses)
        contracts = [c for c in CONTRACTS if c != "limpeza" or rng.random() < 0.7]
        if rng.random() < 0.35:
            contracts.append("gas")
        for category in contracts[:target]:
            sup = self.draw(category)
            due = self.start + dt.timedelta(days=rng.randrange(min(self.days, 28)))
            self.add(sup, self.amount(category), due)
        categories = list(VARIABLE)
        weights = [weight for weight, _ in VARIABLE.values()]
        # Each condominium calls back a few regular firms; the rest are one-off calls.
        roster = {c: [self.draw(c) for _ in range(rng.randint(1, 4))] for c in categories}
        while len(self.expenses) < target:
            category = rng.choices(categories, weights)[0]
            amount = self.amount(category, VARIABLE[category][1])
            for _ in range(8):
                regular = rng.random() < ROSTER_SHARE
                sup = rng.choice(roster[category]) if regular else self.draw(category)
                if self.fits(sup, amount):
                    break
            else:
                sup = self.fresh(category)
            self.add(sup, amount, self.day())
        planted = self.plant()
        return self.finish(planted)

    def plant(self) -> list[Planted]:
        config, rng = self.config, self.rng
        share = config.irregular_share
        if math.floor((self.index + 1) * share) == math.floor(self.index * share):
            return []
        kind = PLANT_KINDS[math.floor(self.index * share) % len(PLANT_KINDS)]
        if kind == "duplicate_invoice":
            candidates = [
                e
                for e in self.expenses
                if e["category"] in VARIABLE
                and e["invoice_number"]
                and self.fits(self._supplier_of(e), Decimal(e["amount"]))
            ]
            original = rng.choice(candidates) if candidates else self.expenses[-1]
            sup = self._supplier_of(original)
            if original["invoice_number"] is None:
                original["invoice_number"] = self.invoice(sup.cnpj)
            date = min(
                self.end,
                dt.date.fromisoformat(original["date"]) + dt.timedelta(days=rng.randint(1, 5)),
            )
            copy = self.add(
                sup,
                Decimal(original["amount"]),
                date,
                invoice=original["invoice_number"],
                description=original["description"],
            )
            ids = (original["external_id"], copy["external_id"])
            return [
                Planted(kind, self.ref, ids, sup.cnpj, {"invoice_number": copy["invoice_number"]})
            ]
        if kind == "split_payment":
            sup = self.fresh("obras")
            threshold = config.approval_threshold
            first = self.start + dt.timedelta(days=rng.randrange(max(1, self.days - 10)))
            parts = [_money(float(threshold) * rng.uniform(0.55, 0.9)) for _ in range(3)]
            ids = tuple(
                self.add(sup, part, first + dt.timedelta(days=3 * i))["external_id"]
                for i, part in enumerate(parts)
            )
            detail = {"threshold": str(threshold), "total": str(sum(parts, Decimal(0)))}
            return [Planted(kind, self.ref, ids, sup.cnpj, detail)]
        if kind == "missing_transaction":
            sup = self.fresh("manutencao")
            expense = self.add(sup, self.amount("manutencao"), self.day(), paid=False)
            return [Planted(kind, self.ref, (expense["external_id"],), sup.cnpj, {})]
        if kind == "amount_outlier":
            sup = self.fresh("manutencao")
            usual = [Decimal(e["amount"]) for e in self.expenses if e["category"] == "manutencao"]
            typical = statistics.median(usual) if usual else self.amount("manutencao")
            amount = _money(float(typical) * rng.uniform(12.0, 16.0))
            expense = self.add(sup, amount, self.day())
            detail = {"category": "manutencao", "amount": str(amount)}
            return [Planted(kind, self.ref, (expense["external_id"],), sup.cnpj, detail)]
        state = (
            "NOT_FOUND"
            if kind == "supplier_not_found"
            else rng.choice(("BAIXADA", "INAPTA", "SUSPENSA", "NULA"))
        )
        sup = self.fresh(rng.choice(("manutencao", "obras", "jardinagem")), state)
        expense = self.add(sup, self.amount(sup.category), self.day())
        detail = {"status": state}
        if sup.found:
            detail["status_date"] = sup.status_date.isoformat()
        return [Planted(kind, self.ref, (expense["external_id"],), sup.cnpj, detail)]

    def _supplier_of(self, expense: dict[str, Any]) -> Supplier:
        return self.suppliers[normalize_cnpj(expense["supplier_cnpj"])]

    def finish(self, planted: list[Planted]) -> CondominiumMonth:
        config, rng = self.config, self.rng
        transactions = list(self.debits)
        if config.credits:
            for unit in range(self.units):
                fee = _money(self.rng.uniform(450, 1400) * self.size**0.3)
                date = self.start + dt.timedelta(
                    days=min(self.days - 1, int(rng.triangular(0, 14, 8)))
                )
                transactions.append(
                    self.transaction(date, f"COTA CONDOMINIAL UNIDADE {unit + 1}", fee, None)
                )
        fees = rng.randint(1, 3)
        for _ in range(fees):
            transactions.append(
                self.transaction(self.day(), "TARIFA BANCARIA", -_money(rng.uniform(9, 80)), None)
            )
        transactions.sort(key=lambda t: t["date"])
        for n, tx in enumerate(transactions):
            tx["id"] = _uuid(config.seed, "tx", self.index, n)
        name = f"Condomínio Edifício {_NAME_A[self.index % len(_NAME_A)]} {self.index + 1}"
        return CondominiumMonth(
            index=self.index,
            ref=self.ref,
            name=name,
            cnpj=_cnpj(config.seed, "condominium", self.index, alphanumeric=False),
            pluggy_account_id=self.account,
            units=self.units,
            period=config.period,
            expenses=self.expenses,
            transactions=transactions,
            planted=planted,
            suppliers=self.suppliers,
        )


def condominium_month(config: WorkloadConfig, index: int) -> CondominiumMonth:
    """Condominium ``index`` (0-based); the same config and index always give the same month."""
    if not 0 <= index < config.condominiums:
        raise IndexError(f"condominium index {index} outside 0..{config.condominiums - 1}")
    return _Month(config, index).build()


def generate(config: WorkloadConfig) -> Iterator[CondominiumMonth]:
    """The whole workload, one condominium at a time."""
    for index in range(config.condominiums):
        yield condominium_month(config, index)


@dataclass
class WorkloadStats:
    """What a sizing needs to know about a workload; fed one condominium at a time."""

    condominiums: int = 0
    expenses: int = 0
    debit_transactions: int = 0
    credit_transactions: int = 0
    transaction_pages: int = 0
    lookups_without_shared_cache: int = 0  # sum over condominiums of their distinct suppliers
    planted: Counter[str] = field(default_factory=Counter)
    _cnpjs: set[str] = field(default_factory=set)
    _alphanumeric: set[str] = field(default_factory=set)
    _uses: Counter[str] = field(default_factory=Counter)  # condominiums per supplier

    def add(self, month: CondominiumMonth) -> None:
        self.condominiums += 1
        self.expenses += len(month.expenses)
        for tx in month.transactions:
            if tx["type"] == "DEBIT":
                self.debit_transactions += 1
            else:
                self.credit_transactions += 1
        self.transaction_pages += month.transaction_pages
        self.lookups_without_shared_cache += len(month.suppliers)
        self._cnpjs.update(month.suppliers)
        self._alphanumeric.update(c for c in month.suppliers if not c.isdigit())
        self._uses.update(month.suppliers.keys())
        self.planted.update(p.kind for p in month.planted)

    def summary(self) -> dict[str, Any]:
        unique = len(self._cnpjs)
        top = self._uses.most_common(10)
        return {
            "condominiums": self.condominiums,
            "expenses": self.expenses,
            "expenses_per_condominium": round(self.expenses / max(1, self.condominiums), 2),
            "transactions": self.debit_transactions + self.credit_transactions,
            "debit_transactions": self.debit_transactions,
            "credit_transactions": self.credit_transactions,
            "transaction_pages": self.transaction_pages,
            "page_size": PAGE_SIZE,
            "unique_cnpjs": unique,
            "unique_alphanumeric_cnpjs": len(self._alphanumeric),
            "unique_cnpj_fraction": round(unique / max(1, self.expenses), 5),
            "lookups_without_shared_cache": self.lookups_without_shared_cache,
            "top_suppliers_condominiums": [count for _, count in top],
            "planted": dict(sorted(self.planted.items())),
        }


def summarize(config: WorkloadConfig) -> dict[str, Any]:
    stats = WorkloadStats()
    for month in generate(config):
        stats.add(month)
    return stats.summary()
