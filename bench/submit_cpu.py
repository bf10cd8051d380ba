"""CPU to store one submitted batch: the submitting process and its PostgreSQL backend.

    python -m bench.submit_cpu [--batches 300] [--rounds 3] [--expenses 50]

Stores `--batches` batches a round with `audit.batches.submit_batch` and a commit, in this
process, on a fresh PostgreSQL database, and reads the CPU each side spent from /proc (this
process's and its backend's utime+stime): unlike wall time, other work on a shared machine
does not inflate it. Prints each round and the median per batch. Run it on two commits to
compare ways of storing a batch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from sqlalchemy import text

from audit.auth import create_tenant
from audit.batches import ExpenseInput, submit_batch
from audit.db import session_scope
from audit.models import Condominium
from loadtests.platform import fresh_database, postgres_reason


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process on this machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def expenses(count: int) -> list[ExpenseInput]:
    return [
        ExpenseInput(
            external_id=f"e{n}",
            supplier_cnpj="11222333000181",
            amount=Decimal(f"{100 + n}.50"),
            expense_date=dt.date(2026, 11, 1 + n % 28),
            description="Limpeza do hall e das escadas",
            category="limpeza",
            invoice_number=f"NF {n}",
        )
        for n in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--expenses", type=int, default=50)
    args = parser.parse_args()
    reason = postgres_reason()
    if reason is not None:
        raise SystemExit(f"bench.submit_cpu needs PostgreSQL: {reason}")
    with tempfile.TemporaryDirectory() as work:
        database = fresh_database("postgresql", Path(work))
        try:
            with session_scope(database.url) as session:
                tenant = create_tenant(session, "bench").id
                condominium = Condominium(
                    tenant_id=tenant, name="c", cnpj="11222333000181", pluggy_account_id="a"
                )
                session.add(condominium)
                session.flush()
                condominium_id = condominium.id
            items = expenses(args.expenses)
            client, backend = [], []
            for number in range(1, args.rounds + 1):
                client_start, backend_cpu = time.process_time(), 0.0
                for _ in range(args.batches):
                    with session_scope(database.url) as session:
                        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
                        before = cpu_seconds(pid)
                        submit_batch(session, tenant, condominium_id, items)
                        session.commit()
                        backend_cpu += cpu_seconds(pid) - before
                client.append((time.process_time() - client_start) * 1000 / args.batches)
                backend.append(backend_cpu * 1000 / args.batches)
                print(
                    f"round {number}: client {client[-1]:.2f} ms, "
                    f"PostgreSQL backend {backend[-1]:.2f} ms CPU a batch"
                )
        finally:
            database.drop()
    print(
        f"{args.expenses}-expense batch, median of {args.rounds} rounds: client "
        f"{statistics.median(client):.2f} ms, PostgreSQL backend "
        f"{statistics.median(backend):.2f} ms CPU"
    )


if __name__ == "__main__":
    main()
