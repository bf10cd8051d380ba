"""A file the worker touches on a timer: the liveness probe checks its age."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import bootsteps

from audit.settings import get_settings


def touch(path: str) -> None:
    Path(path).touch()


class HeartbeatFile(bootsteps.StartStopStep):  # type: ignore[misc]
    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.timer_ref: Any = None

    def start(self, worker: Any) -> None:
        settings = get_settings()
        touch(settings.worker_heartbeat_file)
        self.timer_ref = worker.timer.call_repeatedly(
            settings.worker_heartbeat_seconds, touch, (settings.worker_heartbeat_file,)
        )

    def stop(self, worker: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
