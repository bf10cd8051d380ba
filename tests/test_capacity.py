"""The sizing model against cases computed by hand, and `condo-audit capacity`."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cli import capacity, workload
from cli.main import CliError
from ops.capacity import (
    AUDIT_RATE_IS_PLACEHOLDER,
    MESSAGE_BYTES_PER_CARRIED_EXPENSE,
    ROW_BYTES,
    CapacityInputs,
    size,
)

# 100 condominiums x 40 expenses = 4,000 expenses; 10% unique = 400 CNPJs, 25% cached ->
# 300 lookups at 60/min = 300 s; 100 pages at 60/min = 100 s; 4,000 expenses at 10/s =
# 400 process-seconds. The providers bound the month at 300 s; 400 / 300 -> 2 processes.
CNPJ_BOUND = CapacityInputs(
    condominiums=100,
    expenses_per_condominium=40,
    unique_supplier_fraction=0.1,
    cached_fraction=0.25,
    transaction_pages_per_condominium=1,
    transactions_per_condominium=150,
    cnpj_lookups_per_minute=60,
    pluggy_requests_per_minute=60,
    audit_rate_per_process=10,
    worker_concurrency=2,
    peak_window_minutes=10,
    peak_to_mean=3,
    status_polls_per_batch=4,
    reads_per_batch=1,
    api_rps_per_replica=2,
    api_target_utilization=0.5,
    message_bytes=1000,
    findings_per_expense=0.05,
    audit_log_events_per_batch=4,
)


def test_cnpj_bound_month_by_hand() -> None:
    r = size(CNPJ_BOUND)
    assert (r.expenses, r.unique_cnpjs, r.uncached_lookups, r.transaction_pages) == (
        4000,
        400,
        300,
        100,
    )
    assert r.cnpj_seconds == pytest.approx(300)
    assert r.pluggy_seconds == pytest.approx(100)
    assert r.worker_process_seconds == pytest.approx(400)
    assert r.saturation_processes == 2
    assert (r.worker_replicas, r.processes) == (1, 2)
    assert r.worker_seconds == pytest.approx(200)
    assert r.month_seconds == pytest.approx(300)
    assert r.bottleneck == "cnpj"
    assert r.finish_seconds == pytest.approx(600)  # the 10-minute window is longer
    # 100 batches x 6 requests / 600 s = 1 req/s, x3 burst = 3; 2 req/s at 50% -> 3 replicas.
    assert r.api_peak_rps == pytest.approx(3)
    assert r.api_replicas == 3
    # The month (300 s) is shorter than the window: only the two in flight are outstanding.
    assert r.redis_peak_outstanding == 2
    # The queued messages only: audit tasks keep no Celery result in Redis.
    assert r.redis_bytes == 1_000_000 + 2 * 1000
    assert r.redis_maxmemory_bytes == 64 * 2**20
    assert r.db_rows == {
        "batches": 100,
        "expenses": 4000,
        "findings": 200,
        "bank_transactions": 15000,
        "audit_log": 400,
        "supplier_registrations": 300,
    }
    assert r.db_total_bytes == sum(r.db_rows[t] * ROW_BYTES[t] for t in r.db_rows)
    # 100 batches / 300 s / 1 replica x 60 s = 20 outstanding batches per replica.
    assert r.keda == {
        "minReplicaCount": 1,
        "maxReplicaCount": 1,
        "listLength": 20,
        "activationListLength": 0,
        "pollingInterval": 15,
    }


def test_workers_beyond_saturation_only_wait() -> None:
    # 10 condominiums x 100 expenses at 1/s = 1,000 process-seconds; 20 pages at 6/min =
    # 200 s; 1,000 / 200 = 5 processes -> 3 pods of 2.
    base = CapacityInputs(
        condominiums=10,
        expenses_per_condominium=100,
        transaction_pages_per_condominium=2,
        cnpj_lookups_per_minute=math.inf,
        pluggy_requests_per_minute=6,
        audit_rate_per_process=1,
        worker_concurrency=2,
    )
    r = size(base)
    assert (r.saturation_processes, r.worker_replicas) == (5, 3)
    assert r.worker_seconds == pytest.approx(1000 / 6)
    assert r.month_seconds == pytest.approx(200)
    assert r.bottleneck == "pluggy"
    more = size(
        CapacityInputs(**{**base.__dict__, "min_worker_replicas": 10, "max_worker_replicas": 10})
    )
    assert more.month_seconds == pytest.approx(r.month_seconds)
    fewer = size(CapacityInputs(**{**base.__dict__, "max_worker_replicas": 2}))
    assert fewer.month_seconds == pytest.approx(250)
    assert fewer.bottleneck == "workers"


def test_unbounded_providers_size_for_the_target_time() -> None:
    # 1,000 x 50 = 50,000 expenses at 100/s = 500 s, plus 0.1 s for each of 5,000 lookups
    # and 1,000 pages = 600 s: 1,100 process-seconds; a 0.1 h (360 s) target -> 4 processes,
    # capped at 3 pods of 1 process -> 366.7 s, worker-bound.
    r = size(
        CapacityInputs(
            condominiums=1000,
            expenses_per_condominium=50,
            unique_supplier_fraction=0.1,
            transaction_pages_per_condominium=1,
            cnpj_lookups_per_minute=math.inf,
            pluggy_requests_per_minute=math.inf,
            audit_rate_per_process=100,
            provider_latency_seconds=0.1,
            worker_concurrency=1,
            max_worker_replicas=3,
            target_month_hours=0.1,
            peak_window_minutes=5,
        )
    )
    assert r.worker_process_seconds == pytest.approx(1100)
    assert r.saturation_processes is None
    assert r.worker_replicas == 3
    assert r.month_seconds == pytest.approx(1100 / 3)
    assert r.bottleneck == "workers"
    # 300 s window, 366.7 s month: 1000 - 300 x 1000 / 366.7 = 182 batches left over.
    assert r.redis_peak_outstanding == 182


def test_message_carrying_expenses_costs_redis_memory() -> None:
    ids_only = size(CNPJ_BOUND)
    carried = size(CapacityInputs(**{**CNPJ_BOUND.__dict__, "message_carries_expenses": True}))
    per_message = 40 * MESSAGE_BYTES_PER_CARRIED_EXPENSE
    assert carried.redis_bytes - ids_only.redis_bytes == 2 * per_message


@pytest.mark.parametrize(
    ("field", "value"),
    [("cached_fraction", 1.5), ("audit_rate_per_process", 0), ("condominiums", 0)],
)
def test_rejects_impossible_inputs(field: str, value: float) -> None:
    values: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field):
        CapacityInputs(**values)


def run(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="condo-audit")
    sub = parser.add_subparsers(dest="command", required=True)
    capacity.register(sub)
    workload.register(sub)
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def test_command_prints_report_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["capacity", "--condominiums", "10000"]) == 0
    text = capsys.readouterr().out
    assert "Sizing for 10,000 condominiums" in text
    assert "bound by cnpj" in text  # 3 lookups a minute cannot keep up with 10,000
    assert "maxReplicaCount" in text
    assert ("audit_rate_per_process 1000 is a placeholder" in text) == AUDIT_RATE_IS_PLACEHOLDER
    assert run(["capacity", "--audit-rate-per-process", "2500"]) == 0
    assert "audit_rate_per_process" not in capsys.readouterr().out
    argv = ["capacity", "--json", "--cnpj-lookups-per-minute", "inf", "--condominiums", "100"]
    assert run(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["inputs"]["cnpj_lookups_per_minute"] is None  # infinity, as JSON allows
    assert data["cnpj_seconds"] == 0
    assert data["bottleneck"] in {"pluggy", "workers"}
    assert data["db_total_bytes"] == sum(data["db_bytes"].values())


def test_command_takes_figures_from_a_workload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "w"
    run(["workload", "generate", "--condominiums", "20", "--out", str(out)])
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    capsys.readouterr()
    assert run(["capacity", "--json", "--workload", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["expenses"] == summary["expenses"]
    assert data["unique_cnpjs"] == summary["unique_cnpjs"]
    assert data["transaction_pages"] == summary["transaction_pages"]
    # An explicit flag wins over the workload's figure.
    assert run(["capacity", "--json", "--workload", str(out), "--condominiums", "40"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"]["condominiums"] == 40


def test_command_reports_bad_input_as_a_user_error() -> None:
    with pytest.raises(CliError, match="cached_fraction"):
        run(["capacity", "--cached-fraction", "2"])
