"""The scaling simulator against cases worked out by hand, and its command.

Each case uses round numbers so the expected replicas and times follow from the rules the
simulator models (see ops/scaling.py): KEDA hands the HPA the outstanding work; the HPA
proposes ceil(outstanding / target) outside a 10% tolerance, keeps the highest recommendation
of the scale-down window, and moves no faster than its policies allow.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from cli import ops
from cli.main import CliError
from ops import scaling
from ops.scaling import (
    Autoscaling,
    Load,
    Providers,
    ScalingPolicy,
    ScalingRules,
    Scenario,
    Workers,
    simulate,
)

UNLIMITED = Providers(cnpj_per_minute=None, pluggy_per_minute=None)


def replicas_at(result: scaling.Result, t: int) -> int:
    return result.samples[t].desired_replicas


def first_time(result: scaling.Result, replicas: int) -> int:
    return next(s.t_seconds for s in result.samples if s.desired_replicas == replicas)


def test_step_load_scales_by_the_formula_within_the_scale_up_policy() -> None:
    """3 batches/s for 10 minutes, each batch holding a slot 10 s; target 5 per pod.

    By hand: from t = 10 s on, 30 batches are in flight (Little's law: 3/s x 10 s), so the
    formula asks for ceil(30 / 5) = 6 pods. At the 15 s sync the default policies allow
    max(1 + 4 pods, 1 x 200%) = 5; at 30 s, 6. Slots never bind (100 per pod).
    """
    scenario = Scenario(
        Autoscaling(
            min_replicas=1,
            max_replicas=20,
            target_per_replica=5,
            polling_interval_seconds=15,
            sync_seconds=15,
        ),
        Workers(concurrency=100, task_seconds=10, pod_startup_seconds=0),
        UNLIMITED,
        Load(condominiums=1800, window_minutes=10, shape="uniform"),
    )
    result = simulate(scenario)
    assert result.samples[15].outstanding == pytest.approx(30)
    assert [replicas_at(result, t) for t in (0, 14, 15, 29, 30, 300, 599)] == [1, 1, 5, 5, 6, 6, 6]
    assert result.summary.peak_replicas == 6
    assert result.summary.peak_replicas_at_seconds == 30
    # The last batch arrives at 599 s and finishes 10 s later.
    assert result.summary.drain_seconds == 609
    assert result.samples[-1].completed_total == pytest.approx(1800)


def test_scale_down_waits_for_the_stabilization_window() -> None:
    """Same step. The last 6-pod recommendation is made at the 600 s sync (27 in flight:
    27 / (6 x 5) = 0.9, inside the tolerance, so 'stay at 6'). Later syncs recommend 1, but the
    HPA keeps the highest recommendation of the last 300 s, so the fleet drops to the minimum
    at 900 s (the default scale-down policy, 100% per 15 s, removes all 5 at once)."""
    scenario = Scenario(
        Autoscaling(
            min_replicas=1,
            max_replicas=20,
            target_per_replica=5,
            polling_interval_seconds=15,
            sync_seconds=15,
        ),
        Workers(concurrency=100, task_seconds=10, pod_startup_seconds=0),
        UNLIMITED,
        Load(condominiums=1800, window_minutes=10, shape="uniform"),
    )
    result = simulate(scenario)
    assert replicas_at(result, 885) == 6
    assert replicas_at(result, 899) == 6
    assert replicas_at(result, 900) == 1
    assert result.summary.back_to_min_seconds == 900


def test_scale_down_follows_the_charts_pods_per_period_policy() -> None:
    """400 batches at once, 10 s each, target 10, 120 s window, at most 2 pods removed per 60 s.

    By hand: at 0 s the formula asks ceil(400 / 10) = 40, the scale-up policy allows 1 + 4 = 5.
    All work is done at 11 s. The 40 recommended at 0 s leaves the window at 120 s: 5 -> 3; the
    next 2 may go once that removal is 60 s old, at 180 s: 3 -> 1 (the minimum).
    """
    scenario = Scenario(
        Autoscaling(
            min_replicas=1,
            max_replicas=20,
            target_per_replica=10,
            scale_down=ScalingRules(120, (ScalingPolicy("Pods", 2, 60),), "Min"),
        ),
        Workers(concurrency=100, task_seconds=10, pod_startup_seconds=0),
        UNLIMITED,
        Load(condominiums=400, shape="burst"),
    )
    result = simulate(scenario)
    assert result.summary.drain_seconds == 11
    assert [replicas_at(result, t) for t in (0, 119, 120, 179, 180)] == [5, 5, 3, 3, 1]
    assert result.summary.back_to_min_seconds == 180


@pytest.mark.parametrize("max_replicas", [10, 50])
def test_a_burst_past_the_provider_budget_drains_at_the_provider_rate(max_replicas: int) -> None:
    """1,000 batches at once, 2 uncached CNPJ lookups each, a budget of 60 lookups a minute.

    By hand: the fleet may start 1 lookup/s / 2 = 0.5 batches a second, so the last of the
    1,000 starts at 1,999 s and finishes 10 s later: 2,009 s, whatever the number of pods.
    The backlog still sits in Redis, so KEDA scales to the maximum all the same.
    """
    scenario = Scenario(
        Autoscaling(min_replicas=1, max_replicas=max_replicas, target_per_replica=4),
        Workers(concurrency=4, task_seconds=10, pod_startup_seconds=0),
        Providers(cnpj_per_minute=60, cnpj_lookups_per_batch=2, pluggy_per_minute=None),
        Load(condominiums=1000, shape="burst"),
    )
    result = simulate(scenario)
    assert result.summary.drain_seconds == 2009
    assert result.summary.peak_replicas == max_replicas
    assert result.summary.limiting_factor == "provider budget (CNPJ lookups)"
    # Completions run at 0.5 batches/s from the first finish to the last.
    done = [s.completions for s in result.samples[10:2010]]
    assert min(done) == pytest.approx(0.5)
    assert max(done) == pytest.approx(0.5)
    assert max(s.cnpj_per_minute_used for s in result.samples) == pytest.approx(60)


def test_the_tolerance_keeps_the_fleet_when_the_ratio_is_within_ten_percent() -> None:
    """2.1 batches/s, 10 s each: 21 outstanding on 4 pods with target 5 is a ratio of 1.05.

    ceil(21 / 5) would be 5 pods, but |1.05 - 1| <= 0.1, so the HPA keeps 4; with a tolerance
    of 0.01 it scales to 5.
    """

    def run(tolerance: float) -> scaling.Result:
        return simulate(
            Scenario(
                Autoscaling(
                    min_replicas=4, max_replicas=20, target_per_replica=5, tolerance=tolerance
                ),
                Workers(concurrency=100, task_seconds=10, pod_startup_seconds=0),
                UNLIMITED,
                Load(condominiums=1260, window_minutes=10, shape="uniform"),
            )
        )

    assert run(0.1).summary.peak_replicas == 4
    strict = run(0.01)
    assert strict.samples[300].outstanding == pytest.approx(21)
    assert strict.summary.peak_replicas == 5


def test_pod_start_up_delays_capacity() -> None:
    """A new pod serves only pod_startup_seconds after the HPA creates it."""
    scenario = Scenario(
        Autoscaling(min_replicas=1, max_replicas=5, target_per_replica=1),
        Workers(concurrency=1, task_seconds=1, pod_startup_seconds=45),
        UNLIMITED,
        Load(condominiums=100, shape="burst"),
    )
    result = simulate(scenario)
    assert replicas_at(result, 0) == 5
    assert result.samples[44].ready_replicas == 1
    assert result.samples[45].ready_replicas == 5
    # 1 batch/s on one pod for 45 s (0..44), then 5/s: 55 left take 11 s (45..55), done at 56.
    assert result.summary.drain_seconds == 56


def test_month_end_load_submits_exactly_the_total() -> None:
    load = Load(condominiums=10_000, window_minutes=60, shape="month-end")
    arrivals = [load.arrivals(t) for t in range(load.last_arrival_second + 1)]
    assert sum(arrivals) == pytest.approx(10_000)
    assert max(arrivals) == pytest.approx(2 * 10_000 / 3600, rel=1e-3)  # peak = 2x average


CHART_VALUES = """
worker: {concurrency: 4, replicas: 2}
keda:
  enabled: true
  minReplicaCount: 1
  maxReplicaCount: 20
  pollingInterval: 15
  cooldownPeriod: 300
  tasksPerSlot: 1
  activationTarget: 0
  scaleDown: {stabilizationWindowSeconds: 300, pods: 2, periodSeconds: 60}
  scaleUp: {stabilizationWindowSeconds: 0, pods: 4, periodSeconds: 30}
"""


def test_parameters_come_from_the_charts_values() -> None:
    scenario = scaling.scenario_from_values(yaml.safe_load(CHART_VALUES), "test")
    a = scenario.autoscaling
    assert (a.min_replicas, a.max_replicas, a.target_per_replica) == (1, 20, 4)
    assert a.polling_interval_seconds == 15
    assert a.scale_down == ScalingRules(300, (ScalingPolicy("Pods", 2, 60),), "Min")
    assert a.scale_up == ScalingRules(0, (ScalingPolicy("Pods", 4, 30),), "Max")
    assert scenario.workers.concurrency == 4


def run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="condo-audit")
    ops.register(parser.add_subparsers(dest="command", required=True))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        args = parser.parse_args(list(argv))
        try:
            code = args.handler(args)
        except CliError as exc:
            print(f"condo-audit: {exc}", file=err)
            code = 2
    return code, out.getvalue(), err.getvalue()


def summary_value(out: str, label: str) -> str:
    line = next(x for x in out.splitlines() if x.startswith(label))
    return line[len(label) :].strip()


@pytest.mark.slow  # two full simulations of the production values
def test_changing_values_yaml_changes_the_prediction(tmp_path: Path) -> None:
    """A provider-bound peak runs into maxReplicaCount; a values file with another max shows it."""
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "values.yaml").write_text(CHART_VALUES)
    common = [
        "ops",
        "simulate",
        "--chart",
        str(chart),
        "--condominiums",
        "10000",
        "--window-minutes",
        "30",
        "--pluggy-per-minute",
        "360",
    ]
    code, out, err = run_cli(common)
    assert code == 0, err
    assert summary_value(out, "peak replicas").startswith("20 ")
    override = tmp_path / "more.yaml"
    override.write_text("keda: {maxReplicaCount: 7}\n")
    code, out7, err = run_cli([*common, "--values", str(override)])
    assert code == 0, err
    assert summary_value(out7, "peak replicas").startswith("7 ")
    assert f"parameters from {chart / 'values.yaml'} + {override}" in out7
    # The provider sets the pace, so the drain time is the same with fewer pods.
    assert summary_value(out7, "time to drain") == summary_value(out, "time to drain")


def test_simulate_writes_csv_and_png(tmp_path: Path) -> None:
    csv_path, png_path = tmp_path / "s.csv", tmp_path / "s.png"
    code, out, err = run_cli(
        [
            "ops",
            "simulate",
            "--chart",
            str(tmp_path),
            "--condominiums",
            "500",
            "--window-minutes",
            "5",
            "--csv",
            str(csv_path),
            "--png",
            str(png_path),
        ]
    )
    assert code == 0, err
    assert "parameters from built-in defaults" in out
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == scaling.CSV_COLUMNS
    assert sum(float(r["arrivals"]) for r in rows) == pytest.approx(500)
    assert float(rows[-1]["completed_total"]) == pytest.approx(500)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(png_path).shape[:2]
    assert (width, height) == (1100, 1100)  # three panels: 10 x 10 in at 110 dpi


def test_simulate_rejects_impossible_settings(tmp_path: Path) -> None:
    code, _out, err = run_cli(
        ["ops", "simulate", "--chart", str(tmp_path), "--min-replicas", "5", "--max-replicas", "2"]
    )
    assert code == 2
    assert "min 5 > max 2" in err


def test_a_two_tenant_load_replays_with_the_small_tenant_served_in_its_share(
    tmp_path: Path,
) -> None:
    """The big tenant posts 600 batches at once, the small one 8 a few seconds later: the small
    one's last batch is done within a few task times, the big one's only when all drain."""
    load_file = tmp_path / "two-tenant-load.json"
    load_file.write_text(
        '{"tenants": {"big": [' + ",".join(["0.5"] * 600) + '], "small": [5, 5, 5, 5, 5, 5, 5, 5]}}'
    )
    code, out, err = run_cli(
        [
            "ops", "simulate", "--chart", str(tmp_path), "--load", str(load_file),
            "--min-replicas", "2", "--max-replicas", "2", "--concurrency", "4",
            "--task-seconds", "2", "--cnpj-per-minute", "0", "--pluggy-per-minute", "0",
        ]
    )  # fmt: skip
    assert code == 0, err
    assert "tenant big 600 batches, tenant small 8 batches" in out
    small = int(summary_value(out, "tenant small").rsplit("(", 1)[1].split()[0])
    big = int(summary_value(out, "tenant big").rsplit("(", 1)[1].split()[0])
    # 8 slots, half of them for the small tenant while both wait: arriving at 5 s, its first
    # four start when slots free at 6 s and the next four at 8 s, all done at 10 s.
    assert small == 10
    assert 150 <= big <= 154  # 608 batches / (8 slots / 2 s) = 152 s of work


def test_a_load_file_that_names_no_tenant_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"tenants": {"a": [-1]}}')
    code, _out, err = run_cli(["ops", "simulate", "--chart", str(tmp_path), "--load", str(bad)])
    assert code == 2
    assert "--load:" in err
    assert "offsets >= 0" in err
