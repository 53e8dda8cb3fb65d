"""Structure checks: which payloads are not FHIR R4 of the expected type, and which element each issue names."""

import orjson
import pytest

from fhir_mappings import fhir
from fhir_mappings.primitives import primitive_issue
from fhir_mappings.validation import MAX_DEPTH, TOO_DEEP, duplicate_key_issues, structure_issues, too_deep
from tests.data import cases, issue_pairs, load_sample


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


@pytest.mark.parametrize("case", cases("validation", "duplicate_key_issues"))
def test_duplicate_key_issues(case):
    raw = case["input"].encode()
    found = duplicate_key_issues(raw, orjson.loads(raw))
    assert [e for i in found for e in i.expression] == case["expect"]
    assert all(i.code == "invalid" and "more than once" in i.diagnostics for i in found)


def test_duplicate_key_issues_takes_text_too():
    raw = '{"resourceType":"Patient","gender":"male","gender":"male"}'
    assert [i.expression for i in duplicate_key_issues(raw, orjson.loads(raw))] == [("Patient.gender",)]


@pytest.mark.parametrize("case", cases("validation", "primitives"))
def test_primitive_checks(case):
    problem = primitive_issue(case["input"]["kind"], case["input"]["value"])
    assert (problem is None) is case["expect"], problem
    if problem is not None:
        assert case["input"]["kind"] in problem  # the message names the FHIR type it expected


def test_every_primitive_type_of_the_models_has_a_check():
    """The walk knows the FHIR type of every primitive element of the stored types (none falls through unchecked)."""
    from fhir_mappings.validation import _fields
    seen: set[str] = set()
    stack = [fhir.Patient, fhir.Observation, fhir.AdverseEvent, fhir.ResearchStudy, fhir.ResearchSubject]
    done = set()
    while stack:
        cls = stack.pop()
        if cls in done:
            continue
        done.add(cls)
        for field in _fields(cls).values():
            assert field.kind != "unchecked", (cls, field)
            if field.kind:
                seen.add(field.kind)
            if field.model:
                stack.append(field.model)
    assert {"boolean", "integer", "decimal", "string", "code", "id", "uri", "dateTime", "date", "instant", "time",
            "positiveInt", "unsignedInt", "base64Binary", "canonical", "markdown"} <= seen


@pytest.mark.parametrize("case", [pytest.param(c, id=c["name"]) for c in load_sample("mappings/validation.json")
                                  ["structure_issues"] if c["expect"]])
def test_structure_issues_are_in_our_own_words(case):
    resource_type = case["input"]["type"]
    found = structure_issues(case["input"]["payload"], resource_type, getattr(fhir, resource_type))
    assert found
    for item in found:
        assert not any(w in item.diagnostics for w in ("Input should", "Value error", "type=", "pydantic",
                                                       "String should", "Field required")), item
