"""`condo-audit ops`: see why the worker fleet has its size, pin it, record it, and plan it.

status / pause / resume / scale talk to the cluster with the official Kubernetes client;
record samples a live cluster during a load test; simulate replays a month-end peak through
KEDA and the HPA without any cluster (ops.scaling).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from audit.settings import Settings
from cli.main import CliError
from ops import scaling

DEFAULT_RELEASE = "condo-audit"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ops = subparsers.add_parser(
        "ops", help="operate the worker fleet: status, pause/resume, scale, record, simulate"
    )
    sub = ops.add_subparsers(dest="ops_command", required=True)

    cluster = argparse.ArgumentParser(add_help=False)
    group = cluster.add_argument_group("cluster")
    group.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    group.add_argument("--context", help="kubeconfig context (default: the current one)")
    group.add_argument("-n", "--namespace", help="namespace (default: the context's, or default)")
    group.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    group.add_argument(
        "--release",
        default=DEFAULT_RELEASE,
        help="Helm release; selects app.kubernetes.io/instance=RELEASE and "
        f"app.kubernetes.io/component=worker (default: {DEFAULT_RELEASE})",
    )
    backlog = argparse.ArgumentParser(add_help=False)
    rgroup = backlog.add_argument_group("queue")
    rgroup.add_argument("--redis-url", help="broker URL (default: Settings REDIS_URL)")
    rgroup.add_argument("--queue", help="Celery queue list (default: Settings AUDIT_QUEUE)")
    rgroup.add_argument("--unacked-key", default="unacked", help="kombu's unacked hash")

    status = sub.add_parser(
        "status",
        parents=[cluster, backlog],
        help="replicas, KEDA and HPA state, backlog parts (top tenants by backlog), formula "
        "value, dead letters",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument(
        "--top-tenants",
        type=_non_negative,
        default=5,
        help="tenants with the longest fair-queue backlogs to list (default 5)",
    )
    status.add_argument("--database-url", help="database for dead letters (Settings DATABASE_URL)")
    status.set_defaults(handler=_status)

    pause = sub.add_parser(
        "pause",
        parents=[cluster],
        help="pin the worker count: sets autoscaling.keda.sh/paused-replicas on the ScaledObject",
    )
    pause.add_argument("--replicas", type=_non_negative, required=True, help="pods to pin")
    pause.set_defaults(handler=_pause)

    resume = sub.add_parser("resume", parents=[cluster], help="hand the worker count back to KEDA")
    resume.set_defaults(handler=_resume)

    scale = sub.add_parser(
        "scale",
        parents=[cluster],
        help="set the worker Deployment's replicas (only when KEDA is off for the release)",
    )
    scale.add_argument("replicas", type=_non_negative)
    scale.set_defaults(handler=_scale)

    from cli import ops_record

    record = sub.add_parser(
        "record",
        parents=[cluster, backlog],
        help="sample replicas, backlog parts and provider budget use into CSV (and a PNG)",
    )
    ops_record.add_arguments(record)
    record.set_defaults(handler=ops_record.run)

    simulate = sub.add_parser(
        "simulate", help="replay a month-end peak through KEDA and the HPA (no cluster needed)"
    )
    _simulate_arguments(simulate)
    simulate.set_defaults(handler=_simulate)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _target(args: argparse.Namespace) -> Any:
    from ops import cluster

    return cluster.connect(
        kubeconfig=args.kubeconfig,
        context=args.context,
        namespace=args.namespace,
        in_cluster=args.in_cluster,
        release=args.release,
    )


# ----------------------------------------------------------------------------- status


def collect_status(args: argparse.Namespace) -> dict[str, Any]:
    """Everything `ops status` shows, as one JSON-ready dict; problems go under "errors"."""
    from ops import cluster as oc

    settings = Settings()
    target = _target(args)
    deployment = oc.worker_deployment(target)
    dep_name = deployment["metadata"]["name"]
    spec, st = deployment.get("spec") or {}, deployment.get("status") or {}
    out: dict[str, Any] = {
        "release": target.release,
        "namespace": target.namespace,
        "deployment": {
            "name": dep_name,
            "desired": spec.get("replicas"),
            "ready": st.get("readyReplicas", 0),
            "updated": st.get("updatedReplicas", 0),
            "available": st.get("availableReplicas", 0),
        },
        "scaledObject": None,
        "hpa": None,
        "errors": [],
    }
    so = oc.scaled_object(target, dep_name)
    keda = oc.Keda.parse(so) if so else None
    if keda:
        out["scaledObject"] = {
            "name": keda.name,
            "min": keda.min_replicas,
            "max": keda.max_replicas,
            "target": keda.target,
            "pollingInterval": keda.polling_interval,
            "formula": keda.formula,
            "triggers": keda.triggers,
            "pausedReplicas": keda.paused_replicas,
            "paused": keda.paused or keda.paused_replicas is not None,
        }
        hpa = oc.keda_hpa(target, so or {})
        out["hpa"] = (
            _hpa_summary(hpa) if hpa else {"name": f"keda-hpa-{keda.name}", "missing": True}
        )
        if keda.paused_replicas is not None:
            out["autoscaling"] = f"paused at {keda.paused_replicas} replicas"
        elif keda.paused:
            out["autoscaling"] = "paused at the current count"
        else:
            out["autoscaling"] = "KEDA"
    else:
        other = oc.hpas_for(target, dep_name)
        out["hpa"] = _hpa_summary(other[0]) if other else None
        out["autoscaling"] = (
            f"HPA {other[0]['metadata']['name']} (not KEDA)"
            if other
            else "off: no ScaledObject, replicas are set by hand (ops scale)"
        )
    out["queue"] = _queue_status(args, settings, keda, out["errors"])
    out["deadLetters"] = _dead_letters(args, settings, out["errors"])
    return out


def _hpa_summary(hpa: dict[str, Any]) -> dict[str, Any]:
    spec, st = hpa.get("spec") or {}, hpa.get("status") or {}
    metric: dict[str, Any] | None = None
    for current in st.get("currentMetrics") or []:
        ext = current.get("external") or {}
        value = ext.get("current") or {}
        metric = {
            "name": (ext.get("metric") or {}).get("name"),
            "averageValue": _quantity(value.get("averageValue")),
            "value": _quantity(value.get("value")),
        }
        break
    targets = [((m.get("external") or {}).get("target") or {}) for m in spec.get("metrics") or []]
    return {
        "name": hpa["metadata"]["name"],
        "min": spec.get("minReplicas"),
        "max": spec.get("maxReplicas"),
        "current": st.get("currentReplicas"),
        "desired": st.get("desiredReplicas"),
        "metric": metric,
        "target": _quantity(targets[0].get("averageValue") or targets[0].get("value"))
        if targets
        else None,
    }


def _quantity(raw: Any) -> float | None:
    if raw in (None, ""):
        return None
    from kubernetes.utils import parse_quantity  # type: ignore[import-untyped]

    return float(parse_quantity(str(raw)))


def _queue_status(
    args: argparse.Namespace, settings: Settings, keda: Any, errors: list[str]
) -> dict[str, Any]:
    import redis

    from ops import cluster as oc
    from worker.broker import read_backlog, tenant_backlogs

    url = args.redis_url or settings.redis_url
    queue = args.queue or settings.audit_queue
    try:
        r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        keys = tuple(keda.triggers.values()) if keda else ()
        parts = read_backlog(r, queue, unacked_key=args.unacked_key, extra_keys=keys)
        tenants = tenant_backlogs(r, queue, top=args.top_tenants)
    except (redis.RedisError, OSError) as exc:
        errors.append(f"Redis at {_safe_url(url)}: {exc}")
        return {"error": str(exc)}
    if keda and keda.formula and keda.triggers:
        values = {name: parts.key_lengths.get(key, 0) for name, key in keda.triggers.items()}
        formula = keda.formula
        try:
            value = oc.evaluate_formula(formula, values)
        except (ValueError, SyntaxError, ZeroDivisionError) as exc:
            errors.append(f"formula {formula!r} not evaluated here: {exc}")
            value = float(parts.outstanding)
    elif keda and keda.triggers:
        # Without scalingModifiers the HPA averages per trigger and takes the largest.
        formula = "max(" + ", ".join(keda.triggers) + ")"
        value = float(max(parts.key_lengths.get(k, 0) for k in keda.triggers.values()))
    else:
        formula = (
            f"{queue}:fair:pending + {queue} + {args.unacked_key} "
            "(the chart's formula; no ScaledObject)"
        )
        value = float(parts.outstanding)
    result: dict[str, Any] = {
        "queue": queue,
        "backlog": parts.backlogged,
        "backlogTenants": tenants.active_tenants,
        "topTenants": [{"tenant": t, "batches": n} for t, n in tenants.top],
        "queued": parts.queued,
        "inFlight": parts.in_flight,
        "scheduledRetries": parts.scheduled,
        "formula": formula,
        "formulaValue": value,
    }
    if keda:
        result["replicasForValue"] = keda.desired(value)
    return result


def _dead_letters(args: argparse.Namespace, settings: Settings, errors: list[str]) -> Any:
    url = args.database_url or settings.database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        errors.append(f"dead letters: no database file at {url} (set DATABASE_URL)")
        return {"error": "database file not found"}
    from sqlalchemy.exc import SQLAlchemyError

    from audit.deadletters import open_dead_letter_count

    try:
        return {"open": open_dead_letter_count(url)}
    except SQLAlchemyError as exc:
        reason = str(exc).splitlines()[0]
        errors.append(f"dead letters from {_safe_url(url)}: {reason}")
        return {"error": reason}


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _status(args: argparse.Namespace) -> int:
    data = collect_status(args)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(render_status(data))
    for error in data["errors"]:
        print(f"condo-audit: {error}", file=sys.stderr)
    return 1 if data["errors"] else 0


def render_status(d: dict[str, Any]) -> str:
    def v(x: Any) -> str:
        if x is None:
            return "-"
        if isinstance(x, float) and x.is_integer():
            return str(int(x))
        return str(x)

    dep = d["deployment"]
    rows: list[tuple[str, str]] = [
        ("release", f"{d['release']} (namespace {d['namespace']})"),
        ("worker deployment", dep["name"]),
        ("  replicas desired/ready", f"{v(dep['desired'])} / {v(dep['ready'])}"),
        ("autoscaling", d["autoscaling"]),
    ]
    so = d["scaledObject"]
    if so:
        rows += [
            ("scaledobject", so["name"]),
            ("  min / max", f"{so['min']} / {so['max']}"),
            ("  target per replica", v(so["target"])),
            ("  polling interval", f"{so['pollingInterval']} s"),
            (
                "  paused",
                "yes"
                + (
                    f" (paused-replicas {so['pausedReplicas']})"
                    if so["pausedReplicas"] is not None
                    else ""
                )
                if so["paused"]
                else "no",
            ),
        ]
    else:
        rows.append(("scaledobject", "none"))
    hpa = d["hpa"]
    if hpa and hpa.get("missing"):
        rows.append(("hpa", f"{hpa['name']} not found (KEDA has not made it yet?)"))
    elif hpa:
        metric = hpa.get("metric") or {}
        current = metric.get("averageValue", metric.get("value")) if metric else None
        rows += [
            ("hpa", hpa["name"]),
            ("  min / max", f"{v(hpa['min'])} / {v(hpa['max'])}"),
            ("  current / desired", f"{v(hpa['current'])} / {v(hpa['desired'])}"),
            ("  metric (avg per pod)", f"{v(current)} (target {v(hpa['target'])})"),
        ]
    q = d["queue"]
    if "error" in q:
        rows.append(("queue", f"unavailable: {q['error']}"))
    else:
        top = ", ".join(f"{t['tenant']} {t['batches']}" for t in q["topTenants"]) or "-"
        rows += [
            ("backlog", f"{q['backlog']} ({q['backlogTenants']} tenants waiting their turn)"),
            ("  top tenants by backlog", top),
            ("queued", f"{q['queued']} (list {q['queue']})"),
            ("in flight", v(q["inFlight"])),
            ("scheduled retries", v(q["scheduledRetries"])),
            ("formula", f"{q['formula']} = {v(q['formulaValue'])}"),
        ]
        if "replicasForValue" in q:
            rows.append(("  replicas for that value", v(q["replicasForValue"])))
    dl = d["deadLetters"]
    rows.append(
        (
            "dead letters (OPEN)",
            v(dl.get("open")) if "open" in dl else f"unavailable: {dl['error']}",
        )
    )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {val}" for k, val in rows)


# ----------------------------------------------------------------------------- pause/resume/scale


def _pause(args: argparse.Namespace) -> int:
    from ops import cluster as oc

    target = _target(args)
    dep = oc.worker_deployment(target)["metadata"]["name"]
    so = oc.scaled_object(target, dep)
    if so is None:
        raise CliError(
            f"no ScaledObject scales {dep} in namespace {target.namespace!r}: autoscaling is off "
            f"for release {target.release!r} (keda.enabled=false, or KEDA is not installed). "
            f"Set the count with `condo-audit ops scale {args.replicas}`"
        )
    name = so["metadata"]["name"]
    oc.patch_annotations(target, name, {oc.PAUSED_REPLICAS: str(args.replicas)})
    print(
        f"paused ScaledObject {name}: KEDA sets {dep} to {args.replicas} replicas and stops "
        "autoscaling until `condo-audit ops resume`"
    )
    return 0


def _resume(args: argparse.Namespace) -> int:
    from ops import cluster as oc

    target = _target(args)
    dep = oc.worker_deployment(target)["metadata"]["name"]
    so = oc.scaled_object(target, dep)
    if so is None:
        raise CliError(
            f"no ScaledObject scales {dep} in namespace {target.namespace!r}: there is no "
            "autoscaling to resume (keda.enabled=false, or KEDA is not installed)"
        )
    name = so["metadata"]["name"]
    annotations = (so.get("metadata") or {}).get("annotations") or {}
    if oc.PAUSED_REPLICAS not in annotations and oc.PAUSED not in annotations:
        print(f"ScaledObject {name} is not paused; nothing to do")
        return 0
    oc.patch_annotations(target, name, {oc.PAUSED_REPLICAS: None, oc.PAUSED: None})
    print(f"resumed ScaledObject {name}: KEDA scales {dep} on the backlog again")
    return 0


def _scale(args: argparse.Namespace) -> int:
    from ops import cluster as oc

    target = _target(args)
    dep = oc.worker_deployment(target)["metadata"]["name"]
    so = oc.scaled_object(target, dep)
    if so is not None:
        raise CliError(
            f"{dep} is autoscaled by ScaledObject {so['metadata']['name']}: its HPA would undo "
            f"a manual scale. Pin the count with `condo-audit ops pause --replicas "
            f"{args.replicas}` and undo it with `condo-audit ops resume`"
        )
    hpas = oc.hpas_for(target, dep)
    if hpas:
        raise CliError(
            f"{dep} is autoscaled by HPA {hpas[0]['metadata']['name']}: it would undo a manual "
            "scale. Change that HPA's minReplicas/maxReplicas instead"
        )
    oc.scale_deployment(target, dep, args.replicas)
    print(f"scaled {dep} to {args.replicas} replicas")
    return 0


# ----------------------------------------------------------------------------- simulate


def _simulate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--values",
        action="append",
        type=Path,
        default=[],
        help="values file layered on the chart's values.yaml, like helm -f (repeatable)",
    )
    p.add_argument(
        "--chart",
        type=Path,
        default=scaling.CHART_VALUES.parent,
        help="chart directory whose values.yaml gives the defaults",
    )
    load = p.add_argument_group("load")
    load.add_argument("--condominiums", type=int, default=10_000)
    load.add_argument("--batches-per-condominium", type=int, default=1)
    load.add_argument(
        "--window-minutes",
        type=float,
        default=60.0,
        help="month-end window in which every condominium submits",
    )
    load.add_argument(
        "--shape",
        choices=["month-end", "uniform", "burst"],
        default="month-end",
        help="month-end: ramps up to 2x average mid-window and down again",
    )
    load.add_argument(
        "--load",
        dest="load_file",
        type=Path,
        help='per-tenant arrivals, JSON {"tenants": {name: [offset seconds, ...]}} (as '
        "`python -m loadtests.fairness` writes): replaces the options above",
    )
    k = p.add_argument_group("autoscaling (default: the chart's values)")
    k.add_argument("--min-replicas", type=int)
    k.add_argument("--max-replicas", type=int)
    k.add_argument("--target", type=float, help="outstanding batches per replica")
    k.add_argument("--polling-interval", type=int)
    k.add_argument("--sync-period", type=int, help="HPA sync period, seconds (15)")
    k.add_argument("--tolerance", type=float, help="HPA tolerance (0.1)")
    k.add_argument("--scale-down-window", type=int, help="scale-down stabilization, seconds")
    k.add_argument(
        "--cached-metrics",
        action="store_true",
        help="HPA sees KEDA's last poll (useCachedMetrics) instead of a live read",
    )
    w = p.add_argument_group("workers")
    w.add_argument("--concurrency", type=int, help="Celery processes per pod")
    rate = w.add_mutually_exclusive_group()
    rate.add_argument("--task-seconds", type=float, help="seconds one batch holds a process")
    rate.add_argument("--pod-rate", type=float, help="batches per second one pod completes")
    w.add_argument("--pod-startup", type=float, help="seconds from pod creation to ready")
    pr = p.add_argument_group("provider budgets (0 = unlimited)")
    pr.add_argument("--cnpj-per-minute", type=float)
    pr.add_argument(
        "--cnpj-lookups-per-batch", type=float, help="uncached supplier lookups one batch needs"
    )
    pr.add_argument("--pluggy-per-minute", type=float)
    pr.add_argument("--pluggy-requests-per-batch", type=float)
    out = p.add_argument_group("output")
    out.add_argument("--png", type=Path, help="write replicas and backlog over time")
    out.add_argument("--csv", type=Path, help="write the per-second time series")
    out.add_argument("--json", action="store_true", help="print the summary as JSON")
    out.add_argument("--max-hours", type=float, default=168.0, help="stop simulating after")


def build_scenario(args: argparse.Namespace) -> scaling.Scenario:
    files: list[Path] = []
    chart_values = args.chart / "values.yaml"
    if chart_values.exists():
        files.append(chart_values)
    else:
        print(f"condo-audit: no {chart_values}; the chart's defaults are not used", file=sys.stderr)
    for f in args.values:
        if not f.exists():
            raise CliError(f"values file not found: {f}")
        if f.resolve() != chart_values.resolve():
            files.append(f)
    if files:
        try:
            values = scaling.load_values(files)
        except (ValueError, OSError) as exc:
            raise CliError(str(exc)) from exc
        scenario = scaling.scenario_from_values(values, " + ".join(str(f) for f in files))
    else:
        scenario = scaling.Scenario()
    a, w, pv = scenario.autoscaling, scenario.workers, scenario.providers

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    a = replace(
        a,
        min_replicas=pick(args.min_replicas, a.min_replicas),
        max_replicas=pick(args.max_replicas, a.max_replicas),
        target_per_replica=pick(args.target, a.target_per_replica),
        polling_interval_seconds=pick(args.polling_interval, a.polling_interval_seconds),
        sync_seconds=pick(args.sync_period, a.sync_seconds),
        tolerance=pick(args.tolerance, a.tolerance),
        use_cached_metrics=args.cached_metrics or a.use_cached_metrics,
        scale_down=replace(
            a.scale_down,
            stabilization_seconds=pick(args.scale_down_window, a.scale_down.stabilization_seconds),
        ),
    )
    concurrency = pick(args.concurrency, w.concurrency)
    task_seconds = w.task_seconds
    if args.task_seconds is not None:
        task_seconds = args.task_seconds
    elif args.pod_rate is not None:
        task_seconds = concurrency / args.pod_rate
    w = replace(
        w,
        concurrency=concurrency,
        task_seconds=task_seconds,
        pod_startup_seconds=pick(args.pod_startup, w.pod_startup_seconds),
    )

    def budget(value: float | None, default: float | None) -> float | None:
        if value is None:
            return default
        return None if value <= 0 else value

    pv = replace(
        pv,
        cnpj_per_minute=budget(args.cnpj_per_minute, pv.cnpj_per_minute),
        cnpj_lookups_per_batch=pick(args.cnpj_lookups_per_batch, pv.cnpj_lookups_per_batch),
        pluggy_per_minute=budget(args.pluggy_per_minute, pv.pluggy_per_minute),
        pluggy_requests_per_batch=pick(
            args.pluggy_requests_per_batch, pv.pluggy_requests_per_batch
        ),
    )
    load = scaling.Load(
        condominiums=args.condominiums,
        batches_per_condominium=args.batches_per_condominium,
        window_minutes=args.window_minutes,
        shape=args.shape,
    )
    if getattr(args, "load_file", None) is not None:
        try:
            load = scaling.Load.from_file(args.load_file)
        except (OSError, ValueError) as exc:
            raise CliError(f"--load: {exc}") from None
    if a.min_replicas > a.max_replicas or a.max_replicas < 1:
        raise CliError(f"replicas: min {a.min_replicas} > max {a.max_replicas}")
    if w.task_seconds <= 0 or w.concurrency <= 0 or a.target_per_replica <= 0:
        raise CliError("task seconds, concurrency and target must be positive")
    return scaling.Scenario(a, w, pv, load, scenario.source)


def _simulate(args: argparse.Namespace) -> int:
    scenario = build_scenario(args)
    result = scaling.simulate(scenario, max_seconds=math.ceil(args.max_hours * 3600))
    if args.json:
        print(
            json.dumps(
                {"summary": asdict(result.summary), "parameters": scaling.describe(scenario)},
                indent=2,
            )
        )
    else:
        print("\n".join(scaling.describe(scenario)))
        print()
        print("\n".join(result.summary.lines()))
    if args.csv:
        scaling.write_csv(result.rows(), args.csv)
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.png:
        s = result.summary
        title = (
            f"{scenario.load.condominiums:,} condominiums, {scenario.load.shape} window "
            f"{scenario.load.window_minutes:g} min: peak {s.peak_replicas} pods, drained at "
            + ("-" if s.drain_seconds is None else f"{s.drain_seconds / 60:.1f} min")
        )
        scaling.plot(result.rows(), args.png, title, scaling.describe(scenario))
        print(f"wrote {args.png}", file=sys.stderr)
    return 0
