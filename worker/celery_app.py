"""The Celery app: the one place its configuration lives.

The API imports this module to enqueue by task name; it never imports the tasks.
"""

from __future__ import annotations

from celery import Celery

from audit.settings import Settings, get_settings

PROCESS_BATCH_TASK = "audit.process_batch_expenses"
DELIVER_WEBHOOK_TASK = "webhooks.deliver"


def celery_config(settings: Settings) -> dict[str, object]:
    """Celery settings; the comments say why each deviates from the default."""
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "America/Sao_Paulo",
        "enable_utc": True,
        # All audit work goes to one named queue, the list KEDA reads.
        "task_default_queue": settings.audit_queue,
        # Webhook deliveries have a queue of their own, so a slow receiver never holds a
        # process that audits wait for (its workers run apart; see worker/webhook_tasks.py).
        "task_routes": {
            "audit.*": {"queue": settings.audit_queue},
            "webhooks.*": {"queue": settings.webhook_queue},
        },
        "task_create_missing_queues": True,
        # A killed or scaled-in worker must not lose its message.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # The platform's tasks store no result (status lives in PostgreSQL); the backend
        # serves a task that asks for one, such as the benchmark's reference task.
        "result_expires": 24 * 3600,
        "broker_connection_retry_on_startup": True,
        # A worker whose Redis restarts reconnects by itself, however long Redis is away.
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_transport_options": {
            # Longer than the longest retry countdown, or the message is redelivered early.
            "visibility_timeout": settings.broker_visibility_timeout_seconds,
            # Sweep the unacked index for messages past their visibility timeout every 10 s
            # (kombu's default scans only every 10th sweep, ~100 s): a hard-killed worker's
            # messages return one sweep after the timeout.
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            # A sweep holds a fleet-wide mutex in Redis for the milliseconds it takes; a worker
            # killed inside it (OOM, SIGKILL) left kombu's default 300 s expiry, during which
            # no worker brought any message back (seen in the SIGKILL fault test: a batch
            # PENDING past its 240 s). 15 s bounds that; an overlap of two sweeps is harmless,
            # each message is restored in a transaction watching the unacked hash.
            "unacked_mutex_expire": 15,
            # One list per queue: priority sub-lists would hide work from KEDA's trigger.
            "priority_steps": [0],
            "queue_order_strategy": "priority",
            # A Redis that does not answer fails a publish fast (the API answers 503).
            "socket_connect_timeout": 2.0,
        },
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


def create_celery_app(settings: Settings | None = None) -> Celery:
    from worker import telemetry
    from worker.dispatch import FairDispatcher
    from worker.heartbeat import HeartbeatFile
    from worker.recovery import BatchRecovery
    from worker.webhook_dispatch import WebhookDispatcher

    app = Celery("condo_audit", include=["worker.tasks", "worker.webhook_tasks"])
    app.conf.update(celery_config(settings or get_settings()))
    app.steps["worker"].add(HeartbeatFile)
    app.steps["worker"].add(WebhookDispatcher)
    app.steps["worker"].add(BatchRecovery)
    app.steps["worker"].add(FairDispatcher)
    telemetry.install(app)
    return app


app = create_celery_app()
