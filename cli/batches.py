"""`condo-audit batches requeue-lost`: put back the batches whose message the broker lost.

An accepted batch always has a message in Redis until its task ends. A Redis that crashed
without persisting (AOF off, or the last second under `everysec`) can lose it, leaving the
batch PENDING forever; so can a worker killed between its BRPOP taking the message off the
queue list and kombu recording it as unacknowledged (two commands, not one). This finds
unfinished batches that have been quiet for a while and that the broker no longer holds, and
enqueues them again; the task is idempotent, so a batch that was merely slow is not harmed.
Safe to run on a schedule.
"""

from __future__ import annotations

import argparse
import datetime as dt

from redis import Redis

from audit.auditlog import AuditEvent, AuditLogService
from audit.batches import quiet_unfinished_batches
from audit.db import session_factory, session_scope
from audit.leases import BatchLeases
from audit.settings import get_settings
from cli.main import CliError
from worker.broker import task_ids_in_broker
from worker.enqueue import EnqueueFailed, enqueue_batch
from worker.recovery import recover_expired


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    batches = subparsers.add_parser("batches", help="batch maintenance")
    actions = batches.add_subparsers(dest="action", required=True)
    requeue = actions.add_parser(
        "requeue-lost", help="enqueue again the unfinished batches the broker no longer holds"
    )
    requeue.add_argument(
        "--quiet-minutes",
        type=float,
        default=15.0,
        help="only batches whose audit log has not moved for this long (default 15)",
    )
    requeue.add_argument("--dry-run", action="store_true", help="list them, enqueue nothing")
    requeue.set_defaults(handler=run_requeue_lost)
    recover = actions.add_parser(
        "recover",
        help="enqueue again the running batches whose lease expired (their worker died); "
        "every worker also does this every RECOVERY_INTERVAL_SECONDS",
    )
    recover.add_argument("--dry-run", action="store_true", help="list them, enqueue nothing")
    recover.set_defaults(handler=run_recover)


def run_requeue_lost(args: argparse.Namespace) -> int:
    if args.quiet_minutes < 0:
        raise CliError("--quiet-minutes must not be negative")
    settings = get_settings()
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    with session_scope(settings.database_url) as session:
        quiet = quiet_unfinished_batches(session, dt.timedelta(minutes=args.quiet_minutes))
        held = task_ids_in_broker(redis, settings.audit_queue) if quiet else set()
        lost = [batch for batch in quiet if batch.id not in held]
        for batch in lost:
            print(f"{batch.id}  {batch.status:8}  submitted {batch.submitted_at:%Y-%m-%d %H:%M}")
            if not args.dry_run:
                AuditLogService(session).record(
                    batch.id, AuditEvent.REQUEUED, reason="message lost by the broker"
                )
    if not args.dry_run:  # after the commit, so the log reads requeued -> started
        for batch in lost:
            try:
                enqueue_batch(batch.id)
            except EnqueueFailed as exc:
                raise CliError(f"could not enqueue {batch.id}: {exc}") from None
    verb = "would requeue" if args.dry_run else "requeued"
    print(f"{verb} {len(lost)} of {len(quiet)} quiet unfinished batches")
    return 0


def run_recover(args: argparse.Namespace) -> int:
    settings = get_settings()
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    leases = BatchLeases(redis, settings.batch_lease_seconds)
    sessions = session_factory(settings.database_url)
    try:
        ids = recover_expired(sessions, leases, enqueue_batch, dry_run=args.dry_run)
    except EnqueueFailed as exc:
        raise CliError(f"could not enqueue: {exc}") from None
    for batch_id in ids:
        print(batch_id)
    verb = "would recover" if args.dry_run else "recovered"
    print(f"{verb} {len(ids)} batches whose lease expired")
    return 0
