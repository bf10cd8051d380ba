"""Webhook building blocks without processes: signing (checked against the reference
`standardwebhooks` package), the receiver-URL guard, secrets at rest, the retry schedule."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import time

import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook as ReferenceWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from audit.settings import Settings
from audit.webhooks import signing
from audit.webhooks.delivery import retry_delay
from audit.webhooks.secretbox import SecretBox, SecretsUnavailable, new_key
from audit.webhooks.urls import UnsafeUrl, check_url, non_public_reason

BODY = b'{"type":"batch.succeeded","timestamp":"2026-11-30T12:00:00Z","data":{"batch_id":"b1"}}'


def test_generated_secret_has_the_whsec_form() -> None:
    secret = signing.generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == signing.SECRET_BYTES
    assert signing.generate_secret() != secret


def test_signature_is_hmac_sha256_over_id_timestamp_body() -> None:
    secret = signing.generate_secret()
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, b"msg_1.1700000000." + BODY, hashlib.sha256).digest()
    assert signing.sign(secret, "msg_1", 1700000000, BODY) == (
        "v1," + base64.b64encode(expected).decode()
    )


def test_reference_implementation_accepts_our_headers() -> None:
    secret = signing.generate_secret()
    headers = signing.headers([secret], "msg_abc", int(time.time()), BODY)
    assert ReferenceWebhook(secret).verify(BODY, headers)["data"]["batch_id"] == "b1"
    with pytest.raises(WebhookVerificationError):
        ReferenceWebhook(signing.generate_secret()).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        ReferenceWebhook(secret).verify(BODY.replace(b"b1", b"b2"), headers)


def test_during_a_rotation_either_secret_verifies() -> None:
    new, old = signing.generate_secret(), signing.generate_secret()
    headers = signing.headers([new, old], "msg_r", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    ReferenceWebhook(new).verify(BODY, headers)
    ReferenceWebhook(old).verify(BODY, headers)


def test_hand_verification_rejects_stale_timestamps_and_foreign_signatures() -> None:
    secret = signing.generate_secret()
    now = time.time()
    signature = signing.sign(secret, "msg_1", int(now), BODY)
    signing.verify(secret, "msg_1", str(int(now)), signature, BODY, now=now)
    with pytest.raises(signing.SignatureError, match="5 minutes"):
        signing.verify(secret, "msg_1", str(int(now)), signature, BODY, now=now + 301)
    with pytest.raises(signing.SignatureError, match="no matching"):
        signing.verify(secret, "msg_2", str(int(now)), signature, BODY, now=now)
    with pytest.raises(signing.SignatureError):
        signing.verify(secret, "msg_1", "yesterday", signature, BODY, now=now)


def fixed(*addresses: str) -> object:
    """A resolver that answers from a table, for names without real DNS here."""
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    ("url", "addresses", "reason"),
    [
        ("http://hooks.example.com/x", ["93.184.216.34"], "must use https"),
        ("ftp://hooks.example.com/x", ["93.184.216.34"], "must use https"),
        ("https://user:pw@hooks.example.com/", ["93.184.216.34"], "credentials"),
        ("https:///nohost", [], "no host"),
        ("https://hooks.example.com:99999/", [], "not a valid URL"),
        ("https://intranet.example.com/", ["10.1.2.3"], "private"),
        ("https://intranet.example.com/", ["93.184.216.34", "192.168.0.4"], "private"),
        ("https://localhost/", ["127.0.0.1"], "loopback"),
        ("https://metadata.example.com/", ["169.254.169.254"], "link-local"),
        ("https://v6.example.com/", ["::1"], "loopback"),
        ("https://v6.example.com/", ["fe80::1"], "link-local"),
        ("https://mapped.example.com/", ["::ffff:10.0.0.1"], "private"),
        ("https://zero.example.com/", ["0.0.0.0"], "unspecified"),  # noqa: S104
        ("https://mc.example.com/", ["224.0.0.1"], "multicast"),
        ("https://cgnat.example.com/", ["100.64.0.1"], "not globally routable"),
    ],
)
def test_unsafe_urls_are_refused(url: str, addresses: list[str], reason: str) -> None:
    with pytest.raises(UnsafeUrl, match=reason):
        check_url(url, allow_private=False, resolver=fixed(*addresses))  # type: ignore[arg-type]


def test_a_public_https_url_is_pinned_to_the_checked_address() -> None:
    target = check_url(
        "https://hooks.example.com:8443/in?x=1",
        allow_private=False,
        resolver=fixed("93.184.216.34"),  # type: ignore[arg-type]
    )
    assert target.pinned_url() == "https://93.184.216.34:8443/in?x=1"
    assert target.host_header() == "hooks.example.com:8443"


def test_real_resolution_of_literals_and_localhost() -> None:
    with pytest.raises(UnsafeUrl, match="loopback"):
        check_url("https://127.0.0.1/hook", allow_private=False)
    with pytest.raises(UnsafeUrl, match="loopback"):
        check_url("https://[::1]:8443/hook", allow_private=False)
    with pytest.raises(UnsafeUrl):
        check_url("https://localhost/hook", allow_private=False)
    with pytest.raises(UnsafeUrl, match="does not resolve"):
        check_url("https://no-such-host.invalid/hook", allow_private=False)


def test_allow_private_admits_loopback_and_plain_http() -> None:
    target = check_url("http://127.0.0.1:8080/hook", allow_private=True)
    assert target.pinned_url() == "http://127.0.0.1:8080/hook"
    assert target.host_header() == "127.0.0.1:8080"


def test_public_addresses_pass() -> None:
    assert non_public_reason("93.184.216.34") is None
    assert non_public_reason("2606:2800:220:1:248:1893:25c8:1946") is None


def test_secrets_are_encrypted_and_keys_rotate() -> None:
    old_key, new_key_ = new_key(), new_key()
    old_box = SecretBox(SecretStr(old_key))
    token = old_box.encrypt("whsec_abc")
    assert "whsec_abc" not in token
    both = SecretBox(SecretStr(f"{new_key_},{old_key}"))
    assert both.decrypt(token) == "whsec_abc"
    with pytest.raises(SecretsUnavailable):
        SecretBox(SecretStr(new_key_)).decrypt(token)
    with pytest.raises(SecretsUnavailable, match="not set"):
        SecretBox(None)
    with pytest.raises(SecretsUnavailable, match="Fernet"):
        SecretBox(SecretStr("not-a-key"))


def test_retry_schedule_has_jitter_and_ends() -> None:
    settings = Settings(webhook_retry_schedule_seconds=[5, 300], webhook_retry_jitter_ratio=0.1)
    first = [retry_delay(settings, 0) for _ in range(50)]
    assert all(d is not None and 4.5 <= d <= 5.5 for d in first)
    assert len(set(first)) > 1
    second = retry_delay(settings, 1)
    assert second is not None
    assert 270 <= second <= 330
    assert retry_delay(settings, 2) is None


def test_default_schedule_is_standard_webhooks() -> None:
    schedule = Settings().webhook_retry_schedule_seconds
    assert [dt.timedelta(seconds=s) for s in schedule] == [
        dt.timedelta(seconds=5),
        dt.timedelta(minutes=5),
        dt.timedelta(minutes=30),
        dt.timedelta(hours=2),
        dt.timedelta(hours=5),
        dt.timedelta(hours=10),
        dt.timedelta(hours=10),
    ]


def test_the_readme_verification_by_hand_accepts_real_headers() -> None:
    """The README's standard-library example, run on headers the platform would send."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Webhooks", 1)[1]
    by_hand = next(b for b in section.split("```python")[1:] if "def verify" in b)
    namespace: dict[str, object] = {}
    exec(by_hand.split("```", 1)[0], namespace)  # noqa: S102 - our own README
    verify = namespace["verify"]
    secret = signing.generate_secret()
    headers = signing.headers([signing.generate_secret(), secret], "msg_x", int(time.time()), BODY)
    assert verify(secret, headers, BODY) is True  # type: ignore[operator]
    assert verify(secret, headers, BODY + b" ") is False  # type: ignore[operator]
