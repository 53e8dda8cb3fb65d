"""Structure checks: which payloads are not FHIR R4 of the expected type, and which element each issue names."""

import pytest

from fhir_mappings import fhir
from fhir_mappings.validation import MAX_DEPTH, TOO_DEEP, structure_issues, too_deep
from tests.data import cases, issue_pairs


@pytest.mark.parametrize("case", cases("validation", "structure_issues"))
def test_structure_issues(case):
    resource_type = case["input"]["type"]
    found = structure_issues(case["input"]["payload"], resource_type, getattr(fhir, resource_type))
    assert issue_pairs(found) == sorted(case["expect"])


def _nested_extensions(levels: int, leaf: dict) -> dict:
    """A Patient whose extension holds `levels` extensions nested in each other, the innermost carrying `leaf`."""
    extension = {"url": "https://example.org/level", **leaf}
    for _ in range(levels - 1):
        extension = {"url": "https://example.org/level", "extension": [extension]}
    return {"resourceType": "Patient", "extension": [extension]}


@pytest.mark.parametrize("case", cases("validation", "nesting"))
def test_structure_issues_depth_limit(case):
    payload = _nested_extensions(case["input"]["levels"], case["input"]["leaf"])
    found = structure_issues(payload, "Patient", fhir.Patient)
    assert issue_pairs(found) == case["expect"]["issues"]
    assert all(issue.diagnostics == TOO_DEEP for issue in found)


@pytest.mark.parametrize("case", cases("validation", "nesting"))
def test_too_deep_agrees_with_the_structure_check(case):
    payload = _nested_extensions(case["input"]["levels"], case["input"]["leaf"])
    assert too_deep(payload, MAX_DEPTH) is case["expect"]["too_deep"]
