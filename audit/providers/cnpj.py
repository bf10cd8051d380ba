"""CNPJ registries: CNPJ.ws (public and commercial tiers), minha-receita, and a fallback
chain over them. Each maps its own answer to one Registration."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

import httpx

from audit.cnpj import InvalidCNPJ, normalize_cnpj
from audit.providers.base import (
    CnpjLookup,
    ProviderCircuitOpen,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    RateLimitWait,
    Registration,
    RegistrationStatus,
)
from audit.providers.http import Budget, json_object, send

MINHA_RECEITA_STATUS = {
    1: RegistrationStatus.NULA,
    2: RegistrationStatus.ATIVA,
    3: RegistrationStatus.SUSPENSA,
    4: RegistrationStatus.INAPTA,
    8: RegistrationStatus.BAIXADA,
}


def _canonical(provider: str, cnpj: str) -> str:
    """Checked locally: an invalid CNPJ would only spend rate budget on a 400."""
    try:
        return normalize_cnpj(cnpj)
    except InvalidCNPJ as exc:
        raise ProviderRejected(provider, f"invalid CNPJ: {exc}") from exc


def _date(value: Any) -> dt.date | None:
    if not value or not isinstance(value, str):
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


def _status(text: Any) -> RegistrationStatus | None:
    if not isinstance(text, str):
        return None
    try:
        return RegistrationStatus(text.strip().upper())
    except ValueError:
        return None


def _cnae(value: Any) -> str | None:
    if value is None:
        return None
    digits = re.sub(r"\D", "", str(value))
    return digits.zfill(7) if digits else None


def _sim_nao(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    folded = value.strip().lower()
    if folded in ("sim", "s", "true"):
        return True
    if folded in ("não", "nao", "n", "false"):
        return False
    return None


def _check_found(provider: str, cnpj: str, response: httpx.Response) -> Registration | None:
    """The answers every registry shares: 404 is a finding, 400 and other 4xx are refusals."""
    if response.status_code == 404:
        return Registration(cnpj=cnpj, found=False, provider=provider)
    if response.status_code == 400:
        raise ProviderRejected(provider, "the registry refused the CNPJ as invalid (400)")
    if response.status_code in (401, 403):
        raise ProviderRejected(provider, f"not authorised ({response.status_code}): check token")
    if response.status_code >= 400:
        raise ProviderRejected(provider, f"unexpected answer {response.status_code}")
    return None


class CnpjWsLookup:
    """CNPJ.ws; with a token it calls the commercial tier (header `x_api_token`)."""

    name = "cnpjws"

    def __init__(
        self,
        http: httpx.Client,
        base_url: str,
        budget: Budget,
        token: str | None = None,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.budget = budget
        self.token = token

    def lookup(self, cnpj: str) -> Registration:
        canonical = _canonical(self.name, cnpj)
        headers = {"x_api_token": self.token} if self.token else {}
        response = send(
            self.http,
            self.name,
            self.budget,
            "GET",
            f"{self.base_url}/cnpj/{canonical}",
            endpoint="/cnpj/{cnpj}",
            headers=headers,
        )
        missing = _check_found(self.name, canonical, response)
        if missing is not None:
            return missing
        return self.to_registration(canonical, json_object(self.name, response))

    @classmethod
    def to_registration(cls, cnpj: str, body: dict[str, Any]) -> Registration:
        est = body.get("estabelecimento") or {}
        nature = body.get("natureza_juridica") or {}
        simples = body.get("simples") or {}
        activity = est.get("atividade_principal") or {}
        return Registration(
            cnpj=cnpj,
            found=True,
            provider=cls.name,
            legal_name=body.get("razao_social"),
            status=_status(est.get("situacao_cadastral")),
            status_date=_date(est.get("data_situacao_cadastral")),
            opened_on=_date(est.get("data_inicio_atividade")),
            main_cnae=_cnae(activity.get("id") or activity.get("subclasse")),
            legal_nature=nature.get("descricao") if isinstance(nature, dict) else str(nature),
            is_mei=_sim_nao(simples.get("mei")),
            is_simples=_sim_nao(simples.get("simples")),
        )


class MinhaReceitaLookup:
    """A minha-receita server (self-hosted mirror of the Receita's dataset, or BrasilAPI)."""

    name = "minha_receita"

    def __init__(self, http: httpx.Client, base_url: str, budget: Budget) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.budget = budget

    def lookup(self, cnpj: str) -> Registration:
        canonical = _canonical(self.name, cnpj)
        response = send(
            self.http,
            self.name,
            self.budget,
            "GET",
            f"{self.base_url}/{canonical}",
            endpoint="/{cnpj}",
        )
        missing = _check_found(self.name, canonical, response)
        if missing is not None:
            return missing
        return self.to_registration(canonical, json_object(self.name, response))

    @classmethod
    def to_registration(cls, cnpj: str, body: dict[str, Any]) -> Registration:
        code = body.get("situacao_cadastral")
        status = MINHA_RECEITA_STATUS.get(code) if isinstance(code, int) else None
        if status is None:
            status = _status(body.get("descricao_situacao_cadastral"))
        mei, simples = body.get("opcao_pelo_mei"), body.get("opcao_pelo_simples")
        return Registration(
            cnpj=cnpj,
            found=True,
            provider=cls.name,
            legal_name=body.get("razao_social"),
            status=status,
            status_date=_date(body.get("data_situacao_cadastral")),
            opened_on=_date(body.get("data_inicio_atividade")),
            main_cnae=_cnae(body.get("cnae_fiscal")),
            legal_nature=body.get("natureza_juridica"),
            is_mei=mei if isinstance(mei, bool) else None,
            is_simples=simples if isinstance(simples, bool) else None,
        )


class FallbackCnpjLookup:
    """Tries each registry in order; the first answer (found or not) wins.

    A registry that is down or out of budget hands over to the next. When none answers:
    RateLimitWait if one of them is merely waiting for its turn, else ProviderRateLimited if
    one answered 429 (both mean "it will answer later", not a failure), else
    ProviderUnavailable. A refusal (invalid CNPJ, bad token) stops the chain.
    """

    def __init__(self, lookups: Sequence[CnpjLookup]) -> None:
        if not lookups:
            raise ValueError("at least one CNPJ lookup is needed")
        self.lookups = list(lookups)
        self.name = "+".join(lookup.name for lookup in self.lookups)

    def lookup(self, cnpj: str) -> Registration:
        waits: list[RateLimitWait] = []
        failures: list[ProviderUnavailable] = []
        for lookup in self.lookups:
            try:
                return lookup.lookup(cnpj)
            except RateLimitWait as exc:
                waits.append(exc)
            except ProviderUnavailable as exc:
                failures.append(exc)
        if waits:
            soonest = min(waits, key=lambda exc: exc.wait_seconds)
            raise RateLimitWait(soonest.provider, soonest.wait_seconds, soonest.window)
        reasons = "; ".join(str(exc) for exc in failures)
        if all(isinstance(exc, ProviderCircuitOpen) for exc in failures):
            # Every registry is down for the whole fleet: wait for the soonest probe.
            soonest_open = min(failures, key=lambda exc: exc.retry_after or 0.0)
            raise ProviderCircuitOpen(self.name, soonest_open.retry_after or 1.0, reasons)
        limited = [exc for exc in failures if isinstance(exc, ProviderRateLimited)]
        if limited:
            # One registry is only pacing us: it will answer after its release time.
            release = min(exc.retry_after or 0.0 for exc in limited)
            raise ProviderRateLimited(self.name, reasons, retry_after=release)
        retry_after = min(
            (exc.retry_after for exc in failures if exc.retry_after is not None), default=None
        )
        raise ProviderUnavailable(self.name, reasons, retry_after=retry_after) from failures[-1]


__all__ = ["CnpjWsLookup", "FallbackCnpjLookup", "MinhaReceitaLookup", "ProviderError"]
