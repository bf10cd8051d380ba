"""`condo-audit workload generate`: write a synthetic month as JSON lines for load tests."""

from __future__ import annotations

import argparse
import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

from ops.workload import PAGE_SIZE, PLANT_KINDS, WorkloadConfig, WorkloadStats, generate

FILES = {
    "condominiums": "condominiums.jsonl",
    "batches": "batches.jsonl",
    "transactions": "transactions.jsonl",
    "suppliers": "suppliers.jsonl",
    "planted": "planted.jsonl",
}

CONVENTIONS = {
    "condominiums": "one line per condominium: ref, the POST /condominiums body, units, period",
    "batches": "one line per condominium: ref and the expenses of POST /batch-expenses "
    "(add the condominium_id the API returned)",
    "transactions": "one Pluggy transaction per line; amount is negative for DEBIT, positive "
    "for CREDIT; match on the absolute value",
    "suppliers": "one registry record per distinct supplier CNPJ: what the provider simulator "
    "should answer (found=false means 404)",
    "planted": "one planted irregularity per line: kind, condominium ref, external_ids, "
    "supplier_cnpj, detail",
}


def _write(stream: TextIO, record: dict[str, Any]) -> None:
    stream.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
    stream.write("\n")


def write_workload(config: WorkloadConfig, out: Path, transactions: str = "all") -> dict[str, Any]:
    """Stream the workload into ``out``; returns the manifest it also writes."""
    out.mkdir(parents=True, exist_ok=True)
    stats = WorkloadStats()
    seen: set[str] = set()
    started = time.perf_counter()
    with ExitStack() as stack:
        files = {
            key: stack.enter_context((out / name).open("w", encoding="utf-8"))
            for key, name in FILES.items()
        }
        for month in generate(config):
            stats.add(month)
            _write(
                files["condominiums"],
                {
                    "ref": month.ref,
                    **month.condominium_request(),
                    "units": month.units,
                    "period": month.period,
                },
            )
            _write(files["batches"], {"ref": month.ref, "expenses": month.expenses})
            if transactions != "none":
                for tx in month.transactions:
                    if transactions == "all" or tx["type"] == "DEBIT":
                        _write(files["transactions"], tx)
            for cnpj, sup in month.suppliers.items():
                if cnpj not in seen:
                    seen.add(cnpj)
                    _write(files["suppliers"], sup.registry_record())
            for planted in month.planted:
                _write(files["planted"], planted.as_dict())
    manifest = {
        "config": {
            "condominiums": config.condominiums,
            "seed": config.seed,
            "period": config.period,
            "approval_threshold": str(config.approval_threshold),
            "payment_lag_days": config.payment_lag_days,
            "irregular_share": config.irregular_share,
            "transactions_written": transactions,
        },
        "summary": stats.summary(),
        "files": FILES,
        "conventions": CONVENTIONS,
        "plant_kinds": list(PLANT_KINDS),
        "generation_seconds": round(time.perf_counter() - started, 2),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def _generate(args: argparse.Namespace) -> int:
    config = WorkloadConfig(
        condominiums=args.condominiums,
        seed=args.seed,
        period=args.period,
        credits=args.transactions != "debits",
    )
    manifest = write_workload(config, Path(args.out), args.transactions)
    summary = manifest["summary"]
    print(
        f"wrote {summary['condominiums']:,} condominiums to {args.out} "
        f"in {manifest['generation_seconds']} s\n"
        f"  expenses            {summary['expenses']:,} "
        f"({summary['expenses_per_condominium']} per condominium)\n"
        f"  transactions        {summary['transactions']:,} "
        f"({summary['transaction_pages']:,} pages at {PAGE_SIZE}/page)\n"
        f"  unique CNPJs        {summary['unique_cnpjs']:,} "
        f"({summary['unique_alphanumeric_cnpjs']:,} alphanumeric; "
        f"{summary['lookups_without_shared_cache']:,} lookups without a shared cache)\n"
        f"  planted             {summary['planted']}"
    )
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError("must be between 1 and 1,000,000")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("workload", help="synthetic workloads for load tests")
    commands = parser.add_subparsers(dest="workload_command", required=True)
    gen = commands.add_parser(
        "generate",
        help="write N condominiums' month as JSON lines",
        description="Deterministic from --seed; files and conventions are listed in manifest.json.",
    )
    gen.add_argument("--condominiums", type=_positive, required=True)
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument("--period", default="2026-11", help="YYYY-MM (default 2026-11)")
    gen.add_argument("--out", required=True, help="directory to write into")
    gen.add_argument(
        "--transactions",
        choices=("all", "debits", "none"),
        default="all",
        help="which bank transactions to write (credits are the unit fees; 'debits' also "
        "leaves them out of the page count)",
    )
    gen.set_defaults(handler=_generate)
