"""Seed the database for scripts/schemathesis.sh and write its schemathesis config.

A tenant with a condominium, a batch and a dead letter: schemathesis draws path, query and
body ids from these half of the time, so it reaches past the 404s into the handlers.
Prints the tenant's API key.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from decimal import Decimal

from audit.auth import create_tenant, issue_key
from audit.batches import ExpenseInput, submit_batch
from audit.db import session_scope, upgrade_database
from audit.models import Condominium, DeadLetter

BINDINGS = {
    "path.condominium_id": "condominiums",
    "query.condominium_id": "condominiums",
    "body.condominium_id": "condominiums",
    "path.task_id": "batches",
    "path.batch_id": "batches",
    "query.batch_id": "batches",
    "path.dead_letter_id": "dead_letters",
    "query.provider": "providers",
}


def main(config_path: str) -> None:
    url = os.environ["DATABASE_URL"]
    upgrade_database(url)
    with session_scope(url) as session:
        tenant = create_tenant(session, "schemathesis")
        condominium = Condominium(tenant_id=tenant.id, name="Schemathesis", audit_settings={})
        session.add(condominium)
        session.flush()
        item = ExpenseInput(
            "e1",
            "11222333000181",
            Decimal("10.00"),
            dt.date(2026, 10, 1),
            "Limpeza",
            "limpeza",
            None,
        )
        batch = submit_batch(session, tenant.id, condominium.id, [item])
        letter = DeadLetter(
            batch_id=batch.batch_id,
            tenant_id=tenant.id,
            task_name="audit.process_batch_expenses",
            payload={"batch_id": batch.batch_id},
            provider="cnpjws",
            error="cnpjws: server error 503",
            attempts=5,
        )
        session.add(letter)
        session.flush()
        key = issue_key(session, tenant.id).secret
        values = {
            "condominiums": condominium.id,
            "batches": batch.batch_id,
            "dead_letters": letter.id,
            "providers": "cnpjws",
        }
    lines = [f'[dictionaries.{name}]\nvalues = ["{value}"]' for name, value in values.items()]
    lines.append("[parameters]")
    lines += [
        f'"{key_}" = {{ dictionary = "{name}", probability = 0.5 }}'
        for key_, name in BINDINGS.items()
    ]
    with open(config_path, "w") as config:
        config.write("\n".join(lines) + "\n")
    print(key)


if __name__ == "__main__":
    main(sys.argv[1])
