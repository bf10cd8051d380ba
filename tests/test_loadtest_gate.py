"""The load run's SLO gate, on locust's CSV format and the locustfile's end-to-end records."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests import slo

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,"
    "75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def stats_csv(path: Path, rows: list[tuple[str, str, int, int, float, float]]) -> Path:
    """A stats file as locust writes it: (type, name, requests, failures, p95, p99) per row."""
    lines = [HEADER]
    for method, name, requests, failures, p95, p99 in rows:
        lines.append(
            f"{method},{name},{requests},{failures},20,30.5,3.1,{p99},200.0,2.5,0.0,"
            f"20,25,30,35,40,{p95},{p99},{p99},{p99},{p99},{p99}"
        )
    total = sum(r[2] for r in rows)
    lines.append(f",Aggregated,{total},0,20,30,3,999,200,9.9,0.0,20,25,30,35,40,50,60,70,80,90,99")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def records(path: Path, e2e_seconds: list[float], other: Sequence[str] = ()) -> Path:
    entries: list[dict[str, Any]] = [
        {"task_id": f"t{i}", "status": "SUCCESS", "e2e_seconds": s}
        for i, s in enumerate(e2e_seconds)
    ]
    entries += [{"task_id": f"x{i}", "status": status} for i, status in enumerate(other)]
    path.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    return path


GOOD = [
    ("POST", "/batch-expenses", 100, 0, 150.0, 290.0),
    ("GET", "/tasks/[id]", 900, 0, 60.0, 120.0),
    ("GET", "/condominiums/[id]/report", 100, 0, 140.0, 270.0),
    ("E2E", "submission->SUCCESS", 100, 0, 1400.0, 1700.0),
]
SLO = slo.Slo(
    max_error_ratio=0.01,
    post_p95_ms=500,
    post_p99_ms=1000,
    get_p95_ms=200,
    get_p99_ms=400,
    e2e_p95_seconds=10,
    e2e_p99_seconds=20,
)


def failing(checks: list[slo.Check]) -> set[str]:
    return {check.name for check in checks if not check.passed}


def gate(
    tmp_path: Path,
    rows: list[Any],
    e2e: list[float],
    other: Sequence[str] = (),
    expected: int = 100,
) -> list[slo.Check]:
    stats = slo.read_stats(stats_csv(tmp_path / "locust_stats.csv", rows))
    ended = slo.read_e2e(records(tmp_path / "e2e.jsonl", e2e, other))
    return slo.evaluate(stats, ended, expected, SLO)


def test_a_healthy_run_passes_every_check(tmp_path: Path) -> None:
    checks = gate(tmp_path, GOOD, [1.0 + i / 100 for i in range(100)])
    assert slo.passed(checks), slo.render(checks)
    assert slo.render(checks).startswith("SLO gate PASSED")
    by_name = {c.name: c.measured for c in checks}
    assert by_name["POST p99"] == 290.0
    assert by_name["GET p95 (slowest endpoint)"] == 140.0  # the report, not the polls
    assert by_name["submission->SUCCESS p95"] == 1.94


def test_errors_above_the_ratio_fail_the_gate(tmp_path: Path) -> None:
    rows = [("POST", "/batch-expenses", 100, 0, 150.0, 290.0), ("GET", "/tasks/[id]", 900, 11,
            60.0, 120.0)]  # fmt: skip
    checks = gate(tmp_path, rows, [1.0] * 100)
    assert failing(checks) == {"HTTP error ratio"}
    assert math.isclose(checks[0].measured, 0.011)


def test_the_end_to_end_row_is_not_an_http_latency(tmp_path: Path) -> None:
    """Locust's E2E row holds seconds-long times; they must not fail the GET or POST checks."""
    rows = [*GOOD[:3], ("E2E", "submission->SUCCESS", 100, 0, 9000.0, 15000.0)]
    assert slo.passed(gate(tmp_path, rows, [1.0] * 100))


def test_slow_post_and_get_fail_their_checks(tmp_path: Path) -> None:
    rows = [
        ("POST", "/batch-expenses", 100, 0, 150.0, 1200.0),
        ("GET", "/tasks/[id]", 900, 0, 250.0, 300.0),
    ]
    assert failing(gate(tmp_path, rows, [1.0] * 100)) == {
        "POST p99",
        "GET p95 (slowest endpoint)",
    }


def test_batches_that_never_succeed_fail_completion(tmp_path: Path) -> None:
    checks = gate(tmp_path, GOOD, [1.0] * 97, other=["FAILURE", "gave up while STARTED"])
    assert failing(checks) == {"batches reaching SUCCESS / expected"}
    # Fast HTTP answers do not hide a batch that was never submitted either.
    assert failing(gate(tmp_path, GOOD, [1.0] * 99)) == {"batches reaching SUCCESS / expected"}


def test_slow_audits_fail_the_end_to_end_checks(tmp_path: Path) -> None:
    e2e = [2.0] * 94 + [12.0] * 4 + [25.0] * 2
    assert failing(gate(tmp_path, GOOD, e2e)) == {
        "submission->SUCCESS p95",
        "submission->SUCCESS p99",
    }


def test_a_run_without_requests_fails(tmp_path: Path) -> None:
    checks = gate(tmp_path, [], [])
    assert not slo.passed(checks)
    assert "FAILED" in slo.render(checks)
    assert json.dumps(slo.as_json(checks))  # NaN becomes null, the report stays valid JSON


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert slo.percentile(values, 95) == 95
    assert slo.percentile(values, 99) == 99
    assert slo.percentile([3.0], 99) == 3.0
    assert math.isnan(slo.percentile([], 95))


def test_the_two_tenant_gate_holds_the_small_tenant_to_the_fairness_bound() -> None:
    from loadtests.fairness import evaluate, fairness_bound

    assert fairness_bound(0.5) == 3.5  # alone + 3 s when short
    assert fairness_bound(4.0) == 12.0  # 3 x alone when long
    good = evaluate(alone=1.0, behind=3.9, flood_waiting=30, expected=70, succeeded=70)
    assert slo.passed(good)
    late = evaluate(alone=1.0, behind=4.1, flood_waiting=30, expected=70, succeeded=70)
    assert [c.name for c in late if not c.passed] == ["small tenant behind the flood (s)"]
    # A flood already drained proves nothing; a lost batch fails the run.
    assert not slo.passed(evaluate(2.0, 2.5, flood_waiting=0, expected=70, succeeded=70))
    assert not slo.passed(evaluate(2.0, 2.5, flood_waiting=9, expected=70, succeeded=69))
