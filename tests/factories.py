"""Payload builders and small helpers shared by the tests (plain functions; the HTTP calls stay in tests)."""

import uuid

AD = "https://trial-fhir.org/CodeSystem/ad-scores"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MRN = "urn:oid:1.2.410.200001.1"

MEASURE_CODES = {
    "EASI": (AD, "EASI", "{score}"), "SCORAD": (AD, "SCORAD", "{score}"), "IGA": (AD, "IGA", "{score}"),
    "PRURITUS": (AD, "PRURITUS-NRS", "{score}"), "IGE": (LOINC, "19113-0", "[IU]/mL"),
    "EOSINOPHILS": (LOINC, "711-2", "10*3/uL"), "EOSINOPHILS-PCT": (LOINC, "713-8", "%"),
}


def patient(mrn: str | None = None, **extra) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn or f"MRN-{uuid.uuid4().hex[:8]}"}],
            "gender": "female", "birthDate": "1990-01-01", **extra}


def study(arms=("low-dose", "high-dose"), **extra) -> dict:
    return {"resourceType": "ResearchStudy", "status": "active", "title": "Test study",
            "arm": [{"name": a, "description": f"{a} dose"} for a in arms], **extra}


def subject(study_id: str, patient_id: str, arm: str = "high-dose", day0: str | None = "2024-01-10", **extra) -> dict:
    body = {"resourceType": "ResearchSubject", "status": "on-study",
            "study": {"reference": f"ResearchStudy/{study_id}"}, "individual": {"reference": f"Patient/{patient_id}"},
            "assignedArm": arm, "actualArm": arm, **extra}
    if day0:
        body["period"] = {"start": day0}
    return body


def observation(patient_id: str, measure: str = "EASI", value=12.3, date: str = "2024-01-10", unit: str | None = None,
                status: str = "final", **extra) -> dict:
    system, code, canonical = MEASURE_CODES[measure]
    unit = unit or canonical
    return {"resourceType": "Observation", "status": status,
            "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": date,
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}, **extra}


def adverse_event(patient_id: str, study_id: str | None = None, *, serious=False, severity="mild",
                  related: str | None = None, withdrawal=False, date="2024-01-20", **extra) -> dict:
    body = {"resourceType": "AdverseEvent", "actuality": "actual",
            "event": {"coding": [{"system": "https://www.meddra.org", "code": "10037087", "display": "Pruritus"}],
                      "text": "Pruritus"},
            "subject": {"reference": f"Patient/{patient_id}"}, "date": date,
            "seriousness": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness",
                                        "code": "serious" if serious else "non-serious"}]},
            "severity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-severity",
                                     "code": severity}]}, **extra}
    if study_id:
        body["study"] = [{"reference": f"ResearchStudy/{study_id}"}]
    if related:
        body["suspectEntity"] = [{"instance": {"display": "hUCB-MSC"}, "causality": [{"assessment": {"coding": [
            {"system": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl", "code": related}]}}]}]
    if withdrawal:
        body["extension"] = [{"url": "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/"
                                     "caused-subject-to-discontinue-study", "valueBoolean": True}]
    return body


def created(response) -> dict:
    assert response.status_code == 201, response.text
    return response.json()


def enrol(client, arm: str = "high-dose", day0: str | None = "2024-01-10", study_id: str | None = None,
          mrn: str | None = None) -> dict:
    """Create (or reuse) a study, a patient and their ResearchSubject; return their ids."""
    if study_id is None:
        study_id = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    patient_id = created(client.post("/fhir/Patient", json=patient(mrn)))["id"]
    subject_id = created(client.post("/fhir/ResearchSubject", json=subject(study_id, patient_id, arm, day0)))["id"]
    return {"study": study_id, "patient": patient_id, "subject": subject_id}


def encounter(patient_id: str, start: str = "2024-02-07T09:00:00+09:00", status: str = "finished", **extra) -> dict:
    return {"resourceType": "Encounter", "status": status,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{patient_id}"},
            "period": {"start": start, "end": start[:11] + "10:30:00" + start[19:]}, **extra}


def medication_administration(patient_id: str, date: str = "2024-01-10T10:00:00+09:00", dose=5.0e7,
                              status: str = "completed", **extra) -> dict:
    return {"resourceType": "MedicationAdministration", "status": status,
            "medicationCodeableConcept": {"coding": [{"system": "https://trial-fhir.org/CodeSystem/product",
                                                      "code": "hUCB-MSC"}], "text": "hUCB-MSC"},
            "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": date,
            "dosage": {"route": {"coding": [{"system": "http://snomed.info/sct", "code": "263887005"}]},
                       "dose": {"value": dose, "unit": "cells", "system": UCUM, "code": "{cells}"}}, **extra}


def procedure(patient_id: str, date: str = "2024-01-10T10:00:00+09:00", status: str = "completed", **extra) -> dict:
    return {"resourceType": "Procedure", "status": status,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "422145002"}],
                     "text": "Subcutaneous injection"},
            "subject": {"reference": f"Patient/{patient_id}"}, "performedDateTime": date, **extra}


def provenance(*targets: str, recorded: str = "2024-02-07T10:31:00+09:00", **extra) -> dict:
    return {"resourceType": "Provenance", "target": [{"reference": t} for t in targets], "recorded": recorded,
            "agent": [{"who": {"display": "Site EHR interface"}}], **extra}


def concept_map(url: str = "https://lab.example.org/ConceptMap/lab-to-loinc", **extra) -> dict:
    return {"resourceType": "ConceptMap", "url": url, "status": "active",
            "group": [{"source": "urn:trial-fhir:hl7v2:SNUH-LAB:code:L", "target": LOINC,
                       "element": [{"code": "IGE", "target": [{"code": "19113-0", "equivalence": "equivalent"}]}]}],
            **extra}


def subscription(*filters: str, endpoint: str = "https://127.0.0.1:9/hook", topic: str = "measurement",
                 **extra) -> dict:
    """A topic Subscription (Backport IG) with its signing secret; by default to an endpoint that refuses
    connections (its handshake fails: status error)."""
    backport = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    body = {"resourceType": "Subscription", "status": "requested", "reason": "tests",
            "criteria": f"https://trial-fhir.org/SubscriptionTopic/{topic}",
            "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                        "_payload": {"extension": [{"url": backport + "backport-payload-content",
                                                    "valueCode": "id-only"}]},
                        "extension": [{"url": "https://trial-fhir.org/StructureDefinition/subscription-secret",
                                       "valueString": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw3qW8ZGYqNwE="}]},
            **extra}
    if filters:
        body["_criteria"] = {"extension": [{"url": backport + "backport-filter-criteria", "valueString": f}
                                           for f in filters]}
    return body


SD = "https://trial-fhir.org/StructureDefinition/"


def observation_definition(system: str = "https://trial-fhir.org/CodeSystem/pso-scores", code: str = "SPGA",
                           unit: str = "{score}", low: float = 0, high: float = 4, **extra) -> dict:
    """A measure: a whole-number score `low`…`high` in `unit` (no measure key: its code is its key)."""
    return {"resourceType": "ObservationDefinition", "code": {"coding": [{"system": system, "code": code}]},
            "permittedDataType": ["Quantity", "integer"],
            "quantitativeDetails": {"unit": {"coding": [{"system": UCUM, "code": unit}], "text": "score"}},
            "qualifiedInterval": [{"category": "absolute", "range": {"low": {"value": low}, "high": {"value": high}}}],
            **extra}


def visit_action(name: str, target: int, first: int, last: int) -> dict:
    return {"code": [{"coding": [{"system": "https://trial-fhir.org/CodeSystem/visit", "code": name}]}],
            "extension": [{"url": SD + "target-day", "valueInteger": target}],
            "timingRange": {"low": {"value": first, "system": UCUM, "code": "d"},
                            "high": {"value": last, "system": UCUM, "code": "d"}}}


def plan_definition(*definitions: str, visits: tuple = (("week-0", 0, -14, 0), ("week-4", 28, 21, 35)),
                    **extra) -> dict:
    """A catalogue's plan listing the ObservationDefinitions of ids `definitions`, with `visits`
    ((name, target day, first day, last day), …)."""
    return {"resourceType": "PlanDefinition", "status": "active", "title": "A test catalogue",
            "extension": [{"url": SD + "counted-status", "valueCode": "final"},
                          {"url": SD + "day-zero", "valueCode": "research-subject-period-start"},
                          *({"url": SD + "catalogue-measure",
                             "valueReference": {"reference": f"ObservationDefinition/{d}"}} for d in definitions)],
            "action": [visit_action(*v) for v in visits], **extra}


def valid_resources(ids: dict[str, str], unenrolled_patient: str) -> dict[str, dict]:
    """One valid resource of each writable stored type, about the study and enrolled patient of `ids` (`enrol`); the
    ResearchSubject enrols `unenrolled_patient`. A new stored type gets its line here."""
    return {
        "Patient": patient(),
        "ResearchStudy": study(),
        "ResearchSubject": subject(ids["study"], unenrolled_patient),
        "Observation": observation(ids["patient"], "IGA", 3, "2024-01-09"),
        "AdverseEvent": adverse_event(ids["patient"], ids["study"]),
        "Encounter": encounter(ids["patient"]),
        "MedicationAdministration": medication_administration(ids["patient"]),
        "Procedure": procedure(ids["patient"]),
        "Provenance": provenance(f"Patient/{ids['patient']}"),
        "ConceptMap": concept_map(),
        # (off: nothing changes it under a test, as the sender's failed handshake would)
        "Subscription": subscription(f"study=ResearchStudy/{ids['study']}", status="off"),
        "ObservationDefinition": observation_definition(),
        "PlanDefinition": plan_definition(ids["definition"]),
    }


def with_definition(client, ids: dict[str, str]) -> dict[str, str]:
    """`ids` with `definition`: a stored ObservationDefinition (what a PlanDefinition lists)."""
    return {**ids, "definition": created(client.post("/fhir/ObservationDefinition",
                                                     json=observation_definition()))["id"]}


def payloads(client) -> dict[str, dict]:
    """One valid payload per stored type, their patient enrolled (`enrol`) and another patient to enrol created."""
    ids = with_definition(client, enrol(client))
    return valid_resources(ids, created(client.post("/fhir/Patient", json=patient()))["id"])
