"""The FastAPI application: `uvicorn api.main:app`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api import telemetry
from api.routes import batches, condominiums, dead_letters, findings, health
from audit.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="condo-audit",
        version="0.1.0",
        description="Audits condominium expenses: submit a batch, follow its task, read findings.",
    )
    app.state.settings = settings or get_settings()
    max_bytes = app.state.settings.max_request_bytes

    @app.middleware("http")
    async def limit_body_size(request: Request, call_next):  # type: ignore[no-untyped-def]
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_bytes):
            return JSONResponse(
                {"detail": f"request body larger than {max_bytes} bytes"}, status_code=413
            )
        return await call_next(request)

    for module in (health, condominiums, batches, findings, dead_letters):
        app.include_router(module.router)
    telemetry.install(app, app.state.settings)
    return app


app = create_app()
