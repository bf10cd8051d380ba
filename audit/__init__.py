"""condo-audit's domain: CNPJ, models, rules, providers. Imports neither FastAPI nor Celery."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("condo-audit")  # the one place: pyproject.toml, via the metadata
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
