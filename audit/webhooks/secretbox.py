"""Signing secrets at rest: Fernet (AES-128-CBC + HMAC) with keys from WEBHOOK_SECRET_KEYS.

Signing needs the secret itself, so it cannot be hashed; it is encrypted instead, and a
database dump alone does not reveal it. Several keys rotate the encryption key: the first
encrypts, every one decrypts (MultiFernet).
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr


class SecretsUnavailable(RuntimeError):
    """No key is configured, or none of them opens a stored secret."""


def new_key() -> str:
    return Fernet.generate_key().decode()


class SecretBox:
    def __init__(self, keys: SecretStr | None) -> None:
        raw = keys.get_secret_value() if keys is not None else ""
        names = [k.strip() for k in raw.split(",") if k.strip()]
        if not names:
            raise SecretsUnavailable("WEBHOOK_SECRET_KEYS is not set")
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in names])
        except ValueError as exc:
            raise SecretsUnavailable(
                "WEBHOOK_SECRET_KEYS must hold url-safe base64 Fernet keys"
            ) from exc

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise SecretsUnavailable("no WEBHOOK_SECRET_KEYS key opens this secret") from exc
