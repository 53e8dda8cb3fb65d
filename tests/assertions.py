"""Assertions and database look-ups shared by the tests (one implementation each)."""

from typing import Any

from sqlalchemy import func, select
from sqlmodel import SQLModel

import service.tables  # noqa: F401  (every table in SQLModel.metadata)
from fhir_mappings import fhir


def assert_outcome(response: Any, status: int, code: str | None, expression: str | None, *,
                   severity: str = "error") -> dict:
    """The response is a valid OperationOutcome with `status`, whose first issue has `severity`, diagnostics, and
    (when given) `code` and `expression`."""
    assert response.status_code == status, response.text[:2000]
    assert response.headers["content-type"].startswith("application/fhir+json"), response.headers
    body = response.json()
    fhir.OperationOutcome.model_validate(body)
    first = body["issue"][0]
    assert first["severity"] == severity, body
    assert first.get("diagnostics"), body
    if code is not None:
        assert first["code"] == code, body
    if expression is not None:
        assert first.get("expression"), body
        assert first["expression"][0] == expression, body
    return body


def rejected(response: Any, status: int, expression: str, code: str | None = None) -> dict:
    """A refusal with `status` naming `expression` (and `code` when given)."""
    return assert_outcome(response, status, code, expression)


#: the audit trail: a refused request is recorded there (service/audit), so it is not counted as a write
AUDIT_TABLES = ("audit_event", "audit_entity")


def table_counts(engine: Any) -> dict[str, int]:
    """Rows in every table but the audit trail's (a refused request is audited): what a refused request must
    leave unchanged."""
    counts = {}
    with engine.connect() as conn:
        for t in SQLModel.metadata.sorted_tables:
            if t.name in AUDIT_TABLES:
                continue
            stmt = select(func.count()).select_from(t)
            if "resource_type" in t.c and t.name in ("resource", "resource_version"):
                stmt = stmt.where(t.c.resource_type != "AuditEvent")
            counts[t.name] = conn.execute(stmt).scalar_one()
    return counts


def walk_pages(client: Any, url: str, relation: str = "next") -> list[list[str]]:
    """Follow a searchset's `relation` links (next, previous) from `url`: the ids of each page's matches."""
    pages = []
    while url:
        body = client.get(url).json()
        pages.append([e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"])
        url = next((link["url"] for link in body["link"] if link["relation"] == relation), None)
    return pages


def wait_until_healthy(base: str, proc: Any, timeout_s: float = 60.0) -> None:
    """Wait for a service started as a subprocess (`proc`, a Popen) to answer `GET {base}/healthz` with 200; fail
    with its output (when it was captured) if it exits first, or after `timeout_s`."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise AssertionError(f"the service exited at start-up: {output[-4000:]}")
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.2)
