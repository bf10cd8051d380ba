"""Send text PostgreSQL cannot store (NUL) in every path parameter and every query parameter
of every operation in a live API's OpenAPI document; report any 5xx.

    python scripts/probe_unstorable.py http://127.0.0.1:8000 <api-key>

Used by scripts/schemathesis.sh and tests/test_reliability_api.py (against PostgreSQL).
"""

from __future__ import annotations

import re
import sys
import uuid
from typing import Any

import httpx

PROBES = ("%00", "a%00b", "%00" * 40)


def requests_to_try(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(method, path, params) for every operation: a NUL in each path parameter in turn
    (the others a well-formed id), and one in each query parameter."""
    tried: list[tuple[str, str, dict[str, str]]] = []
    well_formed = str(uuid.uuid4())
    for template, operations in schema["paths"].items():
        names = re.findall(r"{(\w+)}", template)
        for method, operation in operations.items():
            queries = [p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"]
            for probe in PROBES:
                for name in names:
                    path = template
                    for other in names:
                        path = path.replace(f"{{{other}}}", probe if other == name else well_formed)
                    tried.append((method.upper(), path, {}))
                base = template
                for other in names:
                    base = base.replace(f"{{{other}}}", well_formed)
                for query in queries:
                    tried.append((method.upper(), f"{base}?{query}={probe}", {}))
    return tried


def probe(base_url: str, api_key: str) -> tuple[int, list[str]]:
    """How many requests were sent, and the ones answered 5xx (or not as JSON)."""
    failures: list[str] = []
    with httpx.Client(base_url=base_url, headers={"X-API-Key": api_key}, timeout=10) as client:
        schema = client.get("/openapi.json").json()
        tried = requests_to_try(schema)
        for method, path, _ in tried:
            # A raw target: httpx would re-encode a NUL typed as a character.
            response = client.request(method, httpx.URL(base_url + path))
            if response.status_code >= 500:
                failures.append(f"{method} {path} -> {response.status_code}")
    return len(tried), failures


def main() -> int:
    sent, failures = probe(sys.argv[1], sys.argv[2])
    for failure in failures:
        print(failure)
    print(f"NUL probe: {sent} requests, {len(failures)} answered 5xx")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
