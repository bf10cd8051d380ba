"""Real processes for tests and load runs: the simulator and a private redis-server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for(check: Any, what: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            if check():
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {timeout}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class SimulatorServer:
    """`python -m simulator` in a child process on a free loopback port."""

    def __init__(self, config: dict[str, Any] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = config or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SimulatorServer:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simulator",
                "--port",
                str(self.port),
                "--config",
                json.dumps(self.config),
            ],
            cwd=ROOT,
            env=env,
        )
        _wait_for(
            lambda: httpx.get(f"{self.url}/_sim/health", timeout=1).status_code == 200,
            "simulator",
            self.process,
            20,
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def configure(self, **providers: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/_sim/config", json=providers, timeout=5)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def reset(self, keep_config: bool = False) -> None:
        httpx.post(f"{self.url}/_sim/reset", json={"keep_config": keep_config}, timeout=5)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/_sim/stats", timeout=5).json()
        return result

    def put_registration(self, cnpj: str, record: dict[str, Any]) -> dict[str, Any]:
        response = httpx.put(f"{self.url}/_sim/registrations/{cnpj}", json=record, timeout=5)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def put_transactions(self, account_id: str, rows: list[dict[str, Any]]) -> None:
        response = httpx.put(
            f"{self.url}/_sim/accounts/{account_id}/transactions", json=rows, timeout=5
        )
        response.raise_for_status()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisServer:
    """A throw-away redis-server: no persistence, its own port, removed on exit."""

    def __init__(self, binary: str = "/usr/bin/redis-server") -> None:
        self.binary = shutil.which("redis-server") if not Path(binary).exists() else binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.workdir: str | None = None

    def start(self) -> RedisServer:
        if self.binary is None:
            raise RuntimeError("redis-server not found")
        self.workdir = tempfile.mkdtemp(prefix="redis-test-")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.workdir,
            ],
            stdout=subprocess.DEVNULL,
        )

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")

        _wait_for(ping, "redis-server", self.process, 10)
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
