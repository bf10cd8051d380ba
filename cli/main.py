"""`condo-audit`: one entry point; each sub-command lives in its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

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


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="condo-audit", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; user-facing errors become one line on stderr and exit 2."""
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (CliError, OpsError) as exc:
        print(f"condo-audit: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in OPS_EXTRA_MODULES:
            raise
        print(
            f"condo-audit: this command needs the operations tools ({exc.name} is not "
            "installed): pip install 'condo-audit[ops]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
