"""condo-audit's domain: CNPJ, models, rules, providers. Imports neither FastAPI nor Celery."""
