"""The pass/fail SLO gate of a load run, from locust's CSV and the end-to-end records.

HTTP latency alone would pass a platform that accepts every batch quickly and never audits
it, so the gate also reads, for every submitted batch, the task status the API reported
when the batch finished: end-to-end time is `finished_at - submitted_at`, and a batch that
did not reach SUCCESS within the run counts against completion.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

E2E_TYPE = "E2E"  # locust request_type the locustfile reports end-to-end times under


@dataclass(frozen=True)
class Slo:
    max_error_ratio: float = 0.01
    post_p95_ms: float = 1000.0
    post_p99_ms: float = 2000.0
    get_p95_ms: float = 500.0
    get_p99_ms: float = 1000.0
    e2e_p95_seconds: float = 60.0
    e2e_p99_seconds: float = 90.0
    min_completed_ratio: float = 1.0  # batches that reached SUCCESS / batches expected


@dataclass(frozen=True)
class StatsRow:
    """One row of locust's `<prefix>_stats.csv`; percentiles in milliseconds."""

    method: str
    name: str
    requests: int
    failures: int
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Check:
    name: str
    measured: float
    limit: float
    passed: bool
    unit: str = ""

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        measured = f"{self.measured:>10.3f} {self.unit:<3}"
        return f"  {verdict}  {self.name:<40} {measured} (limit {self.limit:g})"


def _number(text: str) -> float:
    return float(text) if text not in ("", "N/A") else math.nan


def read_stats(path: Path) -> list[StatsRow]:
    """Per-endpoint rows of a locust stats CSV (the 'Aggregated' row left out)."""
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            if raw["Name"] == "Aggregated":
                continue
            rows.append(
                StatsRow(
                    method=raw["Type"],
                    name=raw["Name"],
                    requests=int(raw["Request Count"]),
                    failures=int(raw["Failure Count"]),
                    p95_ms=_number(raw["95%"]),
                    p99_ms=_number(raw["99%"]),
                )
            )
    return rows


def read_e2e(path: Path) -> list[dict[str, Any]]:
    """The locustfile's JSON lines: one per batch that ended (or gave up)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _worst(rows: Iterable[StatsRow], attribute: str) -> float:
    values = [getattr(r, attribute) for r in rows if r.requests > 0]
    return max(values) if values else math.nan


def _within(measured: float, limit: float) -> bool:
    return not math.isnan(measured) and measured <= limit


def evaluate(
    stats: list[StatsRow], e2e: list[dict[str, Any]], expected_batches: int, slo: Slo
) -> list[Check]:
    """Every check of the gate. Latency of a method is its slowest endpoint's percentile:
    locust's CSV holds percentiles per endpoint, and taking the worst one is the strict
    reading of "p95 of GET"."""
    http = [r for r in stats if r.method != E2E_TYPE]
    posts = [r for r in http if r.method == "POST"]
    gets = [r for r in http if r.method == "GET"]
    requests = sum(r.requests for r in http)
    failures = sum(r.failures for r in http)
    error_ratio = failures / requests if requests else math.nan
    succeeded = [record["e2e_seconds"] for record in e2e if record.get("status") == "SUCCESS"]
    completed = len(succeeded) / expected_batches if expected_batches else math.nan
    e2e95, e2e99 = percentile(succeeded, 95), percentile(succeeded, 99)
    return [
        Check("HTTP error ratio", error_ratio, slo.max_error_ratio,
              _within(error_ratio, slo.max_error_ratio)),
        Check("POST p95", _worst(posts, "p95_ms"), slo.post_p95_ms,
              _within(_worst(posts, "p95_ms"), slo.post_p95_ms), "ms"),
        Check("POST p99", _worst(posts, "p99_ms"), slo.post_p99_ms,
              _within(_worst(posts, "p99_ms"), slo.post_p99_ms), "ms"),
        Check("GET p95 (slowest endpoint)", _worst(gets, "p95_ms"), slo.get_p95_ms,
              _within(_worst(gets, "p95_ms"), slo.get_p95_ms), "ms"),
        Check("GET p99 (slowest endpoint)", _worst(gets, "p99_ms"), slo.get_p99_ms,
              _within(_worst(gets, "p99_ms"), slo.get_p99_ms), "ms"),
        Check("batches reaching SUCCESS / expected", completed, slo.min_completed_ratio,
              not math.isnan(completed) and completed >= slo.min_completed_ratio),
        Check("submission->SUCCESS p95", e2e95, slo.e2e_p95_seconds,
              _within(e2e95, slo.e2e_p95_seconds), "s"),
        Check("submission->SUCCESS p99", e2e99, slo.e2e_p99_seconds,
              _within(e2e99, slo.e2e_p99_seconds), "s"),
    ]  # fmt: skip


def passed(checks: Iterable[Check]) -> bool:
    return all(check.passed for check in checks)


def render(checks: list[Check]) -> str:
    verdict = "PASSED" if passed(checks) else "FAILED"
    return "\n".join([f"SLO gate {verdict}", *(check.line() for check in checks)])


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(c).items()}
        for c in checks
    ]
