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


def table_counts(engine: Any) -> dict[str, int]:
    """Rows in every table: what a refused request must leave unchanged."""
    with engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in SQLModel.metadata.sorted_tables}
