"""`condo-audit tenants|keys`: create tenants, issue API keys (shown once), revoke them."""

from __future__ import annotations

import argparse
import json

from sqlalchemy import select

from audit.auth import create_tenant, issue_key, revoke_key
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
            print(f"{tenant.id}  {tenant.name}")
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
        if not revoke_key(session, args.key_id):
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
