"""`condo-audit db upgrade`: apply the schema migrations (the chart's migrations Job runs it)."""

from __future__ import annotations

import argparse

from audit.db import upgrade_database
from audit.settings import get_settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = subparsers.add_parser("db", help="database schema")
    actions = db.add_subparsers(dest="action", required=True)
    upgrade = actions.add_parser("upgrade", help="migrate the schema to the latest revision")
    upgrade.add_argument("--revision", default="head")
    upgrade.set_defaults(handler=run_upgrade)


def run_upgrade(args: argparse.Namespace) -> int:
    settings = get_settings()
    upgrade_database(settings.database_url, args.revision)
    print(f"database at revision {args.revision}")
    return 0
