"""Small builders shared by the tests: valid CNPJs and expense payloads."""

from __future__ import annotations

import hashlib
from typing import Any

from audit.cnpj import check_digits

# How long a test waits for what it started (a spawned Python, a CLI command, a task to
# finish) before calling it hung. On a busy 2-core machine importing the project has taken
# over a minute and a task over 60 s in the queue: a bound against hangs, not a speed target.
BUSY_MACHINE_WAIT_SECONDS = 180.0


def make_cnpj(seed: str, alphanumeric: bool = False) -> str:
    """A valid, deterministic CNPJ for a seed string."""
    digest = hashlib.sha256(seed.encode()).hexdigest().upper()
    if alphanumeric:
        alphabet = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
        root = "".join(
            alphabet[int(digest[i : i + 2], 16) % len(alphabet)] for i in range(0, 16, 2)
        )
        if root.isdigit():
            root = "A" + root[1:]
    else:
        root = "".join(str(int(c, 16) % 10) for c in digest[:8])
    base = root + "0001"
    return base + check_digits(base)


def cnpj_from(n: int) -> str:
    """The n-th classic CNPJ of a simple numbered series (head office, 0001)."""
    base = f"{n:08d}0001"
    return base + check_digits(base)


def active_registration(
    name: str = "Fornecedor Ativo Ltda", opened_on: str = "2010-03-01", cnae: str = "8121400"
) -> dict[str, Any]:
    return {
        "found": True,
        "legal_name": name,
        "status": "ATIVA",
        "status_date": opened_on,
        "opened_on": opened_on,
        "main_cnae": cnae,
        "is_mei": False,
        "is_simples": True,
    }


def expense(
    external_id: str,
    cnpj: str,
    amount: str = "100.00",
    date: str = "2026-10-10",
    category: str = "limpeza",
    invoice: str | None = None,
    description: str = "Serviço mensal",
) -> dict[str, Any]:
    return {
        "external_id": external_id,
        "supplier_cnpj": cnpj,
        "amount": amount,
        "date": date,
        "description": description,
        "category": category,
        "invoice_number": invoice or f"NF-{external_id}",
    }
