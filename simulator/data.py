"""Deterministic provider data: a registration per CNPJ and transactions per account.

Everything derives from a hash of the seed and the key, so two runs (and two processes)
agree. Explicit records set through the control API take precedence.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from typing import Any

from audit.cnpj import check_digits

STATUS_CODES = {"NULA": 1, "ATIVA": 2, "SUSPENSA": 3, "INAPTA": 4, "BAIXADA": 8}

LEGAL_NATURES = [
    ("2062", "Sociedade Empresária Limitada"),
    ("2135", "Empresário (Individual)"),
    ("2305", "Empresa Individual de Responsabilidade Limitada (de Natureza Empresária)"),
    ("2046", "Sociedade Anônima Aberta"),
    ("3999", "Associação Privada"),
]

CNAES = [
    ("8112500", "Condomínios prediais"),
    ("4321500", "Instalação e manutenção elétrica"),
    ("8121400", "Limpeza em prédios e em domicílios"),
    ("8011101", "Atividades de vigilância e segurança privada"),
    ("4322301", "Instalações hidráulicas, sanitárias e de gás"),
    ("4329103", "Instalação, manutenção e reparação de elevadores"),
    ("8130300", "Atividades paisagísticas"),
    ("3514000", "Distribuição de energia elétrica"),
    ("6920601", "Atividades de contabilidade"),
    ("4744099", "Comércio varejista de materiais de construção em geral"),
]

NAME_WORDS = [
    "Alfa",
    "Horizonte",
    "Paulista",
    "Atlântica",
    "Serra",
    "Aurora",
    "Central",
    "Nova Era",
    "Ipê",
    "Jacarandá",
    "Guanabara",
    "Pampa",
    "Cerrado",
    "Litoral",
    "Vale",
    "Planalto",
]
NAME_KINDS = [
    "Manutenção Predial",
    "Serviços de Limpeza",
    "Segurança",
    "Elevadores",
    "Jardinagem",
    "Instalações Elétricas",
    "Hidráulica",
    "Contabilidade",
    "Materiais de Construção",
]

REGISTRATION_FIELDS = (
    "found",
    "legal_name",
    "status",
    "status_date",
    "opened_on",
    "main_cnae",
    "legal_nature",
    "legal_nature_code",
    "is_mei",
    "is_simples",
)


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("|".join(parts).encode()).digest()


def _num(digest: bytes, start: int, length: int = 4) -> int:
    return int.from_bytes(digest[start : start + length], "big")


def derived_registration(cnpj: str, seed: str, today: dt.date) -> dict[str, Any]:
    """The registration the simulator invents for a CNPJ (neutral field names, ISO dates).

    About 5% are unknown, 5% BAIXADA, 3% INAPTA, 2% SUSPENSA, 1% NULA; of the rest, one in
    ten opened in the last 90 days.
    """
    d = _digest(seed, "registration", cnpj)
    bucket = _num(d, 0) % 100
    if bucket < 5:
        return {"found": False}
    if bucket < 10:
        status = "BAIXADA"
    elif bucket < 13:
        status = "INAPTA"
    elif bucket < 15:
        status = "SUSPENSA"
    elif bucket < 16:
        status = "NULA"
    else:
        status = "ATIVA"
    if status == "ATIVA" and _num(d, 4) % 10 == 0:
        opened_on = today - dt.timedelta(days=1 + _num(d, 8) % 90)
    else:
        opened_on = today - dt.timedelta(days=400 + _num(d, 8) % 9000)
    if status == "ATIVA":
        status_date = opened_on
    else:
        span = max((today - opened_on).days - 1, 1)
        status_date = opened_on + dt.timedelta(days=1 + _num(d, 12) % span)
    nature_code, nature = LEGAL_NATURES[_num(d, 16) % len(LEGAL_NATURES)]
    cnae = CNAES[_num(d, 20) % len(CNAES)][0]
    is_mei = nature_code == "2135" and _num(d, 24) % 2 == 0
    is_simples = is_mei or _num(d, 28) % 3 != 0
    name = (
        f"{NAME_WORDS[_num(d, 2) % len(NAME_WORDS)]} "
        f"{NAME_KINDS[_num(d, 6) % len(NAME_KINDS)]} {cnpj[:4]} LTDA"
    )
    return {
        "found": True,
        "legal_name": name.upper(),
        "status": status,
        "status_date": status_date.isoformat(),
        "opened_on": opened_on.isoformat(),
        "main_cnae": cnae,
        "legal_nature": nature,
        "legal_nature_code": nature_code,
        "is_mei": is_mei,
        "is_simples": is_simples,
    }


def cnae_description(code: str) -> str:
    return dict(CNAES).get(code, "Atividade não especificada")


def derived_cnpj(seed: str, *parts: str) -> str:
    """A valid numeric CNPJ (branch 0001) picked by hash."""
    root = f"{_num(_digest(seed, 'cnpj', *parts), 0, 8) % 10**8:08d}"
    base = root + "0001"
    return base + check_digits(base)


def derived_transactions(
    account_id: str, start: dt.date, end: dt.date, seed: str
) -> list[dict[str, Any]]:
    """Zero to three transactions a day, in Pluggy's shape; stable per account and day."""
    results: list[dict[str, Any]] = []
    day = start
    while day <= end:
        d = _digest(seed, "transactions", account_id, day.isoformat())
        for index in range(_num(d, 0) % 4):
            t = _digest(seed, "transaction", account_id, day.isoformat(), str(index))
            debit = _num(t, 0) % 5 != 0
            amount = Decimal(_num(t, 4) % 500_000 + 1_000) / 100
            supplier = derived_cnpj(seed, account_id, str(_num(t, 8) % 12))
            tx_id = hashlib.sha256(t).hexdigest()[:32]
            results.append(
                pluggy_transaction(
                    tx_id=f"{tx_id[:8]}-{tx_id[8:12]}-{tx_id[12:16]}-{tx_id[16:20]}-{tx_id[20:]}",
                    account_id=account_id,
                    date=day,
                    description=("PIX ENVIADO " if debit else "PIX RECEBIDO ") + supplier[:8],
                    amount=-amount if debit else amount,
                    status="POSTED" if _num(t, 12) % 10 else "PENDING",
                    receiver_cnpj=supplier if debit else None,
                    cnae=CNAES[_num(t, 16) % len(CNAES)][0] if debit else None,
                )
            )
        day += dt.timedelta(days=1)
    return results


def pluggy_transaction(
    *,
    tx_id: str,
    account_id: str,
    date: dt.date,
    description: str,
    amount: Decimal,
    status: str,
    receiver_cnpj: str | None,
    cnae: str | None,
) -> dict[str, Any]:
    """One transaction as Pluggy returns it (amount negative for debits)."""
    tx: dict[str, Any] = {
        "id": tx_id,
        "accountId": account_id,
        "date": f"{date.isoformat()}T12:00:00.000Z",
        "description": description,
        "descriptionRaw": description,
        "currencyCode": "BRL",
        "amount": float(amount),
        "balance": None,
        "category": None,
        "type": "DEBIT" if amount < 0 else "CREDIT",
        "status": status,
        "paymentData": None,
        "merchant": None,
    }
    if receiver_cnpj is not None:
        tx["paymentData"] = {
            "paymentMethod": "PIX",
            "receiver": {"documentNumber": {"type": "CNPJ", "value": receiver_cnpj}},
        }
        tx["merchant"] = {"cnpj": receiver_cnpj, "cnae": cnae, "name": None}
    return tx


def normalize_explicit_transaction(
    account_id: str, raw: dict[str, Any], index: int
) -> dict[str, Any]:
    """Fill the Pluggy fields a test left out of an explicit transaction."""
    tx = dict(raw)
    tx.setdefault("id", f"{account_id}-{index}")
    tx.setdefault("accountId", account_id)
    date = str(tx.get("date", "2026-01-01"))
    if len(date) == 10:
        tx["date"] = f"{date}T12:00:00.000Z"
    amount = float(tx.get("amount", 0))
    tx["amount"] = amount
    tx.setdefault("type", "DEBIT" if amount < 0 else "CREDIT")
    tx.setdefault("status", "POSTED")
    tx.setdefault("description", "")
    tx.setdefault("currencyCode", "BRL")
    receiver = tx.pop("receiver_cnpj", None)
    if receiver is not None and "paymentData" not in tx:
        tx["paymentData"] = {
            "paymentMethod": "PIX",
            "receiver": {"documentNumber": {"type": "CNPJ", "value": receiver}},
        }
        tx.setdefault("merchant", {"cnpj": receiver, "cnae": None, "name": None})
    tx.setdefault("paymentData", None)
    tx.setdefault("merchant", None)
    return tx


def transaction_day(tx: dict[str, Any]) -> dt.date:
    return dt.date.fromisoformat(str(tx["date"])[:10])


# Response shapes -------------------------------------------------------------------------


def _br_flag(value: bool | None) -> str | None:
    if value is None:
        return None
    return "Sim" if value else "Não"


def cnpjws_body(cnpj: str, reg: dict[str, Any]) -> dict[str, Any]:
    """The registration in CNPJ.ws' shape (public and commercial tiers)."""
    status = str(reg.get("status") or "ATIVA")
    cnae = str(reg.get("main_cnae") or "")
    return {
        "cnpj_raiz": cnpj[:8],
        "razao_social": reg.get("legal_name"),
        "capital_social": "10000.00",
        "responsavel_federativo": "",
        "atualizado_em": "2026-01-15T03:00:00.000Z",
        "porte": {"id": "01", "descricao": "Micro Empresa"},
        "natureza_juridica": {
            "id": reg.get("legal_nature_code") or "2062",
            "descricao": reg.get("legal_nature"),
        },
        "qualificacao_do_responsavel": {"id": 49, "descricao": "Sócio-Administrador"},
        "socios": [
            {
                "cpf_cnpj_socio": "***123456**",
                "nome": "SOCIO ADMINISTRADOR",
                "tipo": "Pessoa Física",
                "data_entrada": reg.get("opened_on"),
                "qualificacao_socio": {"id": 49, "descricao": "Sócio-Administrador"},
            }
        ],
        "simples": {
            "simples": _br_flag(reg.get("is_simples")),
            "data_opcao_simples": reg.get("opened_on") if reg.get("is_simples") else None,
            "data_exclusao_simples": None,
            "mei": _br_flag(reg.get("is_mei")),
            "data_opcao_mei": reg.get("opened_on") if reg.get("is_mei") else None,
            "data_exclusao_mei": None,
        },
        "estabelecimento": {
            "cnpj": cnpj,
            "tipo": "Matriz" if cnpj[8:12] == "0001" else "Filial",
            "nome_fantasia": None,
            "situacao_cadastral": status.capitalize(),
            "data_situacao_cadastral": reg.get("status_date"),
            "data_inicio_atividade": reg.get("opened_on"),
            "motivo_situacao_cadastral": None,
            "atividade_principal": {
                "id": cnae,
                "secao": "N",
                "divisao": cnae[:2],
                "grupo": f"{cnae[:2]}.{cnae[2:3]}",
                "classe": f"{cnae[:2]}.{cnae[2:4]}-{cnae[4:5]}",
                "subclasse": f"{cnae[:4]}-{cnae[4:5]}/{cnae[5:]}",
                "descricao": cnae_description(cnae),
            },
            "atividades_secundarias": [],
            "tipo_logradouro": "Rua",
            "logradouro": "DAS FLORES",
            "numero": "100",
            "bairro": "CENTRO",
            "cep": "01001000",
            "estado": {"id": 26, "nome": "São Paulo", "sigla": "SP", "ibge_id": 35},
            "cidade": {"id": 3550308, "nome": "São Paulo", "ibge_id": 3550308},
        },
    }


def minha_receita_body(cnpj: str, reg: dict[str, Any]) -> dict[str, Any]:
    """The registration in minha-receita's shape (what BrasilAPI forwards)."""
    status = str(reg.get("status") or "ATIVA")
    cnae = str(reg.get("main_cnae") or "0")
    return {
        "cnpj": cnpj,
        "identificador_matriz_filial": 1 if cnpj[8:12] == "0001" else 2,
        "descricao_identificador_matriz_filial": "MATRIZ" if cnpj[8:12] == "0001" else "FILIAL",
        "razao_social": reg.get("legal_name"),
        "nome_fantasia": "",
        "situacao_cadastral": STATUS_CODES.get(status, 2),
        "descricao_situacao_cadastral": status,
        "data_situacao_cadastral": reg.get("status_date"),
        "motivo_situacao_cadastral": 0,
        "data_inicio_atividade": reg.get("opened_on"),
        "cnae_fiscal": int(cnae) if cnae.isdigit() else cnae,
        "cnae_fiscal_descricao": cnae_description(cnae),
        "codigo_natureza_juridica": int(reg.get("legal_nature_code") or 2062),
        "natureza_juridica": reg.get("legal_nature"),
        "opcao_pelo_simples": reg.get("is_simples"),
        "data_opcao_pelo_simples": reg.get("opened_on") if reg.get("is_simples") else None,
        "opcao_pelo_mei": reg.get("is_mei"),
        "data_opcao_pelo_mei": reg.get("opened_on") if reg.get("is_mei") else None,
        "uf": "SP",
        "municipio": "SAO PAULO",
        "cnaes_secundarios": [],
        "qsa": [],
    }
