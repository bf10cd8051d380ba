"""Per-process resources of a worker: built lazily after fork, never shared across processes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from audit.db import make_engine
from audit.leases import BatchLeases
from audit.pipeline import BatchAuditor
from audit.providers.factory import build_providers
from audit.retry import RetryPolicy
from audit.settings import Settings, get_settings
from audit.suppliers import SupplierDirectory


@dataclass(frozen=True)
class WorkerRuntime:
    settings: Settings
    sessions: sessionmaker[Session]
    redis: Redis
    auditor: BatchAuditor
    retry_policy: RetryPolicy
    leases: BatchLeases


@lru_cache(maxsize=4)
def _runtime_for(pid: int) -> WorkerRuntime:
    settings = get_settings()
    # No pre-ping: a batch's two transactions would pay a round trip each, and a connection
    # the server dropped fails the task into its uncounted database retry (worker/tasks.py),
    # after which the pool has replaced it.
    sessions = sessionmaker(
        make_engine(settings.database_url, pre_ping=False), expire_on_commit=False
    )
    redis = Redis.from_url(settings.redis_url)
    providers = build_providers(settings, redis)
    directory = SupplierDirectory.from_settings(settings, sessions, providers.cnpj, redis)
    return WorkerRuntime(
        settings=settings,
        sessions=sessions,
        redis=redis,
        auditor=BatchAuditor(sessions, directory, providers.transactions),
        retry_policy=RetryPolicy(
            max_attempts=settings.max_attempts,
            base_seconds=settings.retry_backoff_base_seconds,
            max_seconds=settings.retry_backoff_max_seconds,
            jitter_ratio=settings.retry_jitter_ratio,
        ),
        leases=BatchLeases(redis, settings.batch_lease_seconds),
    )


def runtime() -> WorkerRuntime:
    """The current process's runtime (a forked child builds its own)."""
    return _runtime_for(os.getpid())
