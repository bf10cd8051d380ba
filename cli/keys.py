"""`condo-audit tenants|keys`: create tenants, set their fair-queue weight, issue API keys
(shown once), revoke them."""

from __future__ import annotations

import argparse
import json

from sqlalchemy import select

from audit.auth import RevocationNotAnnounced, create_tenant, issue_key, revoke_key
from audit.db import session_scope
from audit.models import ApiKey, Tenant
from audit.settings import get_settings
from cli.main import CliError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tenants = subparsers.add_parser("tenants", help="tenants (administrators of condominiums)")
    tenant_actions = tenants.add_subparsers(dest="action", required=True)
    create = tenant_actions.add_parser("create", help="create a tenant and its first API key")
    create.add_argument("name")
    create.set_defaults(handler=run_create_tenant)
    listing = tenant_actions.add_parser("list", help="list tenants")
    listing.set_defaults(handler=run_list_tenants)
    weight = tenant_actions.add_parser(
        "set-weight",
        help="a tenant's share of the workers while others have work waiting (1 = equal)",
        description="Set a tenant's weight in the fair queue: while several tenants have "
        "batches waiting, each gets workers in proportion to its weight (default 1). "
        "Takes effect at the tenant's next turn; stored in the database and in Redis.",
    )
    weight.add_argument("tenant_id")
    weight.add_argument("weight", type=float, help="greater than 0, at most 1000 (1 = equal share)")
    weight.set_defaults(handler=run_set_weight)

    keys = subparsers.add_parser("keys", help="API keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    issue = key_actions.add_parser("create", help="issue a key for a tenant (shown once)")
    issue.add_argument("tenant_id")
    issue.add_argument("--name", default="")
    issue.set_defaults(handler=run_issue_key)
    revoke = key_actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=run_revoke_key)
    list_keys = key_actions.add_parser("list", help="list a tenant's keys (never the secrets)")
    list_keys.add_argument("tenant_id")
    list_keys.set_defaults(handler=run_list_keys)


def run_create_tenant(args: argparse.Namespace) -> int:
    name = args.name.strip()
    if not name or len(name) > 200:
        raise CliError("tenant name must have 1 to 200 characters")
    with session_scope(get_settings().database_url) as session:
        tenant = create_tenant(session, name)
        issued = issue_key(session, tenant.id, name="initial")
    print(json.dumps({"tenant_id": tenant.id, "key_id": issued.key_id, "api_key": issued.secret}))
    return 0


def run_list_tenants(args: argparse.Namespace) -> int:
    with session_scope(get_settings().database_url) as session:
        for tenant in session.scalars(select(Tenant).order_by(Tenant.created_at)):
            print(f"{tenant.id}  weight {tenant.fair_weight:g}  {tenant.name}")
    return 0


def run_set_weight(args: argparse.Namespace) -> int:
    from redis import Redis
    from redis.exceptions import RedisError

    from audit.fairqueue import FairQueue, set_tenant_weight

    settings = get_settings()
    try:
        with session_scope(settings.database_url) as session:
            set_tenant_weight(session, args.tenant_id, args.weight)
    except (ValueError, LookupError) as exc:
        raise CliError(str(exc)) from None
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        FairQueue(redis, settings.audit_queue).set_weight(args.tenant_id, args.weight)
    except RedisError as exc:
        raise CliError(
            f"weight stored in the database, but Redis is unreachable ({type(exc).__name__}): "
            "workers apply it when they next start; run the command again to apply it now"
        ) from None
    print(f"{args.tenant_id}  weight {args.weight:g}")
    return 0


def run_issue_key(args: argparse.Namespace) -> int:
    with session_scope(get_settings().database_url) as session:
        try:
            issued = issue_key(session, args.tenant_id, name=args.name)
        except LookupError as exc:
            raise CliError(str(exc)) from None
    print(
        json.dumps(
            {"tenant_id": issued.tenant_id, "key_id": issued.key_id, "api_key": issued.secret}
        )
    )
    return 0


def run_revoke_key(args: argparse.Namespace) -> int:
    with session_scope(get_settings().database_url) as session:
        try:
            revoked = revoke_key(session, args.key_id)
        except RevocationNotAnnounced as exc:
            raise CliError(str(exc)) from None
        if not revoked:
            raise CliError(f"key {args.key_id} does not exist or is already revoked")
    print(f"revoked {args.key_id}")
    return 0


def run_list_keys(args: argparse.Namespace) -> int:
    with session_scope(get_settings().database_url) as session:
        keys = session.scalars(select(ApiKey).where(ApiKey.tenant_id == args.tenant_id))
        for key in keys:
            state = "revoked" if key.revoked_at else "active"
            print(f"{key.id}  {key.prefix}…  {state}  {key.name}")
    return 0
