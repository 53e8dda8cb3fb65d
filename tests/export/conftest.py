"""The data the export tests share: two studies with a patient in both (tests/export/*)."""

import pytest

from tests.factories import adverse_event, created, enrol, observation, study, subject


@pytest.fixture
def two_studies(client):
    """Study A with two patients, study B with one of them plus another; results and events in each."""
    a = enrol(client)
    a2 = enrol(client, study_id=a["study"])
    b = created(client.post("/fhir/ResearchStudy", json=study(title="Study B")))["id"]
    shared_b = created(client.post("/fhir/ResearchSubject", json=subject(b, a["patient"])))["id"]
    b2 = enrol(client, study_id=b)
    ext = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"

    def obs(pid, sid, measure="EASI", date="2024-01-10", value=10):
        body = observation(pid, measure, value=value, date=date)
        body["extension"] = [{"url": ext, "valueReference": {"reference": f"ResearchStudy/{sid}"}}]
        return created(client.post("/fhir/Observation", json=body))["id"]

    data = {
        "A": a["study"], "B": b, "shared": a["patient"], "a_only": a2["patient"], "b_only": b2["patient"],
        "a_subjects": {a["subject"], a2["subject"]}, "b_subjects": {shared_b, b2["subject"]},
        "a_obs": {obs(a["patient"], a["study"]), obs(a["patient"], a["study"], "IGE", value=120),
                  obs(a2["patient"], a["study"], date="2024-03-01")},
        "b_obs": {obs(a["patient"], b), obs(b2["patient"], b)},
        "a_ae": {created(client.post("/fhir/AdverseEvent", json=adverse_event(a["patient"], a["study"],
                                                                              serious=True)))["id"]},
        "b_ae": {created(client.post("/fhir/AdverseEvent", json=adverse_event(a["patient"], b)))["id"]},
    }
    return data
