"""Start and stop the platform's processes on loopback: used by `condo-audit run`, the tests
and the load tests, so all three run the platform the same way."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from redis import Redis
from redis.exceptions import RedisError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.poll()

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def stop_all(processes: list[ManagedProcess], timeout: float = 15.0) -> None:
    """SIGTERM to every process at once, then SIGKILL what is still up after `timeout`: the
    warm shutdowns run side by side instead of one after another."""
    for process in processes:
        process.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


def spawn(
    name: str, argv: list[str], env: Mapping[str, str], log_dir: Path, cwd: Path | None = None
) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("ab")
    popen = subprocess.Popen(
        argv,
        env={**os.environ, **env},
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
    )
    log_file.close()
    return ManagedProcess(name, popen, log_path)


def wait_for(check: object, what: str, timeout: float, process: ManagedProcess | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(f"{what} exited early:\n{process.log_tail()}")
        try:
            if check():  # type: ignore[operator]
                return
        except (OSError, httpx.HTTPError, RedisError):
            pass
        time.sleep(0.1)
    tail = process.log_tail() if process is not None else ""
    raise TimeoutError(f"{what} did not come up within {timeout:.0f}s\n{tail}")


@dataclass
class Starting:
    """A process spawned but not yet ready. Spawn several, then wait for each: their
    start-ups (mostly imports) overlap instead of adding up."""

    process: ManagedProcess
    ready: Callable[[], bool]
    what: str
    timeout: float

    def wait(self) -> ManagedProcess:
        try:
            wait_for(self.ready, self.what, self.timeout, self.process)
        except BaseException:
            self.process.kill()
            raise
        return self.process


def wait_all(starting: list[Starting]) -> list[ManagedProcess]:
    """Wait for every process; when one fails, the others are killed too."""
    try:
        return [each.wait() for each in starting]
    except BaseException:
        for each in starting:
            each.process.kill()
        raise


def redis_server_path() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise FileNotFoundError(
            "redis-server is not installed: install it (Debian/Ubuntu: apt-get install "
            "redis-server; macOS: brew install redis) or set REDIS_URL to a running Redis"
        )
    return path


def start_redis(
    port: int,
    data_dir: Path,
    log_dir: Path,
    *,
    appendonly: bool = False,
    name: str | None = None,
) -> ManagedProcess:
    """`name` names the log file (default `redis-PORT`): a fixed one keeps a single log."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_path(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
        "--dir", str(data_dir),
    ]  # fmt: skip
    process = spawn(name or f"redis-{port}", argv, {}, log_dir)
    client = Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    wait_for(client.ping, f"redis-server on port {port}", 15, process)
    client.close()
    return process


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1.0).status_code == 200


def spawn_simulator(
    port: int, env: Mapping[str, str], log_dir: Path, extra_args: list[str] | None = None
) -> Starting:
    argv = [sys.executable, "-m", "simulator", "--host", "127.0.0.1", "--port", str(port)]
    process = spawn(f"simulator-{port}", argv + (extra_args or []), env, log_dir)
    return Starting(
        process, lambda: _http_ok(f"http://127.0.0.1:{port}/_sim/health"), "simulator", 30
    )


def start_simulator(
    port: int, env: Mapping[str, str], log_dir: Path, extra_args: list[str] | None = None
) -> ManagedProcess:
    return spawn_simulator(port, env, log_dir, extra_args).wait()


def spawn_api(port: int, env: Mapping[str, str], log_dir: Path, workers: int = 1) -> Starting:
    argv = [
        sys.executable, "-m", "uvicorn", "api.main:app",
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    process = spawn(f"api-{port}", argv, env, log_dir)
    return Starting(process, lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), "API", 30)


def start_api(port: int, env: Mapping[str, str], log_dir: Path, workers: int = 1) -> ManagedProcess:
    return spawn_api(port, env, log_dir, workers).wait()


def spawn_worker(
    env: Mapping[str, str],
    log_dir: Path,
    *,
    name: str = "worker",
    concurrency: int = 1,
    queue: str = "audit",
    pool: str = "prefork",
    include: list[str] | None = None,
) -> Starting:
    """`include`: extra task modules (`--include`), e.g. a benchmark's reference task."""
    argv = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-Q", queue, "--concurrency", str(concurrency), "--pool", pool,
        "--hostname", f"{name}@%h", "--loglevel", "INFO", "--without-gossip",
        "--without-mingle",
    ]  # fmt: skip
    if include:
        argv += ["--include", ",".join(include)]
    heartbeat = log_dir / f"{name}.heartbeat"
    heartbeat.unlink(missing_ok=True)
    process = spawn(name, argv, {**env, "WORKER_HEARTBEAT_FILE": str(heartbeat)}, log_dir)
    return Starting(process, heartbeat.exists, f"celery worker {name}", 60)
