"""CNPJ validation: classic and alphanumeric forms, masks, case, and the reasons for rejection."""

from __future__ import annotations

import pytest

from audit.cnpj import InvalidCNPJ, check_digits, format_cnpj, is_alphanumeric, normalize_cnpj


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("11.222.333/0001-81", "11222333000181"),
        ("11222333000181", "11222333000181"),
        ("12.ABC.345/01DE-35", "12ABC34501DE35"),  # the Receita Federal's own example
        ("12.abc.345/01de-35", "12ABC34501DE35"),
        (" 12ABC34501DE35 ", "12ABC34501DE35"),
        ("00.000.000/0001-91", "00000000000191"),
    ],
)
def test_valid_cnpjs_are_stored_canonical(text: str, canonical: str) -> None:
    assert normalize_cnpj(text) == canonical


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("11.222.333/0001-82", "check digits do not match (expected 81)"),
        ("12.ABC.345/01DE-36", "check digits do not match (expected 35)"),
        ("1122233300018", "14 characters"),
        ("112223330001811", "14 characters"),
        ("12ABC34501DEAB", "followed by 2 numeric check digits"),
        ("12ABC3450$DE35", "from 0-9 and A-Z"),
        ("11111111111111", "all characters equal"),
        ("", "14 characters"),
    ],
)
def test_invalid_cnpjs_are_rejected_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidCNPJ, match=reason.replace("(", r"\(").replace(")", r"\)")):
        normalize_cnpj(text)


def test_a_refused_cnpj_stays_refused_and_a_checked_one_keeps_its_answer() -> None:
    """Checks are cached: asking again must give the same answer, refusals included."""
    for _ in range(3):
        assert normalize_cnpj("11.222.333/0001-81") == "11222333000181"
        with pytest.raises(InvalidCNPJ, match="expected 81"):
            normalize_cnpj("11.222.333/0001-82")
    with pytest.raises(InvalidCNPJ, match="must be a string"):
        normalize_cnpj(11222333000181)  # type: ignore[arg-type]


def test_check_digits_follow_the_ascii_minus_48_rule() -> None:
    # A = 17 in the Receita's table: a base made of letters still yields numeric digits.
    digits = check_digits("ABCDEFGH0001")
    assert digits.isdigit()
    assert len(digits) == 2
    assert normalize_cnpj("ABCDEFGH0001" + digits) == "ABCDEFGH0001" + digits


def test_format_and_kind() -> None:
    assert format_cnpj("12abc34501de35") == "12.ABC.345/01DE-35"
    assert is_alphanumeric("12.ABC.345/01DE-35")
    assert not is_alphanumeric("11.222.333/0001-81")
