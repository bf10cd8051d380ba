"""Celery worker: the app (worker.celery_app) and its tasks (worker.tasks)."""
