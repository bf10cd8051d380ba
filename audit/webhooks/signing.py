"""Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
keyed with the base64-decoded part of a `whsec_` secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 24  # Svix's size; 192 bits is far beyond what HMAC-SHA256 needs
TIMESTAMP_TOLERANCE_SECONDS = 300  # what receivers accept, per the specification


class SignatureError(ValueError):
    pass


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64 part of `whsec_...`, decoded."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError as exc:
        raise SignatureError("secret is not whsec_<base64>") from exc
    if not key:
        raise SignatureError("secret is empty")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature entry."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(
    secrets_in_use: list[str], message_id: str, timestamp: int, body: bytes
) -> str:
    """Space-separated entries, one per secret: during a rotation's grace period both the new
    and the previous secret sign, so a receiver may switch whenever it likes."""
    return " ".join(sign(s, message_id, timestamp, body) for s in secrets_in_use)


def headers(
    secrets_in_use: list[str], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets_in_use, message_id, timestamp, body),
        "content-type": "application/json",
    }


def verify(
    secret: str, message_id: str, timestamp: str, signature: str, body: bytes, now: float
) -> None:
    """What a receiver does: a fresh timestamp and one matching v1 entry, compared in constant
    time. Raises SignatureError otherwise."""
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not Unix seconds") from None
    if abs(now - sent_at) > TIMESTAMP_TOLERANCE_SECONDS:
        raise SignatureError("webhook-timestamp is more than 5 minutes off")
    expected = sign(secret, message_id, sent_at, body).encode()
    for entry in signature.split():
        if entry.startswith("v1,") and hmac.compare_digest(entry.encode(), expected):
            return
    raise SignatureError("no matching v1 signature")
