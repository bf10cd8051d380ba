"""Two-tenant month-end: a large administrator posts its whole month at once, a small one
posts a few batches a moment later; the gate checks the small one is not held behind.

    python -m loadtests.fairness --profile ci      # about 2 minutes
    python -m loadtests.fairness --profile peak    # a bigger flood, more workers

The same platform as `loadtests.run` (private Redis, fresh database, the simulator with the
providers' latency and limits, the API, N Celery workers) and the same workload generator
(realistic condominium months: expenses, suppliers, bank transactions), with 90% of the
suppliers already cached as in a month-end. The small tenant's batches run three times:
once to warm (its suppliers cached, like the big tenant's), once alone (the reference), and
once right after the big tenant's whole month was accepted. The gate (gate.json):

- fairness: the small tenant's batches finish, from first submission to last finish,
  within max(3 x their time alone, their time alone + 3 s);
- validity: the flood was still waiting when the small tenant finished (otherwise the
  scenario proved nothing);
- completion: every batch of both tenants ends SUCCESS within the drain time (nothing lost).

The run also writes the arrivals as a two-tenant load file `ops simulate --load` replays.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as dt
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtests import slo
from loadtests.platform import (
    ONE_TENANT_LOAD_ENV,
    ROOT,
    LocalPlatform,
    ProviderLimits,
    cached_share,
    create_tenants,
    seed_simulator,
    start_platform,
    unique_suppliers,
    warm_supplier_cache,
)
from ops.workload import CondominiumMonth, WorkloadConfig, condominium_month

REPORTS = ROOT / "loadtests" / "reports"


@dataclass(frozen=True)
class Profile:
    big_condominiums: int  # the large administrator's month, posted at once
    small_condominiums: int  # the small administrator's batches
    workers: int
    concurrency: int
    drain_seconds: float
    cached_fraction: float = 0.9


PROFILES = {
    "ci": Profile(big_condominiums=60, small_condominiums=3, workers=1, concurrency=4,
                  drain_seconds=180),
    "peak": Profile(big_condominiums=300, small_condominiums=5, workers=2, concurrency=4,
                    drain_seconds=600),
}  # fmt: skip


def fairness_bound(alone_seconds: float) -> float:
    """The promise: max(3 x the time alone, the time alone + 3 s)."""
    return max(3 * alone_seconds, alone_seconds + 3.0)


def evaluate(
    alone: float, behind: float, flood_waiting: int, expected: int, succeeded: int
) -> list[slo.Check]:
    bound = fairness_bound(alone)
    return [
        slo.Check("small tenant behind the flood (s)", behind, bound, behind <= bound, "s"),
        # Validity, not speed: at least one flood batch still waited when the small one ended.
        slo.Check("flood batches waiting at the end (>= 1)", flood_waiting, 1, flood_waiting >= 1),
        slo.Check(
            "batches SUCCESS / accepted", succeeded / max(1, expected), 1.0, succeeded == expected
        ),
    ]


class Tenant:
    def __init__(self, api_url: str, key: str, months: list[CondominiumMonth]) -> None:
        self.client = httpx.Client(base_url=api_url, headers={"X-API-Key": key}, timeout=60)
        self.condominiums: list[tuple[CondominiumMonth, str]] = []
        self.posted_at: list[float] = []  # monotonic time of every accepted batch
        for month in months:
            response = self.client.post("/condominiums", json=month.condominium_request())
            response.raise_for_status()
            self.condominiums.append((month, str(response.json()["id"])))

    def submit_all(self, threads: int = 1) -> list[str]:
        def post(item: tuple[CondominiumMonth, str]) -> str:
            month, condominium_id = item
            response = self.client.post("/batch-expenses", json=month.batch_request(condominium_id))
            response.raise_for_status()
            self.posted_at.append(time.monotonic())
            return str(response.json()["task_id"])

        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            return list(pool.map(post, self.condominiums))

    def statuses(self, ids: list[str]) -> list[dict[str, Any]]:
        return [self.client.get(f"/tasks/{task_id}").json() for task_id in ids]

    def wait(self, ids: list[str], timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            states = self.statuses(ids)
            if all(s["status"] in ("SUCCESS", "FAILURE") for s in states):
                return states
            if time.monotonic() > deadline:
                return states
            time.sleep(0.25)


def span(states: list[dict[str, Any]]) -> float:
    """First submission to last finish, as the API reports them."""
    first = min(dt.datetime.fromisoformat(s["submitted_at"]) for s in states)
    last = max(dt.datetime.fromisoformat(s["finished_at"] or s["submitted_at"]) for s in states)
    return (last - first).total_seconds()


def arrivals_load(started: float, big: list[float], small: list[float]) -> dict[str, Any]:
    """Arrival offsets per tenant, as `condo-audit ops simulate --load` reads them."""
    return {
        "tenants": {
            "big": [round(t - started, 3) for t in big],
            "small": [round(t - started, 3) for t in small],
        }
    }


def run(profile: Profile, out: Path, database: str, seed: int) -> dict[str, Any]:
    config = WorkloadConfig(
        condominiums=profile.big_condominiums + profile.small_condominiums, seed=seed
    )
    months = [condominium_month(config, i) for i in range(config.condominiums)]
    with tempfile.TemporaryDirectory(prefix="condo-fair-") as tmp:
        platform: LocalPlatform = start_platform(
            Path(tmp), database=database, limits=ProviderLimits(), api_workers=2,
            extra_env=ONE_TENANT_LOAD_ENV,  # the big tenant posts its month in one burst
        )  # fmt: skip
        try:
            platform.start_workers(profile.workers, profile.concurrency)
            seed_simulator(platform.simulator_url, months)
            suppliers = unique_suppliers(months)
            warm_supplier_cache(
                platform.database.url, cached_share(suppliers, profile.cached_fraction)
            )
            big_key, small_key = create_tenants(platform.database.url, 2)
            big = Tenant(platform.api_url, big_key, months[: profile.big_condominiums])
            small = Tenant(platform.api_url, small_key, months[profile.big_condominiums :])

            small.wait(small.submit_all(), profile.drain_seconds)  # warm: its suppliers cached
            alone_states = small.wait(small.submit_all(), profile.drain_seconds)
            alone = span(alone_states)

            started = time.monotonic()
            small_posted = len(small.posted_at)
            big_ids = big.submit_all(threads=4)
            behind_ids = small.submit_all()
            behind_states = small.wait(behind_ids, profile.drain_seconds)
            behind = span(behind_states)
            flood_waiting = sum(
                s["status"] not in ("SUCCESS", "FAILURE") for s in big.statuses(big_ids)
            )
            big_states = big.wait(big_ids, profile.drain_seconds)
            states = alone_states + behind_states + big_states
            succeeded = sum(s["status"] == "SUCCESS" for s in states)
        finally:
            platform.stop()
    checks = evaluate(alone, behind, flood_waiting, len(states), succeeded)
    load = arrivals_load(started, big.posted_at, small.posted_at[small_posted:])
    (out / "two-tenant-load.json").write_text(json.dumps(load), encoding="utf-8")
    return {
        "scenario": "two-tenant month-end",
        "profile": dataclasses.asdict(profile),
        "small_alone_seconds": round(alone, 3),
        "small_behind_flood_seconds": round(behind, 3),
        "ratio": round(behind / alone, 2) if alone else None,
        "bound_seconds": round(fairness_bound(alone), 3),
        "flood_batches": len(big_ids),
        "flood_waiting_when_small_finished": flood_waiting,
        "checks": slo.as_json(checks),
        "passed": slo.passed(checks),
        "rendered": slo.render(checks),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.fairness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci")
    parser.add_argument("--database", choices=("auto", "postgresql", "sqlite"), default="auto")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reports", type=Path, default=REPORTS)
    args = parser.parse_args(argv)
    out = args.reports / f"fairness-{args.profile}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    summary = run(PROFILES[args.profile], out, args.database, args.seed)
    summary["total_seconds"] = round(time.monotonic() - started, 1)
    (out / "gate.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(summary.pop("rendered"))
    print(
        f"small tenant: alone {summary['small_alone_seconds']} s, behind a flood of "
        f"{summary['flood_batches']} batches {summary['small_behind_flood_seconds']} s "
        f"(ratio {summary['ratio']}, bound {summary['bound_seconds']} s); "
        f"total {summary['total_seconds']} s; reports in {out}",
        flush=True,
    )
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
