"""Which receivers may be called: the server-side request forgery guard.

A receiver URL must be https, and every address its host resolves to must be public: not
private, loopback, link-local (cloud metadata lives there), multicast, reserved or
unspecified. The check runs at registration (a 422) and again before every attempt, and the
attempt connects to the address that was checked, so a DNS answer that changes in between
(rebinding) cannot steer a delivery inside the cluster. WEBHOOK_ALLOW_PRIVATE_URLS lifts
both rules, for local receivers.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2000

Resolver = Callable[[str, int], list[str]]


class UnsafeUrl(ValueError):
    """The URL may not be called; the message says why, for a 422 or a delivery's error."""


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str  # as written, for the Host header and TLS server name
    port: int
    address: str  # the checked IP the attempt connects to

    def pinned_url(self) -> str:
        """The URL with the checked address in place of the host name."""
        parts = urlsplit(self.url)
        ip = f"[{self.address}]" if ":" in self.address else self.address
        path = parts.path or "/"
        query = f"?{parts.query}" if parts.query else ""
        return f"{self.scheme}://{ip}:{self.port}{path}{query}"

    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def resolve(host: str, port: int) -> list[str]:
    """Every address the host resolves to (A and AAAA)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"host {host!r} does not resolve") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def non_public_reason(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for attribute in (
        "is_loopback",
        "is_link_local",
        "is_multicast",
        "is_unspecified",
        "is_reserved",
        "is_private",
    ):
        if getattr(ip, attribute):
            return attribute.removeprefix("is_").replace("_", "-")
    if not ip.is_global:
        return "not globally routable"
    return None


def check_url(url: str, *, allow_private: bool, resolver: Resolver = resolve) -> Target:
    """The target to connect to, or UnsafeUrl saying why the URL is refused."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if allow_private else ("https",)
    if scheme not in allowed:
        raise UnsafeUrl("must use https" if allow_private is False else "must use https or http")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("must not carry credentials; authenticate with the signature")
    if parts.fragment:
        raise UnsafeUrl("must not have a fragment")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeUrl("has no host")
    port = port or (443 if scheme == "https" else 80)
    addresses = resolver(host, port)
    if not addresses:
        raise UnsafeUrl(f"host {host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            reason = non_public_reason(address)
            if reason is not None:
                raise UnsafeUrl(f"host {host!r} resolves to {address}, a {reason} address")
    return Target(url=url, scheme=scheme, host=host, port=port, address=addresses[0])
