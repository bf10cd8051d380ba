"""`condo-audit`: one entry point; each sub-command lives in its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

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


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="condo-audit", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CliError as exc:
        print(f"condo-audit: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
