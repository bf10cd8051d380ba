"""`condo-audit capacity`: replicas, run time, Redis memory and database growth for a month."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from cli.main import CliError
from ops.capacity import CapacityInputs, render, size

# Flags whose value comes from a workload manifest's summary when --workload is given.
_FROM_WORKLOAD: dict[str, Callable[[dict[str, Any]], float]] = {
    "expenses_per_condominium": lambda s: s["expenses"] / s["condominiums"],
    "unique_supplier_fraction": lambda s: s["unique_cnpjs"] / s["expenses"],
    "transaction_pages_per_condominium": lambda s: s["transaction_pages"] / s["condominiums"],
    "transactions_per_condominium": lambda s: s["transactions"] / s["condominiums"],
}

_HELP = {
    "condominiums": "condominiums audited each month",
    "expenses_per_condominium": "expenses per condominium per month",
    "unique_supplier_fraction": "unique supplier CNPJs / expenses over the month",
    "cached_fraction": "share of those CNPJs already fresh in the lookup cache",
    "transaction_pages_per_condominium": "Pluggy pages (500 transactions) per condominium",
    "transactions_per_condominium": "bank transactions stored per condominium and month",
    "cnpj_lookups_per_minute": "CNPJ provider budget for the whole fleet ('inf' for a "
    "self-hosted minha-receita; CNPJ.ws public tier: about 3)",
    "pluggy_requests_per_minute": "Pluggy budget per endpoint for the whole fleet",
    "audit_rate_per_process": "expenses audited per second by one worker process, warm cache "
    "(default: the figure measured on this machine, see docs/performance.md)",
    "provider_latency_seconds": "seconds a worker process blocks on each provider call",
    "worker_concurrency": "Celery processes per worker pod",
    "min_worker_replicas": "KEDA minReplicaCount",
    "max_worker_replicas": "most worker pods the cluster allows",
    "target_month_hours": "month duration to size for when the providers set no bound",
    "queue_wait_target_seconds": "worker time of outstanding work per replica (listLength)",
    "peak_window_minutes": "window in which all condominiums submit at month end",
    "peak_to_mean": "request-rate burst factor within the window",
    "status_polls_per_batch": "GET /tasks/{id} calls per batch",
    "reads_per_batch": "findings and report reads per batch",
    "api_rps_per_replica": "requests per second one API replica serves within the SLO "
    "(default: placeholder until measured by the load test)",
    "api_target_utilization": "fraction of an API replica's capacity to plan for",
    "api_min_replicas": "API replicas never below this (availability)",
    "message_bytes": "Redis bytes per queued batch message",
    "message_carries_expenses": "the task message carries the expenses, not only the batch id",
    "findings_per_expense": "findings recorded per expense",
    "audit_log_events_per_batch": "audit log rows per batch",
}


def _number(text: str) -> float:
    if text.lower() in ("inf", "unlimited"):
        return math.inf
    value = float(text)
    if math.isnan(value):
        raise argparse.ArgumentTypeError("not a number")
    return value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def inputs_from_args(args: argparse.Namespace) -> CapacityInputs:
    """Explicit flags win over the workload manifest, which wins over the defaults."""
    values: dict[str, Any] = {}
    if args.workload:
        path = Path(args.workload)
        manifest = json.loads((path / "manifest.json" if path.is_dir() else path).read_text())
        summary = manifest["summary"]
        values["condominiums"] = summary["condominiums"]
        for name, derive in _FROM_WORKLOAD.items():
            values[name] = derive(summary)
    for item in fields(CapacityInputs):
        given = getattr(args, item.name)
        if given is not None:
            values[item.name] = given
    try:
        return CapacityInputs(**values)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _capacity(args: argparse.Namespace) -> int:
    report = size(inputs_from_args(args))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(render(report))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "capacity",
        help="size the platform for a month of audits",
        description="Time a full month takes, worker and API replicas, Redis memory, database "
        "growth and KEDA values, from the workload and the measured per-process rates.",
    )
    parser.add_argument(
        "--workload",
        metavar="PATH",
        help="take the workload figures from `condo-audit workload generate` output "
        "(its directory or manifest.json)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    for item in fields(CapacityInputs):
        default = item.default
        if item.type == "bool":
            parser.add_argument(
                _flag(item.name), action="store_const", const=True, help=_HELP[item.name]
            )
            continue
        kind = int if item.type == "int" else _number
        parser.add_argument(
            _flag(item.name),
            type=kind,
            default=None,
            metavar="N",
            help=f"{_HELP[item.name]} (default {default:g})",
        )
    parser.set_defaults(handler=_capacity)
