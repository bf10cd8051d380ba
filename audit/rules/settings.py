"""Per-condominium rule settings: thresholds, windows and the CNAE map.

Stored as JSON in ``condominiums.audit_settings`` and changed through the API. A stored
dict may hold only the fields a condominium changed; the rest take these defaults. All
windows are in calendar days and inclusive: a window of 5 accepts a difference of exactly
5 days and rejects 6.
"""

from __future__ import annotations

import json
import re
import unicodedata
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_NOT_DIGIT = re.compile(r"\D")


@lru_cache(maxsize=4096)
def normalize_category(category: str) -> str:
    """'Manutenção ' and 'manutencao' are one category."""
    decomposed = unicodedata.normalize("NFKD", category.strip().lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def cnae_digits(code: str) -> str:
    """'8121-4/00', '81.21-4-00' and '8121400' all give '8121400'."""
    return _NOT_DIGIT.sub("", code)


@lru_cache(maxsize=1)
def default_cnae_mapping() -> dict[str, list[str]]:
    """The bundled map (cnae_mapping.json), as category -> CNAE digit prefixes."""
    source = resources.files("audit.rules").joinpath("cnae_mapping.json")
    raw = json.loads(source.read_text("utf-8"))
    return {
        normalize_category(category): [cnae_digits(item["code"]) for item in entry["cnae"]]
        for category, entry in raw["categories"].items()
    }


def _default_mapping_copy() -> dict[str, list[str]]:
    return {k: list(v) for k, v in default_cnae_mapping().items()}


class RuleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    recently_opened_days: int = Field(
        default=90,
        ge=0,
        le=3650,
        description="SUPPLIER_RECENTLY_OPENED fires when the supplier opened at most this many "
        "days before the expense (or after it). 0 to 3650 (ten years).",
    )
    match_window_days: int = Field(
        default=5,
        ge=0,
        le=90,
        description="A bank debit matches an expense when their dates differ by at most this. "
        "0 to 90: the window is also how far around the expenses bank transactions are read.",
    )
    duplicate_window_days: int = Field(
        default=15,
        ge=0,
        le=365,
        description="Two payments of the same amount to one supplier at most this many days "
        "apart are a possible duplicate. Shorter than a month so that a fixed monthly fee is "
        "not taken for a duplicate. 0 to 365.",
    )
    split_window_days: int = Field(
        default=15,
        ge=0,
        le=365,
        description="Payments to one supplier whose dates span at most this many days are "
        "summed for SPLIT_PAYMENT. Shorter than a month so that two consecutive monthly fees "
        "are not taken for a split. 0 to 365.",
    )
    approval_threshold: Decimal = Field(
        default=Decimal("5000.00"),
        gt=0,
        le=Decimal("1000000000.00"),
        decimal_places=2,
        description="Payments above this amount need approval; one at exactly this amount "
        "does not. Above 0, at most 1,000,000,000.00.",
    )
    outlier_min_history: int = Field(
        default=5,
        ge=2,
        le=1000,
        description="Fewest other expenses of the supplier (or category) needed before "
        "AMOUNT_OUTLIER judges an amount. 2 to 1000.",
    )
    outlier_zscore: Decimal = Field(
        default=Decimal("3.5"),
        gt=0,
        le=100,
        description="Threshold on the robust (modified) z-score (amount - median) / "
        "(1.4826 * MAD); an amount scoring strictly above it is an outlier. 3.5 is the cut "
        "Iglewicz and Hoaglin recommend. Above 0, at most 100.",
    )
    outlier_scale_floor_ratio: Decimal = Field(
        default=Decimal("0.05"),
        ge=0,
        le=10,
        description="The spread used by AMOUNT_OUTLIER is never below this fraction of the "
        "median, so a history of identical amounts does not make every cent an outlier. "
        "0 to 10.",
    )
    cnae_mapping: dict[str, list[str]] = Field(
        default_factory=_default_mapping_copy,
        max_length=1000,
        description="Expense category -> CNAE prefixes compatible with it. A stored map "
        "replaces the default one as a whole. At most 1000 categories of 100 prefixes.",
    )

    @field_validator("cnae_mapping")
    @classmethod
    def _normalize_mapping(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        normalized: dict[str, list[str]] = {}
        for category, codes in value.items():
            if len(codes) > 100 or not 0 < len(category) <= 50:
                raise ValueError(f"{category[:50]!r}: 1 to 50 characters and at most 100 prefixes")
            prefixes = [cnae_digits(code) for code in codes]
            if any(not p or len(p) > 7 for p in prefixes):
                raise ValueError(f"CNAE prefixes of {category!r} must have 1 to 7 digits")
            normalized[normalize_category(category)] = prefixes
        return normalized

    @classmethod
    def from_stored(cls, stored: dict[str, Any] | None) -> RuleSettings:
        """From ``condominiums.audit_settings`` (possibly empty or partial)."""
        return cls.model_validate(stored or {})

    def to_stored(self) -> dict[str, Any]:
        """JSON-ready dict (amounts and ratios as strings), round-trips through from_stored."""
        return self.model_dump(mode="json")
