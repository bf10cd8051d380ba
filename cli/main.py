"""`condo-audit`: one entry point; each sub-command lives in its own module."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from redis.exceptions import RedisError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from audit.settings import get_settings
from ops import OpsError

# Modules that expose `register(subparsers)`; each adds its own sub-commands.
COMMAND_MODULES = (
    "cli.db",
    "cli.keys",
    "cli.run",
    "cli.dlq",
    "cli.batches",
    "cli.webhooks",
    "cli.workload",
    "cli.capacity",
    "cli.ops",
)


# Third-party modules of the `ops` extra, which the container image does not install.
OPS_EXTRA_MODULES = frozenset({"kubernetes", "matplotlib", "yaml"})

# What SQLite and PostgreSQL say when a table or column the code expects is not there:
# the database was never migrated, or is behind the code.
MISSING_SCHEMA_SIGNS = ("no such table", "no such column", "undefinedtable", "undefinedcolumn")


DEBUG_HINT = "(condo-audit --debug ... shows the traceback)"


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="condo-audit", description=__doc__)
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the full traceback of an error instead of its one-line summary",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; any error becomes one line on stderr (the traceback only
    with --debug): exit 2 for what the user can fix, 1 for the rest."""
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # inside the try: a reader that went away is handled below
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head`): not an error to report. Later writes (the
        # interpreter's flush at exit) go nowhere instead of raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        message, code = describe_error(exc)
        print(f"condo-audit: {message}", file=sys.stderr)
        return code


def describe_error(exc: Exception) -> tuple[str, int]:
    """One line for an error, and the exit status."""
    if isinstance(exc, CliError | OpsError):
        return str(exc), 2
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in (
        OPS_EXTRA_MODULES
    ):
        return (
            f"this command needs the operations tools ({exc.name} is not installed): "
            "pip install 'condo-audit[ops]'",
            2,
        )
    if isinstance(exc, SQLAlchemyError):
        where = database_location()
        detail = first_line(exc.orig if isinstance(exc, DBAPIError) else exc)
        text = f"{type(getattr(exc, 'orig', exc)).__name__} {detail}".lower()
        if any(sign in text for sign in MISSING_SCHEMA_SIGNS):
            return (
                f"the database {where} has no schema or an old one ({detail}): "
                "run `condo-audit db upgrade`",
                2,
            )
        return f"database error at {where}: {detail} {DEBUG_HINT}", 1
    if isinstance(exc, RedisError):
        return f"Redis error: {first_line(exc)} (is REDIS_URL right?) {DEBUG_HINT}", 1
    return f"{type(exc).__name__}: {first_line(exc)} {DEBUG_HINT}", 1


def database_location() -> str:
    """DATABASE_URL as the command used it, password hidden."""
    try:
        url = get_settings().database_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(DATABASE_URL)"


def first_line(exc: object) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
