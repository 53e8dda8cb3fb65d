"""POST /hl7/v2 over HTTP: ACKs, idempotent resends, corrections, ConceptMaps, the same words as a FHIR write."""

from fhir_mappings import hl7v2
from service.audit.events import OPERATION_SYSTEM
from tests.factories import MRN, enrol
from tests.hl7.conftest import ER7
from tests.hl7.messages import errs, msa, obx, oru

RESULTS = "urn:trial-fhir:hl7v2:SNUH-LAB:result"


def send(client, text: str | bytes, content_type: str = ER7["Content-Type"]):
    body = text.encode() if isinstance(text, str) else text
    response = client.post("/hl7/v2", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("x-application/hl7-v2+er7")
    return response.text


def observations(client, patient_id: str) -> list[dict]:
    found = client.get("/fhir/Observation", params={"subject": patient_id, "_count": 100}).json()
    return [e["resource"] for e in found.get("entry", [])]


def test_a_result_is_stored_and_acked_aa(client):
    ids = enrol(client, mrn="MRN-1")
    ack = send(client, oru("MRN-1"))
    assert msa(ack) == ["AA", "MSG00001"] and errs(ack) == []
    [obs] = observations(client, ids["patient"])
    assert obs["subject"]["reference"] == f"Patient/{ids['patient']}"
    assert obs["identifier"][0] == {"system": RESULTS, "value": "F-7781/19113-0/"}
    assert obs["meta"]["source"] == "urn:trial-fhir:hl7v2:SNUH-LAB:message:MSG00001"
    # the trial's unit conversion and visit assignment applied downstream, as for any FHIR write
    found = client.get("/fhir/Observation", params={"subject": ids["patient"], "value-quantity": "1520||[IU]/mL"})
    assert found.json()["total"] == 1
    assert {t["code"] for t in obs["meta"]["tag"]} >= {"week-4"}
    provenance = client.get("/fhir/Provenance", params={"target": f"Observation/{obs['id']}"}).json()
    assert provenance["total"] == 1
    assert provenance["entry"][0]["resource"]["entity"][0]["what"]["identifier"]["value"] == "MSG00001"


def test_text_plain_is_accepted_and_other_media_types_are_415(client):
    enrol(client, mrn="MRN-1")
    assert msa(send(client, oru("MRN-1"), "text/plain"))[0] == "AA"
    refused = client.post("/hl7/v2", content=oru("MRN-1").encode(), headers={"Content-Type": "application/json"})
    assert refused.status_code == 415
    assert refused.json()["issue"][0]["expression"] == ["Content-Type"]


def test_a_body_over_the_limit_is_413(client):
    big = oru("MRN-1", [obx(1), "NTE|1|L|" + "x" * (1024 * 1024)])
    refused = client.post("/hl7/v2", content=big.encode(), headers=ER7)
    assert refused.status_code == 413


def test_a_resent_message_is_acked_aa_again_and_writes_nothing(client):
    ids = enrol(client, mrn="MRN-1")
    first = send(client, oru("MRN-1"))
    again = send(client, oru("MRN-1").replace("\r", "\n"))  # the same segments, other line ends
    assert again == first  # the very ACK it got
    [obs] = observations(client, ids["patient"])
    assert obs["meta"]["versionId"] == "1"
    assert client.get("/fhir/Provenance").json()["total"] == 1


def test_another_message_under_a_used_control_id_is_ae(client):
    enrol(client, mrn="MRN-1")
    send(client, oru("MRN-1"))
    ack = send(client, oru("MRN-1", [obx(1, value="99")]))
    assert msa(ack)[0] == "AE"
    assert "already used for another message" in errs(ack)[0][7]


def test_a_correction_makes_a_new_version_of_the_same_observation(client):
    ids = enrol(client, mrn="MRN-1")
    send(client, oru("MRN-1", control_id="M1"))
    send(client, oru("MRN-1", [obx(1)], control_id="M2"))  # the same result in a new message: no new version
    assert observations(client, ids["patient"])[0]["meta"]["versionId"] == "1"
    ack = send(client, oru("MRN-1", [obx(1, value="1600", status="C")], control_id="M3"))
    assert msa(ack)[0] == "AA"
    [obs] = observations(client, ids["patient"])
    assert (obs["meta"]["versionId"], obs["status"], obs["valueQuantity"]["value"]) == ("2", "corrected", 1600)
    history = client.get(f"/fhir/Observation/{obs['id']}/_history").json()
    assert history["total"] == 2


def test_an_unknown_patient_is_ae_with_the_words_of_the_fhir_write(client):
    enrol(client, mrn="MRN-1")
    ack = send(client, oru("MRN-404"))
    assert msa(ack)[0] == "AE"
    [err] = errs(ack)
    assert err[2] == "PID^1^3" and err[3].startswith("204^")
    # the same results sent as a FHIR transaction are refused with these very words
    message = hl7v2.read_message(oru("MRN-404").encode())
    bundle, _, _ = hl7v2.to_bundle(message, patient=f"Patient?{hl7v2.identifier_query(MRN, 'MRN-404')}",
                                   translations={})
    refused = client.post("/fhir", json=bundle)
    assert refused.status_code == 422
    words = refused.json()["issue"][0]["diagnostics"]
    assert err[7] == words.replace("|", "\\F\\")
    assert err[6] == refused.json()["issue"][0]["expression"][0]
    assert client.get("/fhir/Observation").json()["total"] == 0


def test_a_trial_rule_broken_is_ae_naming_the_rule_and_nothing_is_stored(client):
    ids = enrol(client, mrn="MRN-1")
    ack = send(client, oru("MRN-1", [obx(1), obx(2, code="711-2^Eos^LN", value="5000", unit="10*3/uL^^UCUM")]))
    assert msa(ack)[0] == "AE"
    [err] = errs(ack)
    assert err[2] == "OBX^2^5" and err[6].startswith("Bundle.entry[1].resource.valueQuantity")
    assert observations(client, ids["patient"]) == []  # all or nothing


def test_unmapped_local_code_is_ae_then_a_conceptmap_maps_it_without_restart(client):
    ids = enrol(client, mrn="MRN-1")
    message = oru("MRN-1", [obx(1, code="IGE^IgE total^L")], control_id="M1")
    ack = send(client, message)
    assert msa(ack)[0] == "AE" and errs(ack)[0][2] == "OBX^1^3"
    concept_map = {"resourceType": "ConceptMap", "url": "https://lab.example.org/ConceptMap/loinc", "status": "active",
                   "group": [{"source": "urn:trial-fhir:hl7v2:SNUH-LAB:code:L", "target": "http://loinc.org",
                              "element": [{"code": "IGE", "target": [{"code": "19113-0",
                                                                      "equivalence": "equivalent"}]}]}]}
    created = client.post("/fhir/ConceptMap", json=concept_map)
    assert created.status_code == 201
    assert msa(send(client, message))[0] == "AA"  # an AE stored nothing: the same message may come again
    [obs] = observations(client, ids["patient"])
    assert [c["code"] for c in obs["code"]["coding"]] == ["IGE", "19113-0"]
    # the map changed (retired): the code is unmapped again
    retired = {**concept_map, "id": created.json()["id"], "status": "retired"}
    assert client.put(f"/fhir/ConceptMap/{retired['id']}", json=retired).status_code == 200
    assert msa(send(client, message.replace("M1", "M2")))[0] == "AE"


def test_conceptmap_is_searchable_by_url(client):
    body = {"resourceType": "ConceptMap", "url": "https://lab.example.org/cm/1", "status": "draft"}
    cid = client.post("/fhir/ConceptMap", json=body).json()["id"]
    client.post("/fhir/ConceptMap", json={**body, "url": "https://lab.example.org/cm/2"})
    found = client.get("/fhir/ConceptMap", params={"url": "https://lab.example.org/cm/1"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [cid]
    assert client.get("/fhir/ConceptMap", params={"_id": cid}).json()["total"] == 1
    broken = client.post("/fhir/ConceptMap", json={**body, "group": [{"element": [{"code": "A"}]}]})
    assert broken.status_code == 422
    assert {e for i in broken.json()["issue"] for e in i["expression"]} == {"ConceptMap.group[0].source",
                                                                             "ConceptMap.group[0].target"}


def test_malformed_and_unsupported_messages_are_ar(client):
    ack = send(client, b"\x00\x01 garbage")
    assert msa(ack) == ["AR", ""]
    ack = send(client, oru("MRN-1", message_type="ADT^A01", control_id="X9"))
    assert msa(ack) == ["AR", "X9"] and errs(ack)[0][3].startswith("200^")


def test_unknown_assigning_authority_is_ae(client):
    enrol(client, mrn="MRN-1")
    ack = send(client, oru("MRN-1", authority="ELSEWHERE"))
    assert msa(ack)[0] == "AE" and "ELSEWHERE" in errs(ack)[0][7]


def test_the_write_is_audited_with_the_senders_address(client):
    enrol(client, mrn="MRN-1")
    send(client, oru("MRN-1"))
    events = client.get("/fhir/AuditEvent", params={"subtype": "transaction"}).json()
    [event] = [e["resource"] for e in events["entry"]]
    assert event["outcome"] == "0"
    assert any(a.get("network", {}).get("address") == "testclient" for a in event["agent"])
    assert any(e.get("what", {}).get("reference", "").startswith("Observation/") for e in event["entity"])


def test_messages_refused_before_the_write_are_audited_too(client):
    send(client, b"garbage")
    send(client, oru("MRN-404", authority="ELSEWHERE"))
    events = client.get("/fhir/AuditEvent", params={"subtype": "operation"}).json()
    outcomes = [e["resource"]["outcome"] for e in events["entry"]
                if {"system": OPERATION_SYSTEM, "code": "$hl7v2"} in e["resource"]["subtype"]]
    assert outcomes == ["4", "4"]
