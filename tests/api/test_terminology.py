"""Terminology operations over HTTP (issue 11 §6): CodeSystem/$lookup, CodeSystem and ValueSet $validate-code,
ValueSet/$expand, GET with query parameters and POST with a Parameters body; ValueSet read and search."""

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.valueset import ValueSet

AD = "https://trial-fhir.org/CodeSystem/ad-scores"
MEASURES = "https://trial-fhir.org/ValueSet/atopic-dermatitis-measures"


def params(body: dict) -> dict:
    Parameters.model_validate(body)
    return {p["name"]: p for p in body["parameter"]}


def post(client, url: str, *items: tuple[str, str, object]):
    return client.post(url, json={"resourceType": "Parameters",
                                  "parameter": [{"name": n, key: v} for n, key, v in items]})


def test_lookup_get_and_post(client):
    got = client.get("/fhir/CodeSystem/$lookup", params={"system": AD, "code": "EASI"})
    assert got.status_code == 200, got.text
    assert params(got.json())["display"]["valueString"] == "Eczema Area and Severity Index (EASI)"
    posted = post(client, "/fhir/CodeSystem/$lookup", ("coding", "valueCoding", {"system": AD, "code": "EASI"}))
    assert posted.status_code == 200 and posted.json() == got.json()


@pytest.mark.parametrize(("query", "status", "expression"), [
    ({"system": AD, "code": "NOPE"}, 404, "code"),
    ({"system": "http://loinc.org", "code": "711-2"}, 404, "system"),  # not a code system this server holds
    ({"code": "EASI"}, 400, "system"),
    ({"system": AD}, 400, "code"),
    ({"system": AD, "code": "EASI", "version": "9"}, 404, "version"),
])
def test_lookup_failures(client, query, status, expression):
    r = client.get("/fhir/CodeSystem/$lookup", params=query)
    assert r.status_code == status, r.text
    assert r.json()["issue"][0]["expression"] == [expression]


@pytest.mark.parametrize(("url", "query", "result"), [
    ("/fhir/CodeSystem/$validate-code", {"url": AD, "code": "IGA"}, True),
    ("/fhir/CodeSystem/ad-scores/$validate-code", {"code": "IGA"}, True),
    ("/fhir/CodeSystem/ad-scores/$validate-code", {"code": "19113-0"}, False),
    ("/fhir/ValueSet/$validate-code", {"url": MEASURES, "system": "http://loinc.org", "code": "19113-0"}, True),
    ("/fhir/ValueSet/atopic-dermatitis-measures/$validate-code", {"system": AD, "code": "EASI-HN-AREA"}, False),
    ("/fhir/ValueSet/ad-scores/$validate-code", {"system": AD, "code": "EASI-HN-AREA"}, True),
])
def test_validate_code(client, url, query, result):
    r = client.get(url, params=query)
    assert r.status_code == 200, r.text
    found = params(r.json())
    assert found["result"]["valueBoolean"] is result
    assert ("message" in found) is (not result)


def test_validate_code_with_a_codeable_concept_by_post(client):
    concept = {"coding": [{"system": "http://snomed.info/sct", "code": "24079001"}, {"system": AD, "code": "SCORAD"}]}
    r = post(client, "/fhir/CodeSystem/$validate-code", ("url", "valueUri", AD),
             ("codeableConcept", "valueCodeableConcept", concept))
    assert r.status_code == 200, r.text
    assert params(r.json())["result"]["valueBoolean"] is True


@pytest.mark.parametrize(("url", "status", "expression"), [
    ("/fhir/ValueSet/$validate-code?code=EASI", 400, "url"),
    ("/fhir/ValueSet/$validate-code?url=http://example.org/vs&code=EASI", 404, "url"),
    ("/fhir/ValueSet/nope/$validate-code?code=EASI", 404, "ValueSet.id"),
    ("/fhir/CodeSystem/nope/$validate-code?code=EASI", 404, "CodeSystem.id"),
    ("/fhir/ValueSet/ad-scores/$expand?count=-1", 400, "count"),
    ("/fhir/ValueSet/ad-scores/$expand?offset=x", 400, "offset"),
    ("/fhir/ValueSet/$expand", 400, "url"),
])
def test_terminology_failures(client, url, status, expression):
    r = client.get(url)
    assert r.status_code == status, r.text
    assert r.json()["issue"][0]["expression"] == [expression]


def test_expand_get_and_post_page_the_same(client):
    got = client.get("/fhir/ValueSet/ad-scores/$expand", params={"filter": "upper limbs", "count": 2, "offset": 2})
    assert got.status_code == 200, got.text
    ValueSet.model_validate(got.json())
    expansion = got.json()["expansion"]
    assert expansion["total"] == 5 and expansion["offset"] == 2
    assert [c["code"] for c in expansion["contains"]] == ["EASI-UL-OEDEMA", "EASI-UL-EXCORIATION"]
    posted = post(client, "/fhir/ValueSet/$expand", ("url", "valueUri", "https://trial-fhir.org/ValueSet/ad-scores"),
                  ("filter", "valueString", "upper limbs"), ("count", "valueInteger", 2),
                  ("offset", "valueInteger", 2))
    assert posted.status_code == 200, posted.text
    assert posted.json()["expansion"]["contains"] == expansion["contains"]


def test_value_set_read_and_search(client):
    read = client.get("/fhir/ValueSet/atopic-dermatitis-measures")
    assert read.status_code == 200 and read.json()["url"] == MEASURES
    ValueSet.model_validate(read.json())
    found = client.get("/fhir/ValueSet", params={"url": MEASURES}).json()
    Bundle.model_validate(found)
    assert [e["resource"]["id"] for e in found["entry"]] == ["atopic-dermatitis-measures"]
    assert client.get("/fhir/ValueSet/nope").status_code == 404
