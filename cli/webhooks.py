"""`condo-audit webhooks dispatch-due`: enqueue the webhook deliveries that are due now.

The webhooks workers run this pass every WEBHOOK_DISPATCH_INTERVAL_SECONDS by themselves;
the command is for operators (after an outage, or as a CronJob where the webhooks
Deployment may scale to zero). Running it beside the workers is harmless: a delivery that
gets two messages is attempted once.
"""

from __future__ import annotations

import argparse

from audit.db import session_factory
from audit.settings import get_settings
from worker.webhook_dispatch import dispatch_due


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    webhooks = subparsers.add_parser("webhooks", help="webhook delivery maintenance")
    actions = webhooks.add_subparsers(dest="action", required=True)
    due = actions.add_parser("dispatch-due", help="enqueue the deliveries that are due now")
    due.set_defaults(handler=run_dispatch_due)


def run_dispatch_due(args: argparse.Namespace) -> int:
    settings = get_settings()
    published = dispatch_due(session_factory(settings.database_url), settings)
    print(f"enqueued {published} due webhook deliveries on queue {settings.webhook_queue!r}")
    return 0
