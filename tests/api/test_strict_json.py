"""Strict R4 JSON (issue 11 §1) on every write path: each rule × REST create, PUT, a transaction entry and a batch
entry. Every case asserts a 400 OperationOutcome whose expressions name each offending element, in the service's
own words (never pydantic's), and that nothing was written.

The official HL7 R4 examples of the stored types are the other side: all of them pass the structure checks, and over
HTTP they are stored or refused by a trial rule (422), never a 400.
"""

import json
from typing import Any

import orjson
import pytest

from fhir_mappings import fhir
from tests.assertions import table_counts
from tests.factories import patient

FHIR_JSON = {"Content-Type": "application/fhir+json"}
ID = "strict-1"
#: what pydantic's own messages look like: none of it may reach a client
PYDANTIC_WORDS = ("Input should", "Value error", "type=", "errors.pydantic.dev", "String should", "validation error",
                  "Field required", "Extra inputs")


def ext(**value: Any) -> dict[str, Any]:
    return {"url": "https://example.org/strict", **value}


def dup(key: str, first: Any):
    """The resource as JSON text with `key` given twice: first `first`, then the resource's own value."""
    def text(resource: dict[str, Any]) -> bytes:
        return b"{" + orjson.dumps(key) + b":" + orjson.dumps(first) + b"," + orjson.dumps(resource)[1:]
    return text


# (name, changes to a valid Patient — a dict merged into it, or a function from the Patient to its JSON text —,
#  the offending elements, relative to the resource)
RULES: list[tuple[str, Any, list[str]]] = [
    ("null", {"gender": None}, ["gender"]),
    ("null-in-array", {"name": [{"given": [None, "Ana"]}]}, ["name[0].given[0]"]),
    ("empty-array", {"telecom": []}, ["telecom"]),
    ("empty-object", {"name": [{}]}, ["name[0]"]),
    ("empty-string", {"name": [{"family": ""}]}, ["name[0].family"]),
    ("duplicate-key", dup("gender", "male"), ["gender"]),
    ("duplicate-nested-key", lambda r: orjson.dumps(r).replace(b'"system":', b'"value":"x","system":', 1),
     ["identifier[0].value"]),
    ("date-format", {"birthDate": "1990-1-1"}, ["birthDate"]),
    ("date-not-a-day", {"birthDate": "1990-02-30"}, ["birthDate"]),
    ("date-with-time", {"birthDate": "1990-01-01T10:00:00Z"}, ["birthDate"]),
    ("datetime-without-zone", {"deceasedDateTime": "2020-01-01T10:00:00"}, ["deceasedDateTime"]),
    ("datetime-without-seconds", {"deceasedDateTime": "2020-01-01T10:00Z"}, ["deceasedDateTime"]),
    ("instant-without-zone", {"meta": {"lastUpdated": "2020-01-01T10:00:00"}}, ["meta.lastUpdated"]),
    ("time-without-seconds", {"extension": [ext(valueTime="10:00")]}, ["extension[0].valueTime"]),
    ("id-too-long", {"meta": {"versionId": "v" * 65}}, ["meta.versionId"]),
    ("id-bad-character", {"link": [{"other": {"reference": "Patient/x"}, "type": "seealso", "id": "x"}],
                          "meta": {"versionId": "a_b"}}, ["meta.versionId"]),
    ("code-leading-space", {"gender": " female"}, ["gender"]),
    ("code-double-space", {"identifier": [{"system": "urn:x", "value": "1", "use": "usual  x"}]},
     ["identifier[0].use"]),
    ("decimal-as-string", {"extension": [ext(valueDecimal="1.5")]}, ["extension[0].valueDecimal"]),
    ("integer-with-fraction", {"multipleBirthInteger": 2.0}, ["multipleBirthInteger"]),
    ("integer-as-string", {"multipleBirthInteger": "2"}, ["multipleBirthInteger"]),
    ("integer-out-of-range", {"multipleBirthInteger": 2**31}, ["multipleBirthInteger"]),
    ("positiveint-zero", {"extension": [ext(valuePositiveInt=0)]}, ["extension[0].valuePositiveInt"]),
    ("unsignedint-negative", {"photo": [{"contentType": "image/png", "size": -1}]}, ["photo[0].size"]),
    ("uri-with-space", {"identifier": [{"system": "urn:x y", "value": "1"}]}, ["identifier[0].system"]),
    ("oid-without-urn", {"extension": [ext(valueOid="1.2.3")]}, ["extension[0].valueOid"]),
    ("uuid-upper-case", {"extension": [ext(valueUuid="urn:uuid:6F2E1C1A-0000-4000-8000-000000000001")]},
     ["extension[0].valueUuid"]),
    ("base64-bad", {"photo": [{"contentType": "image/png", "data": "not base64!"}]}, ["photo[0].data"]),
    ("boolean-as-string", {"active": "true"}, ["active"]),
    ("control-character", {"name": [{"family": "Kim\u0001"}]}, ["name[0].family"]),
    ("unknown-element", {"surname": "Kim"}, ["surname"]),
    ("unknown-nested-element", {"name": [{"family": "Kim", "surname": "Kim"}]}, ["name[0].surname"]),
    ("unknown-primitive-extension", {"_surname": {"extension": [ext(valueString="x")]}}, ["_surname"]),
    ("unknown-in-primitive-extension", {"_gender": {"foo": 1}}, ["_gender.foo"]),
    ("unknown-in-contained", {"contained": [{"resourceType": "Patient", "id": "c", "foo": 1}]},
     ["contained[0].foo"]),
    ("array-where-one", {"gender": ["female"]}, ["gender"]),
    ("one-where-array", {"name": {"family": "Kim"}}, ["name"]),
    ("every-offender-at-once",
     {"gender": "female ", "birthDate": "1990-13-01", "telecom": [], "surname": "x", "active": 1,
      "name": [{"family": None, "given": ["Ana", 3]}]},
     ["gender", "birthDate", "telecom", "surname", "active", "name[0].family", "name[0].given[1]"]),
]


def resource_text(change: Any) -> bytes:
    body = {**patient(), "id": ID}
    if callable(change):
        return change(body)
    return orjson.dumps({**body, **change})


def bundle_text(kind: str, method: str, resource: bytes) -> bytes:
    url = "Patient" if method == "POST" else f"Patient/{ID}"
    request = orjson.dumps({"method": method, "url": url})
    return (b'{"resourceType":"Bundle","type":"' + kind.encode() + b'","entry":[{"request":' + request
            + b',"resource":' + resource + b"}]}")


def no_pydantic_words(outcome: dict[str, Any]) -> None:
    for item in outcome["issue"]:
        assert not any(w in item.get("diagnostics", "") for w in PYDANTIC_WORDS), item


def expressions(outcome: dict[str, Any]) -> list[str]:
    return sorted(e for item in outcome["issue"] if item["severity"] == "error" for e in item.get("expression", []))


@pytest.mark.parametrize("interaction", ["create", "update", "transaction", "batch-create", "batch-update"])
@pytest.mark.parametrize(("rule", "change", "where"), [pytest.param(n, c, w, id=n) for n, c, w in RULES])
def test_bad_r4_json_is_a_400_naming_each_element_on_every_write_path(client, engine, interaction, rule, change,
                                                                      where):
    text = resource_text(change)
    before = table_counts(engine)
    if interaction == "create":
        response = client.post("/fhir/Patient", content=text, headers=FHIR_JSON)
    elif interaction == "update":
        response = client.put(f"/fhir/Patient/{ID}", content=text, headers=FHIR_JSON)
    else:
        kind, _, method = interaction.partition("-")
        response = client.post("/fhir", content=bundle_text(kind, "PUT" if method == "update" else "POST", text),
                               headers=FHIR_JSON)
    if interaction.startswith("batch") and not rule.startswith("duplicate"):
        # a batch entry is answered on its own: the Bundle is 200, the entry 400 with its OperationOutcome
        assert response.status_code == 200, response.text
        answer = response.json()["entry"][0]["response"]
        assert answer["status"].startswith("400"), answer
        outcome = answer["outcome"]
        prefix = "Bundle.entry[0].resource."
    else:
        # REST, a transaction, and a batch whose JSON text repeats a name (the document itself is not FHIR JSON,
        # as a parser like HAPI's refuses it whole): the request is a 400
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/fhir+json")
        outcome = response.json()
        prefix = "Patient." if interaction in ("create", "update") else "Bundle.entry[0].resource."
    fhir.OperationOutcome.model_validate(outcome)
    assert expressions(outcome) == sorted(prefix + w for w in where)
    assert all(item["code"] in ("invalid", "structure") for item in outcome["issue"]), outcome
    no_pydantic_words(outcome)
    assert table_counts(engine) == before


def test_duplicate_keys_anywhere_in_a_bundle_are_each_named(client, engine):
    entry = b'{"request":{"method":"POST","url":"Patient"},"resource":%s}'
    first = orjson.dumps(patient())
    second = b'{"resourceType":"Patient","active":true,"name":[{"family":"A","family":"B"}],"active":false}'
    body = (b'{"resourceType":"Bundle","type":"batch","type":"transaction","entry":['
            + entry % first + b"," + entry % second + b"]}")
    before = table_counts(engine)
    response = client.post("/fhir", content=body, headers=FHIR_JSON)
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert expressions(outcome) == ["Bundle.entry[1].resource.active", "Bundle.entry[1].resource.name[0].family",
                                    "Bundle.type"]
    no_pydantic_words(outcome)
    assert table_counts(engine) == before


def test_a_quote_escaped_as_u0022_is_no_duplicate(client):
    body = orjson.dumps(patient(name=[{"family": 'O"Neil', "text": "x"}])).replace(b'O\\"Neil', b"O\\u0022Neil")
    assert b"\\u0022" in body
    response = client.post("/fhir/Patient", content=body, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    assert response.json()["name"][0]["family"] == 'O"Neil'


def test_model_level_errors_are_in_our_words_too(client):
    """What only the models check (a required element, one choice type) is named and worded by the service."""
    cases = [({"resourceType": "Observation", "code": {"text": "x"}}, "Observation.status", "required"),
             ({"resourceType": "Patient", "extension": [{"url": "https://example.org/x", "valueString": "a",
                                                         "valueInteger": 1}]}, "Patient.extension[0]", "invalid"),
             ({"resourceType": "Patient", "extension": [{"valueString": "a"}]}, "Patient.extension[0].url",
              "required")]
    for body, where, code in cases:
        response = client.post(f"/fhir/{body['resourceType']}", json=body)
        assert response.status_code == 400, response.text
        outcome = response.json()
        assert [(i["code"], i["expression"]) for i in outcome["issue"]] == [(code, [where])], outcome
        no_pydantic_words(outcome)


# -- the official HL7 R4 examples ----------------------------------------------------------------------------

#: the examples of the stored types in dependency order, each with what the trial makes of it: 201 (stored), or a
#: trial rule's 422 with the element it names. None is ever a 400: they are valid R4.
EXAMPLES = [
    ("Patient-example.json", None, 201, None),
    ("ResearchStudy-example.json", None, 201, None),
    ("ResearchSubject-example.json", None, 201, None),  # Patient/example in ResearchStudy/example
    ("AdverseEvent-example.json", None, 201, None),
    # body weight (LOINC 29463-7) is not a measure of the trial's catalogue
    ("Observation-example.json", None, 422, "Observation.code.coding"),
    # a glucose result of Patient/f001, whom this server does not know
    ("Observation-f001.json", None, 422, "Observation.subject"),
    *[("Bundle-101.json", i, 422, "Observation.subject") for i in range(1, 18)],  # the CBC of Patient/pat2
    *[("Bundle-bundle-transaction.json", i, 201, None) for i in range(0, 5)],  # its Patients
    ("Bundle-bundle-response.json", 0, 201, None),
]


def _example(fhir_examples, name: str, index: int | None) -> dict[str, Any]:
    data = json.loads((fhir_examples / "hl7-r4" / name).read_text())
    return data if index is None else data["entry"][index]["resource"]


def test_every_hl7_example_of_a_stored_type_is_in_the_table(fhir_examples):
    from service.core.registry import TYPES
    found = set()
    for path in sorted((fhir_examples / "hl7-r4").glob("*.json")):
        data = json.loads(path.read_text())
        items = [(None, data)] if data["resourceType"] != "Bundle" else \
            [(i, e["resource"]) for i, e in enumerate(data.get("entry", [])) if "resource" in e]
        found |= {(path.name, i) for i, r in items if r["resourceType"] in TYPES}
    assert found == {(name, index) for name, index, _, _ in EXAMPLES}


@pytest.mark.parametrize(("name", "index"), [pytest.param(n, i, id=f"{n}-{i}") for n, i, _, _ in EXAMPLES])
def test_hl7_examples_pass_the_structure_checks(fhir_examples, name, index):
    from fhir_mappings.validation import duplicate_key_issues, structure_issues
    resource = _example(fhir_examples, name, index)
    assert structure_issues(resource, resource["resourceType"], getattr(fhir, resource["resourceType"])) == []
    raw = (fhir_examples / "hl7-r4" / name).read_bytes()
    assert duplicate_key_issues(raw, orjson.loads(raw)) == []


def test_hl7_examples_are_stored_or_refused_by_a_trial_rule_never_as_bad_json(client, fhir_examples):
    for name, index, status, where in EXAMPLES:
        resource = _example(fhir_examples, name, index)
        rtype = resource["resourceType"]
        if resource.get("id"):
            response = client.put(f"/fhir/{rtype}/{resource['id']}", json=resource)
        else:
            response = client.post(f"/fhir/{rtype}", json=resource)
        assert response.status_code == status, (name, index, response.text)
        if status == 201:
            stored = response.json()  # every element as sent (the server may add its own, e.g. a study's Group)
            assert {k: stored.get(k) for k in resource if k not in ("meta", "id")} == \
                   {k: v for k, v in resource.items() if k not in ("meta", "id")}, name
        else:
            outcome = response.json()
            assert outcome["issue"][0]["code"] in ("business-rule", "code-invalid"), outcome
            assert outcome["issue"][0]["expression"] == [where], outcome


@pytest.mark.parametrize(("value", "words"), [("0", "Must be at least 1"), ("5000", "Must be at most 1000"),
                                              ("many", "Expected a whole number")])
def test_a_bad_request_parameter_is_named_in_our_words(client, value, words):
    response = client.get("/fhir/_history", params={"_count": value})
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert [i["expression"] for i in outcome["issue"]] == [["_count"]], outcome
    assert words in outcome["issue"][0]["diagnostics"], outcome
    no_pydantic_words(outcome)


def test_every_resource_of_the_shared_examples_passes_the_structure_checks(fhir_examples):
    """Not only the stored types: every resource of the HL7 examples and of both Synthea transactions (Encounter,
    Claim, ExplanationOfBenefit with contained resources, …) is valid R4, so none may be refused as bad JSON."""
    from fhir_mappings.validation import duplicate_key_issues, structure_issues
    checked = 0
    for path in sorted(fhir_examples.glob("*/*.json")):
        raw = path.read_bytes()
        data = orjson.loads(raw)
        assert duplicate_key_issues(raw, data) == [], path.name
        items = [e["resource"] for e in data.get("entry", []) if "resource" in e] \
            if data["resourceType"] == "Bundle" else [data]
        for resource in items:
            model = fhir.resource_class(resource["resourceType"])
            assert model is not None, resource["resourceType"]
            assert structure_issues(resource, resource["resourceType"], model) == [], (path.name, resource.get("id"))
            checked += 1
    assert checked > 500
