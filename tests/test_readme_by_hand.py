"""The README's "Running the pieces by hand" block, run as written by bash as real
processes: Redis, migrations, the simulator and its seeding, the API, both workers, a tenant
from the CLI and the curl. Then the sample batch, posted with that tenant's key, is audited
by the workers the block started: one default database and one Redis for every command.

Only what a reader's machine differs in is changed: the venv and install lines are skipped
(this test runs inside that venv), the ports are free ones instead of 6379, 8100 and 8000,
and the provider URLs (the `*_BASE_URL` settings) point at that simulator port."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.processes import free_port
from cli.run import load_sample
from tests.support.readme import README

SECTION = "## Running the pieces by hand"
SKIPPED_PREFIXES = ("python3 -m venv", "pip install")


def by_hand_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    match = re.search(r"^```bash\n(.*?)^```", section, flags=re.DOTALL | re.MULTILINE)
    assert match is not None, "the section has a bash block"
    return match.group(1)


def test_the_block_covers_every_piece() -> None:
    block = by_hand_block()
    for piece in (
        "python3 -m venv .venv",
        "redis-server",
        "condo-audit db upgrade",
        "CNPJWS_RATE_PER_MINUTE=",
        "python -m simulator",
        "condo-audit sample seed-simulator",
        "uvicorn api.main:app",
        "-Q audit",
        "-Q webhooks",
        "condo-audit tenants create",
        "curl -s -X POST",
    ):
        assert piece in block, piece


@pytest.fixture
def ports() -> dict[str, int]:
    return {"6379": free_port(), "8100": free_port(), "8000": free_port()}


@pytest.fixture
def script(ports: dict[str, int]) -> str:
    lines = [
        line
        for line in by_hand_block().replace("\\\n", " ").splitlines()
        if line.strip() and not line.startswith(SKIPPED_PREFIXES)
    ]
    text = "\n".join(lines)
    for documented, port in ports.items():
        text = re.sub(rf"\b{documented}\b", str(port), text)
    # The key, for the checks below (the block keeps it in a shell variable).
    return f"{text}\nprintf '\\nKEY=%s\\n' \"$KEY\"\n"


@pytest.fixture
def session(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every process the script starts, in one process group, ended after the test."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, signum)
            except ProcessLookupError:
                break
            time.sleep(2 if signum == signal.SIGTERM else 0)


@pytest.mark.slow
def test_running_the_pieces_by_hand_works_as_written(
    tmp_path: Path,
    ports: dict[str, int],
    script: str,
    session: list[subprocess.Popen[bytes]],
) -> None:
    simulator = f"http://127.0.0.1:{ports['8100']}"
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "DATABASE_URL" and not name.startswith(("REDIS_", "WEBHOOK_"))
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        REDIS_URL=f"redis://127.0.0.1:{ports['6379']}/0",
        CNPJWS_BASE_URL=f"{simulator}/cnpjws",
        MINHA_RECEITA_BASE_URL=f"{simulator}/minha-receita",
        PLUGGY_BASE_URL=f"{simulator}/pluggy",
        WORKER_HEARTBEAT_FILE=str(tmp_path / "heartbeat"),
    )
    output = tmp_path / "output.txt"
    with output.open("wb") as sink:
        shell = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        session.append(shell)
        shell.wait(timeout=180)
    printed = output.read_text(errors="replace")
    assert shell.returncode == 0, printed

    # The curl created the condominium, with the key `tenants create` printed.
    created = json.loads(re.findall(r"^\{.*\"id\".*\}$", printed, flags=re.MULTILINE)[-1])
    assert created["pluggy_account_id"] == "sample-account-jacaranda"
    key = re.findall(r"^KEY=(\S+)$", printed, flags=re.MULTILINE)[-1]
    # Everything used the one default database, in .local/ under the working directory.
    assert (tmp_path / ".local" / "condo-audit.db").is_file()
    assert not (tmp_path / "condo_audit.db").exists()

    # The sample batch (7 suppliers) through the workers the block started: at CNPJ.ws'
    # public 3 lookups a minute it would take minutes; with the block's budget, seconds.
    sample = load_sample()
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{ports['8000']}", headers={"X-API-Key": key}, timeout=10
    )
    with api:
        answer = api.post(
            "/batch-expenses",
            json={"condominium_id": created["id"], "expenses": sample["batch"]},
        )
        assert answer.status_code == 202, answer.text
        deadline = time.monotonic() + 90
        status = answer.json()
        while status["status"] not in {"SUCCESS", "FAILURE"} and time.monotonic() < deadline:
            time.sleep(0.3)
            status = api.get(f"/tasks/{answer.json()['task_id']}").json()
        findings = api.get(f"/batches/{status['task_id']}/findings").json()
    assert status["status"] == "SUCCESS", (status, printed)
    # The seeded registry answered: the inactive and the unknown supplier are found.
    rules = {(f["rule_code"], f["expense_external_id"]) for f in findings["items"]}
    assert ("SUPPLIER_INACTIVE", "2026-10-elevador") in rules
    assert ("SUPPLIER_NOT_FOUND", "2026-10-portao") in rules
