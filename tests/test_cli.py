"""The `condo-audit` command as a user meets it: one default database for every command
(the one `make run` uses), one-line errors (a traceback only with --debug), help for every
option of `run`, and a busy port named by its option."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from audit.settings import DEFAULT_DATABASE_URL, get_settings
from cli.main import build_parser, main
from cli.processes import free_port
from cli.run import STATE_DIR, check_port_free, rotate_logs


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh working directory with no DATABASE_URL: the defaults a new user gets."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_every_command_defaults_to_the_database_make_run_uses() -> None:
    assert f"sqlite:///{STATE_DIR}/condo-audit.db" == DEFAULT_DATABASE_URL


def test_tenants_create_before_db_upgrade_is_one_line_naming_the_fix(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tenants", "create", "Administradora Exemplo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    where = f"sqlite:///{workdir.resolve()}/.local/condo-audit.db"
    assert err.startswith(f"condo-audit: the database {where} has no "), err
    assert err.rstrip().endswith("run `condo-audit db upgrade`")


def test_db_upgrade_then_tenants_create_use_one_database_in_dot_local(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "upgrade"]) == 0
    assert main(["tenants", "create", "Administradora Exemplo"]) == 0
    created = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert created["api_key"].startswith("ca_")
    database = workdir / ".local" / "condo-audit.db"
    with sqlite3.connect(database) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM tenants")]
    assert names == ["Administradora Exemplo"]
    assert not (workdir / "condo_audit.db").exists()


def test_debug_shows_the_traceback(workdir: Path) -> None:
    with pytest.raises(OperationalError, match="no such table"):
        main(["--debug", "tenants", "list"])


def test_an_unexpected_error_is_one_line_too(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "nosuchdialect://x")
    get_settings.cache_clear()
    assert main(["tenants", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert "--debug" in err


def test_revoking_while_redis_is_away_revokes_and_says_so_in_one_line(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    get_settings.cache_clear()
    assert main(["db", "upgrade"]) == 0
    assert main(["tenants", "create", "Administradora Exemplo"]) == 0
    key_id = json.loads(capsys.readouterr().out.splitlines()[-1])["key_id"]
    assert main(["keys", "revoke", key_id]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "the key is revoked, but Redis did not answer" in err
    database = workdir / ".local" / "condo-audit.db"
    with sqlite3.connect(database) as connection:
        revoked = connection.execute("SELECT revoked_at FROM api_keys WHERE id = ?", (key_id,))
        assert revoked.fetchone()[0] is not None


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        if isinstance(action, argparse._SubParsersAction):
            chosen: argparse.ArgumentParser = action.choices[name]
            return chosen
    raise AssertionError(name)


def test_run_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    run = subcommand("run")
    for action in run._actions:
        assert action.help, f"{action.option_strings} has no help"
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--api-port PORT" in out
    assert "loopback port of the API" in out
    assert "--simulator-port PORT" in out
    assert "provider simulator" in out


@pytest.mark.parametrize("option", ["--api-port", "--simulator-port"])
def test_a_busy_port_is_named_by_its_option(
    workdir: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"--api-port": str(free_port()), "--simulator-port": str(free_port())}
        ports[option] = str(port)
        argv = ["run", "--exit-after-sample", *(x for pair in ports.items() for x in pair)]
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"port {port} on 127.0.0.1 is already in use" in err
    assert f"choose another with {option}" in err
    assert not (workdir / ".local").exists()  # nothing was started


def test_a_port_whose_last_connections_linger_is_free_to_run_again() -> None:
    """Run, stop, run again: the stopped servers' closed connections sit in TIME_WAIT on their
    ports for a minute, which the servers' own bind (SO_REUSEADDR) does not mind."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server closes first: its side waits in TIME_WAIT
            assert client.recv(1) == b""
    with socket.socket() as plain, pytest.raises(OSError, match="in use"):
        plain.bind(("127.0.0.1", port))  # what the probe used to do: refused
    check_port_free(port, "--api-port")


def test_local_logs_keep_two_runs_whatever_the_number_of_runs(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    for run in range(5):
        rotate_logs(logs)
        logs.mkdir(exist_ok=True)
        for name in ("redis", "worker", "api-8000"):
            (logs / f"{name}.log").write_text(f"run {run}\n")
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        f"{name}.log{suffix}" for name in ("redis", "worker", "api-8000") for suffix in ("", ".1")
    )
    assert (logs / "redis.log").read_text() == "run 4\n"
    assert (logs / "redis.log.1").read_text() == "run 3\n"


def test_a_reader_that_goes_away_is_not_an_error(workdir: Path) -> None:
    """`condo-audit tenants list | head -1`: no traceback, no error line."""
    assert main(["db", "upgrade"]) == 0
    for k in range(3):
        assert main(["tenants", "create", f"Administradora {k}"]) == 0
    listing = subprocess.Popen(
        [sys.executable, "-m", "cli", "tenants", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workdir,
    )
    assert listing.stdout is not None
    listing.stdout.close()  # the reader is gone before the first line is written
    _, err = listing.communicate(timeout=60)
    assert err == b""
    assert listing.returncode == 0


def test_sigterm_stops_run_and_everything_it_started(workdir: Path) -> None:
    """`kill`, a closed terminal or a service manager sends SIGTERM: `condo-audit run` must
    stop its Redis, simulator, API and workers as Ctrl-C does, not leave them running."""
    output = workdir / "run.out"
    argv = [sys.executable, "-m", "cli", "run", "--no-sample",
            "--api-port", str(free_port()), "--simulator-port", str(free_port())]  # fmt: skip
    with output.open("w") as sink:
        run = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        deadline = time.monotonic() + 180
        while "serving" not in output.read_text():
            assert run.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.5)
        children = [
            int(pid) for pid in Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()
        ]
        assert len(children) >= 5, output.read_text()  # redis, simulator, API, two workers
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if run.poll() is None:
            run.kill()
    deadline = time.monotonic() + 30
    while running := [pid for pid in children if Path(f"/proc/{pid}").exists()]:
        assert time.monotonic() < deadline, f"still running after the run ended: {running}"
        time.sleep(0.5)
