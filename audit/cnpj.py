"""CNPJ, the Brazilian company registration number, classic (14 digits) or alphanumeric.

Since July 2026 the Receita Federal also issues alphanumeric CNPJs (IN RFB 2.229/2024):
12 characters from 0-9 and A-Z plus two numeric check digits. Both forms share one
check-digit algorithm, where a character's value is its ASCII code minus 48.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_MASK = re.compile(r"[.\-/\s]")
_SHAPE = re.compile(r"^[0-9A-Z]{12}[0-9]{2}$")


class InvalidCNPJ(ValueError):
    """The text is not a CNPJ; the message says why."""


def _check_digit(body: str) -> int:
    weights = [2, 3, 4, 5, 6, 7, 8, 9]
    total = sum((ord(char) - 48) * weights[i % 8] for i, char in enumerate(reversed(body)))
    remainder = total % 11
    return 0 if remainder < 2 else 11 - remainder


def check_digits(base12: str) -> str:
    """The two check digits for a 12-character base (root + branch)."""
    first = _check_digit(base12)
    second = _check_digit(base12 + str(first))
    return f"{first}{second}"


def normalize_cnpj(text: str) -> str:
    """Canonical 14 upper-case characters, or InvalidCNPJ with the reason."""
    if not isinstance(text, str):
        raise InvalidCNPJ("CNPJ must be a string")
    return _normalized(text)


@lru_cache(maxsize=16384)
def _normalized(text: str) -> str:
    """Cached: a month's batches name the same suppliers over and over, and each expense's
    CNPJ is checked as the API takes it and again in the worker (5 us a check, 50 a batch).
    A refusal is not cached; it raises again each time."""
    compact = _MASK.sub("", text).upper()
    if len(compact) != 14:
        raise InvalidCNPJ(f"CNPJ must have 14 characters without the mask, got {len(compact)}")
    if not _SHAPE.match(compact):
        raise InvalidCNPJ(
            "CNPJ must be 12 characters from 0-9 and A-Z followed by 2 numeric check digits"
        )
    if compact == compact[0] * 14:
        raise InvalidCNPJ("CNPJ with all characters equal is not valid")
    expected = check_digits(compact[:12])
    if compact[12:] != expected:
        raise InvalidCNPJ(f"CNPJ check digits do not match (expected {expected})")
    return compact


def is_valid_cnpj(text: str) -> bool:
    try:
        normalize_cnpj(text)
    except InvalidCNPJ:
        return False
    return True


def format_cnpj(cnpj: str) -> str:
    """The masked form, 12.ABC.345/01DE-35."""
    c = normalize_cnpj(cnpj)
    return f"{c[:2]}.{c[2:5]}.{c[5:8]}/{c[8:12]}-{c[12:]}"


def is_alphanumeric(cnpj: str) -> bool:
    return not normalize_cnpj(cnpj).isdigit()


def pydantic_cnpj(value: Any) -> str:
    """Validator for pydantic fields: accepts masked, any case; yields the canonical form."""
    return normalize_cnpj(value)
