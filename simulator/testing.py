"""Context managers over the platform's process launcher (cli.processes) for tests and load
runs: the simulator with a client for its control paths, and a private redis-server."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from cli.processes import ManagedProcess, free_port, start_redis, start_simulator

__all__ = ["RedisServer", "SimulatorServer", "free_port"]

ROOT = Path(__file__).resolve().parent.parent


class SimulatorServer:
    """`python -m simulator` in a child process on a free loopback port."""

    def __init__(self, config: dict[str, Any] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = config or {}
        self.process: ManagedProcess | None = None
        self.log_dir = Path(tempfile.mkdtemp(prefix="simulator-"))

    def start(self) -> SimulatorServer:
        self.process = start_simulator(
            self.port,
            {"PYTHONPATH": str(ROOT)},
            self.log_dir,
            ["--config", json.dumps(self.config)],
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=5)
        shutil.rmtree(self.log_dir, ignore_errors=True)

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

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: ManagedProcess | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="redis-test-"))

    def start(self) -> RedisServer:
        self.process = start_redis(self.port, self.workdir / "data", self.workdir)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=5)
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
