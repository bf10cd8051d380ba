"""Tracing, metrics and logging helpers shared by the API and the worker.

The domain records spans and metrics through opentelemetry-api and prometheus_client only;
which exporter runs (if any) is decided by the process that starts, from OTEL_* variables.
"""
