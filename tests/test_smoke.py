from tests.factories import created, enrol, observation


def test_enrolled_patient_observation_is_stored_and_read_back(client):
    ids = enrol(client)
    obs = created(client.post("/fhir/Observation", json=observation(ids["patient"], "EASI", 20.5, "2024-02-07")))
    read = client.get(f"/fhir/Observation/{obs['id']}")
    assert read.status_code == 200
    assert read.json()["valueQuantity"]["value"] == 20.5
    assert read.headers["etag"] == 'W/"1"'
