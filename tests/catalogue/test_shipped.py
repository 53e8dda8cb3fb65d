"""The shipped atopic dermatitis catalogue: stored at start-up when absent, as FHIR resources; a study without a
protocol uses it; a change to it over HTTP is the next version its studies use."""

from fastapi.testclient import TestClient

from service.main import create_app
from tests.factories import AD, created, enrol, observation


def started(settings) -> TestClient:
    return TestClient(create_app(settings.model_copy(update={"load_catalogue_on_startup": True})))


def test_the_shipped_catalogue_is_stored_at_start_up_once(settings):
    with started(settings) as client:
        plan = client.get("/fhir/PlanDefinition/atopic-dermatitis")
        assert plan.status_code == 200 and plan.json()["meta"]["versionId"] == "1"
        definitions = client.get("/fhir/ObservationDefinition", params={"_count": 50}).json()
        assert sorted(e["resource"]["id"] for e in definitions["entry"]) == [
            "ad-easi", "ad-eosinophils", "ad-eosinophils-pct", "ad-iga", "ad-ige", "ad-pruritus", "ad-scorad"]
        easi = client.get("/fhir/ObservationDefinition", params={"code": f"{AD}|EASI"}).json()
        assert easi["entry"][0]["resource"]["id"] == "ad-easi"
    with started(settings) as client:  # a restart stores nothing again
        assert client.get("/fhir/PlanDefinition/atopic-dermatitis").json()["meta"]["versionId"] == "1"
        assert client.get("/fhir/PlanDefinition/atopic-dermatitis/_history").json()["total"] == 1


def test_a_study_without_protocol_uses_the_stored_default_catalogue_and_its_next_version(settings):
    with started(settings) as client:
        ids = enrol(client)
        summary = client.get(f"/studies/{ids['study']}/summary").json()
        assert summary["catalogue"] == "atopic-dermatitis" and summary["catalogue_version"] == "1"
        assert client.post("/fhir/Observation", json=observation(ids["patient"], "IGE", 50, unit="mg/L")
                           ).status_code == 422  # not an accepted unit
        # the trial team accepts µg/L for IgE (1 IU/mL = 2.4 ng/mL = 2.4 µg/L): a new version of the measure
        ige = client.get("/fhir/ObservationDefinition/ad-ige").json()
        ige.pop("meta")
        ige["quantitativeDetails"]["extension"].append({
            "url": "https://trial-fhir.org/StructureDefinition/accepted-unit",
            "extension": [{"url": "unit", "valueCoding": {"system": "http://unitsofmeasure.org", "code": "ug/L"}},
                          {"url": "conversionFactor", "valueDecimal": 2.4}]})
        assert client.put("/fhir/ObservationDefinition/ad-ige", json=ige).status_code == 200
        assert created(client.post("/fhir/Observation", json=observation(ids["patient"], "IGE", 240, unit="ug/L")))
        summary = client.get(f"/studies/{ids['study']}/summary").json()
        assert summary["catalogue_version"] == "2"
        baseline = [m for a in summary["arms"] for m in a["measures"] if m["visit"] == "baseline"
                    and m["measure"] == "IGE"]
        assert baseline[0]["mean"] == 100  # 240 µg/L in IU/mL


def test_the_shipped_plan_cannot_be_deleted_while_a_study_follows_it(settings):
    with started(settings) as client:
        enrol(client, study_id=None)
        study_ = created(client.post("/fhir/ResearchStudy", json={
            "resourceType": "ResearchStudy", "status": "active",
            "protocol": [{"reference": "PlanDefinition/atopic-dermatitis"}]}))
        assert study_["protocol"] == [{"reference": "PlanDefinition/atopic-dermatitis"}]
        assert client.delete("/fhir/PlanDefinition/atopic-dermatitis").status_code == 409
