"""`condo-audit dlq`: the operator's view of dead letters, across tenants.

list, show, replay one, replay all of a provider (after its outage), discard. It works on
the database and enqueues by task name exactly as the API does, so a replay from here and
one from the API are the same operation (and equally idempotent).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from audit.db import session_scope
from audit.deadletters import DeadLetterService, DeadLetterStatus
from audit.models import DeadLetter
from audit.settings import get_settings
from cli.main import CliError

STATUSES = (DeadLetterStatus.OPEN, DeadLetterStatus.REPLAYED, DeadLetterStatus.DISCARDED)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = subparsers.add_parser("dlq", help="dead letters: list, show, replay, discard")
    actions = dlq.add_subparsers(dest="action", required=True)

    listing = actions.add_parser("list", help="list dead letters (OPEN by default)")
    listing.add_argument("--status", choices=[*STATUSES, "all"], default=DeadLetterStatus.OPEN)
    listing.add_argument("--provider")
    listing.add_argument("--tenant", help="only this tenant's")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", help="one dead letter with its payload and error")
    show.add_argument("dead_letter_id")
    show.set_defaults(handler=run_show)

    replay = actions.add_parser("replay", help="replay one dead letter (idempotent)")
    replay.add_argument("dead_letter_id")
    replay.set_defaults(handler=run_replay)

    replay_all = actions.add_parser(
        "replay-all", help="replay every OPEN dead letter a provider caused"
    )
    replay_all.add_argument("--provider", required=True)
    replay_all.add_argument("--tenant", help="only this tenant's")
    replay_all.set_defaults(handler=run_replay_all)

    discard = actions.add_parser("discard", help="give up on a dead letter (kept, not replayed)")
    discard.add_argument("dead_letter_id")
    discard.set_defaults(handler=run_discard)


def as_dict(letter: DeadLetter) -> dict[str, Any]:
    def when(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": letter.id,
        "tenant_id": letter.tenant_id,
        "batch_id": letter.batch_id,
        "task_name": letter.task_name,
        "payload": letter.payload,
        "provider": letter.provider,
        "error": letter.error,
        "attempts": letter.attempts,
        "status": letter.status,
        "trace_id": letter.trace_id,
        "first_failed_at": when(letter.first_failed_at),
        "dead_lettered_at": when(letter.dead_lettered_at),
        "replayed_at": when(letter.replayed_at),
        "replay_count": letter.replay_count,
        "discarded_at": when(letter.discarded_at),
    }


def _enqueue(batch_id: str) -> None:
    # Imported here: building the Celery app is only needed by the commands that enqueue.
    from worker.enqueue import enqueue_batch

    enqueue_batch(batch_id)


def run_list(args: argparse.Namespace) -> int:
    status = None if args.status == "all" else args.status
    with session_scope(get_settings().database_url) as session:
        letters = DeadLetterService(session).list(
            tenant_id=args.tenant, status=status, provider=args.provider, limit=args.limit
        )
        for letter in letters:
            if args.json:
                print(json.dumps(as_dict(letter)))
            else:
                print(
                    f"{letter.id}  {letter.status:<9}  {letter.provider or '-':<13}  "
                    f"attempts={letter.attempts}  batch={letter.batch_id}  {letter.error}"
                )
    return 0


def _letter(service: DeadLetterService, dead_letter_id: str) -> DeadLetter:
    letter = service.get(dead_letter_id)
    if letter is None:
        raise CliError(f"dead letter {dead_letter_id} does not exist")
    return letter


def run_show(args: argparse.Namespace) -> int:
    with session_scope(get_settings().database_url) as session:
        letter = _letter(DeadLetterService(session), args.dead_letter_id)
        print(json.dumps(as_dict(letter), indent=2))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    from worker.enqueue import EnqueueFailed

    with session_scope(get_settings().database_url) as session:
        service = DeadLetterService(session)
        letter = _letter(service, args.dead_letter_id)
        try:
            enqueued = service.replay_and_enqueue(letter, _enqueue)
        except EnqueueFailed as exc:
            raise CliError(f"{exc}; the dead letter stays open") from None
        print(json.dumps({"id": letter.id, "task_id": letter.batch_id, "enqueued": enqueued}))
    return 0


def run_replay_all(args: argparse.Namespace) -> int:
    from worker.enqueue import EnqueueFailed

    replayed: list[str] = []
    with session_scope(get_settings().database_url) as session:
        service = DeadLetterService(session)
        letters = service.list(
            tenant_id=args.tenant,
            status=DeadLetterStatus.OPEN,
            provider=args.provider,
            limit=10_000,
        )
        for letter in letters:
            try:
                if service.replay_and_enqueue(letter, _enqueue):
                    replayed.append(letter.batch_id)
            except EnqueueFailed as exc:
                raise CliError(
                    f"{exc} after {len(replayed)} replays; the rest stay open, run again"
                ) from None
    print(json.dumps({"provider": args.provider, "replayed": len(replayed), "task_ids": replayed}))
    return 0


def run_discard(args: argparse.Namespace) -> int:
    with session_scope(get_settings().database_url) as session:
        service = DeadLetterService(session)
        letter = _letter(service, args.dead_letter_id)
        if not service.discard(letter):
            raise CliError(f"dead letter {letter.id} is {letter.status}, not OPEN")
        print(json.dumps({"id": letter.id, "status": letter.status}))
    return 0
