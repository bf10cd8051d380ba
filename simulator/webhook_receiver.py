"""A webhook receiver that verifies Standard Webhooks signatures: real HTTP on loopback.

For tests and `condo-audit run`: it records every request with whether its signature held,
and can be told to fail (answer 500) for the first N requests, always, or to answer slowly.
The verification is written out by hand here (audit.webhooks.signing.verify); the tests
check the same requests with the `standardwebhooks` package as well.

    with WebhookReceiver() as receiver:
        receiver.secret = "whsec_..."          # from POST /webhooks
        ...                                    # receiver.url is the URL to register
        receiver.wait_for(1)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from audit.webhooks.signing import SignatureError, verify


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    problem: str | None
    answered: int
    at: float = field(default_factory=time.time)

    @property
    def message_id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class WebhookReceiver:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        secret: str | None = None,
        on_delivery: Callable[[Received], None] | None = None,
    ) -> None:
        self.secret = secret
        self.secrets: list[str] = []  # more secrets that verify (one receiver, many tenants)
        self.on_delivery = on_delivery
        self.fail_first = 0  # answer 500 to this many requests, then 200
        self.always_fail = False
        self.delay_seconds = 0.0
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/condo-audit"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def deliveries(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.deliveries()
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{len(self.deliveries())} webhook requests, wanted {count}")

    def _answer(self, headers: dict[str, str], body: bytes) -> tuple[int, bool, str | None]:
        problem: str | None = "no secret configured"
        for secret in ([self.secret] if self.secret else []) + self.secrets:
            try:
                verify(
                    secret,
                    headers.get("webhook-id", ""),
                    headers.get("webhook-timestamp", ""),
                    headers.get("webhook-signature", ""),
                    body,
                    now=time.time(),
                )
            except SignatureError as exc:
                problem = str(exc)
            else:
                problem = None
                break
        with self._lock:
            seen = len(self.received)
        if problem is not None:
            return 401, False, problem
        if self.always_fail or seen < self.fail_first:
            return 500, True, None
        return 200, True, None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                if receiver.delay_seconds:
                    time.sleep(receiver.delay_seconds)
                code, verified, problem = receiver._answer(headers, body)
                record = Received(self.path, headers, body, verified, problem, code)
                with receiver._lock:
                    receiver.received.append(record)
                answer = json.dumps({"ok": code == 200, "problem": problem}).encode()
                try:
                    self.send_response(code)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the sender gave up (its read timeout)
                if receiver.on_delivery is not None:
                    receiver.on_delivery(record)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler
