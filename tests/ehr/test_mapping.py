"""fhir_mappings/ehr.py: upstream resources made ours (pure, no database, no HTTP)."""

import pytest

from fhir_mappings import ehr

BASE = "https://ehr.example.org/fhir"


def _observation(**extra):
    return {"resourceType": "Observation", "id": "obs-17", "status": "final",
            "meta": {"versionId": "4", "lastUpdated": "2026-01-01T00:00:00Z", "tag": [{"code": "x"}]},
            "identifier": [{"system": "urn:lab", "value": "L-1"}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "19113-0"}]},
            "subject": {"reference": "Patient/up-1", "display": "Kim"}, **extra}


def test_localise_rewrites_the_patient_keeps_the_upstream_identity_and_source_and_leaves_the_input_alone():
    upstream = _observation(performer=[{"reference": "Practitioner/pr-1", "display": "Dr Lee"},
                                       {"reference": f"{BASE}/Organization/lab"}],
                            hasMember=[{"reference": "#inner"}], contained=[{"resourceType": "Observation",
                                                                            "id": "inner", "status": "final"}])
    before = repr(upstream)
    ours = ehr.localise(upstream, BASE + "/", {"up-1": "p-ours"})
    assert "id" not in ours and ours["meta"] == {"source": f"{BASE}/Observation/obs-17"}
    assert ours["subject"] == {"reference": "Patient/p-ours", "display": "Kim"}
    assert ours["identifier"] == [{"system": "urn:lab", "value": "L-1"},
                                  {"system": f"{BASE}/Observation", "value": "obs-17"}]
    assert ours["performer"] == [{"display": "Dr Lee"}, {"display": f"{BASE}/Organization/lab"}]
    assert ours["hasMember"] == [{"reference": "#inner"}] and ours["contained"] == upstream["contained"]
    assert repr(upstream) == before


@pytest.mark.parametrize("reference, mapped", [
    ("Patient/up-1", True), (f"{BASE}/Patient/up-1", True), ("Patient/up-1/_history/3", True),
    ("Patient/someone-else", False), ("https://other.example.org/fhir/Patient/up-1", False), ("Group/up-1", False),
])
def test_only_references_to_the_upstream_patient_become_ours(reference, mapped):
    ours = ehr.localise(_observation(subject={"reference": reference}), BASE, {"up-1": "p-ours"})
    assert (ours["subject"] == {"reference": "Patient/p-ours"}) is mapped
    if not mapped:
        assert "reference" not in ours["subject"]


def test_an_adverse_event_keeps_one_identifier_and_drops_the_upstream_study():
    event = {"resourceType": "AdverseEvent", "id": "ae-1", "actuality": "actual",
             "identifier": {"system": "urn:ehr", "value": "E1"}, "subject": {"reference": "Patient/up-1"},
             "study": [{"reference": "ResearchStudy/theirs"}]}
    ours = ehr.localise(event, BASE, {"up-1": "p"})
    assert ours["identifier"] == {"system": f"{BASE}/AdverseEvent", "value": "ae-1"} and "study" not in ours


def test_the_entry_creates_a_new_copy_or_updates_ours_and_the_identity_query_names_the_identifier():
    created = ehr.entry(_observation(), BASE, {"up-1": "p"})
    assert created["request"] == {"method": "POST", "url": "Observation"} and "id" not in created["resource"]
    assert created["resource"]["subject"]["reference"] == "Patient/p"
    updated = ehr.entry(_observation(), BASE, {"up-1": "p"}, "ours-9")
    assert updated["request"] == {"method": "PUT", "url": "Observation/ours-9"}
    assert updated["resource"]["id"] == "ours-9"
    assert ehr.identity_query(BASE, "Observation", "obs-17") == \
        "identifier=https%3A%2F%2Fehr.example.org%2Ffhir%2FObservation%7Cobs-17"


def test_capability_statement_reading():
    capability = {"rest": [{"mode": "server", "resource": [{"type": "Patient"}, {"type": "AdverseEvent"},
                                                           {"type": "Group", "operation": [{"name": "export"}]}]}]}
    assert ehr.supported_types(capability) == {"Patient", "AdverseEvent", "Group"}
    assert ehr.offers_group_export(capability)
    assert not ehr.offers_group_export({"rest": [{"mode": "server", "resource": [{"type": "Group"}]}]})
    assert ehr.last_updated(_observation()) == "2026-01-01T00:00:00Z" and ehr.last_updated({"meta": {}}) is None
