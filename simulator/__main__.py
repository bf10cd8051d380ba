"""`python -m simulator --host 127.0.0.1 --port 8100`: run the provider simulator.

Start-up configuration: `--config` (JSON text, or @path to a JSON file) or the environment
variable SIMULATOR_CONFIG, then the single-setting flags, which win.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn

from simulator.app import create_app
from simulator.config import PROVIDERS, SimConfig


def build_config(args: argparse.Namespace) -> SimConfig:
    raw = args.config or os.environ.get("SIMULATOR_CONFIG") or "{}"
    if raw.startswith("@"):
        raw = Path(raw[1:]).read_text(encoding="utf-8")
    values: dict[str, Any] = json.loads(raw)
    for provider in PROVIDERS:
        rate = getattr(args, f"{provider}_rate")
        if rate is not None:
            values.setdefault(provider, {})["rate_per_minute"] = rate
        if args.latency_ms is not None:
            values.setdefault(provider, {})["latency_ms"] = args.latency_ms
        if args.window_seconds is not None:
            values.setdefault(provider, {})["window_seconds"] = args.window_seconds
    if args.reference_date:
        values["reference_date"] = args.reference_date
    return SimConfig.model_validate(values)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("SIMULATOR_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SIMULATOR_PORT", "8100")))
    parser.add_argument("--config", help="JSON object of SimConfig, or @file.json")
    for provider in PROVIDERS:
        parser.add_argument(
            f"--{provider.replace('_', '-')}-rate",
            dest=f"{provider}_rate",
            type=float,
            help=f"{provider}: accepted requests per minute (per endpoint)",
        )
    parser.add_argument("--latency-ms", type=float, help="added latency for every provider")
    parser.add_argument("--window-seconds", type=float, help="rate window for every provider")
    parser.add_argument("--reference-date", help="the 'today' of derived data (YYYY-MM-DD)")
    parser.add_argument("--log-level", default="warning")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    app = create_app(build_config(args))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
