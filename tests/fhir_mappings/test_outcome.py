"""OperationOutcome issues: their JSON, their element paths, and how they move inside a Bundle entry."""

import pytest

from fhir_mappings import fhir
from fhir_mappings.outcome import fhirpath, issue, outcome
from tests.data import cases


@pytest.mark.parametrize("case", cases("outcome", "prefixed"))
def test_issue_prefixed(case):
    moved = issue("invalid", "x", *case["input"]["expression"]).prefixed(case["input"]["prefix"])
    assert list(moved.expression) == case["expect"]
    assert (moved.code, moved.diagnostics) == ("invalid", "x")


@pytest.mark.parametrize("case", cases("outcome", "fhirpath"))
def test_fhirpath(case):
    assert fhirpath(case["input"]["type"], tuple(case["input"]["loc"])) == case["expect"]


@pytest.mark.parametrize("case", cases("outcome", "to_fhir"))
def test_issue_to_fhir(case):
    given = case["input"]
    built = issue(given["code"], given["diagnostics"], *given["expression"], severity=given.get("severity", "error"))
    assert built.to_fhir() == case["expect"]
    fhir.OperationOutcome.model_validate(outcome([built]))
