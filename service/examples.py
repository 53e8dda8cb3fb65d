"""Example payloads for the OpenAPI document (and a few tests): what an EHR would send. Each stored type names its
own in its declaration (`StoredType.example`; service/core/registry.py `EXAMPLES`)."""

AD = "https://trial-fhir.org/CodeSystem/ad-scores"
MRN = "urn:oid:1.2.410.200001.1"  # a hospital's medical record numbers

PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": MRN, "value": "MRN-000123"}],
    "name": [{"family": "Synthetic", "given": ["Ada"]}],
    "gender": "female",
    "birthDate": "1990-04-12",
}

RESEARCH_STUDY = {
    "resourceType": "ResearchStudy",
    "identifier": [{"system": "https://clinicaltrials.gov", "value": "NCT01927705"}],
    "title": "hUCB-MSCs in moderate-to-severe atopic dermatitis (Phase I/IIa)",
    "status": "completed",
    "phase": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/research-study-phase",
                          "code": "phase-1-phase-2"}]},
    "arm": [
        {"name": "low-dose", "description": "2.5 × 10^7 hUCB-MSCs, one subcutaneous administration"},
        {"name": "high-dose", "description": "5.0 × 10^7 hUCB-MSCs, one subcutaneous administration"},
    ],
}

RESEARCH_SUBJECT = {
    "resourceType": "ResearchSubject",
    "identifier": [{"system": "https://trial-fhir.org/subject", "value": "S-001"}],
    "status": "on-study",
    "period": {"start": "2024-03-04"},
    "study": {"reference": "ResearchStudy/nct01927705"},
    "individual": {"reference": f"Patient?identifier={MRN}|MRN-000123"},
    "assignedArm": "high-dose",
    "actualArm": "high-dose",
}

OBSERVATION = {
    "resourceType": "Observation",
    "identifier": [{"system": "urn:oid:1.2.410.200001.9", "value": "LAB-2024-88812"}],
    "status": "final",
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                              "code": "laboratory"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "19113-0",
                         "display": "IgE [Units/volume] in Serum or Plasma"}]},
    "subject": {"identifier": {"system": MRN, "value": "MRN-000123"}},
    "effectiveDateTime": "2024-04-01T09:30:00+09:00",
    "valueQuantity": {"value": 1520, "unit": "kU/L", "system": "http://unitsofmeasure.org", "code": "k[IU]/L"},
}

EASI_OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                              "code": "survey"}]}],
    "code": {"coding": [{"system": AD, "code": "EASI", "display": "Eczema Area and Severity Index"}]},
    "subject": {"reference": "Patient/example"},
    "effectiveDateTime": "2024-06-01",
    "valueQuantity": {"value": 12.4, "unit": "{score}", "system": "http://unitsofmeasure.org", "code": "{score}"},
}

ADVERSE_EVENT = {
    "resourceType": "AdverseEvent",
    "identifier": {"system": "https://trial-fhir.org/ae", "value": "AE-0007"},
    "actuality": "actual",
    "event": {"coding": [{"system": "https://www.meddra.org", "code": "10037087", "display": "Pruritus"}],
              "text": "Injection-site pruritus"},
    "subject": {"reference": f"Patient?identifier={MRN}|MRN-000123"},
    "study": [{"reference": "ResearchStudy/nct01927705"}],
    "date": "2024-03-05T10:00:00+09:00",
    "seriousness": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness",
                                "code": "non-serious"}]},
    "severity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-severity",
                             "code": "mild"}]},
    "suspectEntity": [{"instance": {"display": "hUCB-MSC"}, "causality": [{"assessment": {"coding": [
        {"system": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl", "code": "C53258",
         "display": "Possibly Related"}]}}]}],
}

ENCOUNTER = {
    "resourceType": "Encounter",
    "identifier": [{"system": "urn:oid:1.2.410.200001.7", "value": "ENC-2024-0207-01"}],
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
    "subject": {"identifier": {"system": MRN, "value": "MRN-000123"}},
    "period": {"start": "2024-02-07T09:00:00+09:00", "end": "2024-02-07T10:30:00+09:00"},
}

MEDICATION_ADMINISTRATION = {
    "resourceType": "MedicationAdministration",
    "identifier": [{"system": "urn:oid:1.2.410.200001.8", "value": "ADM-2024-0110-01"}],
    "status": "completed",
    "medicationCodeableConcept": {"text": "hUCB-MSC (human umbilical cord blood-derived mesenchymal stem cells)"},
    "subject": {"identifier": {"system": MRN, "value": "MRN-000123"}},
    "effectiveDateTime": "2024-01-10T10:00:00+09:00",
    "dosage": {"route": {"coding": [{"system": "http://snomed.info/sct", "code": "263887005",
                                     "display": "Subcutaneous"}]},
               "dose": {"value": 50000000, "unit": "cells", "system": "http://unitsofmeasure.org", "code": "{cells}"}},
}

PROCEDURE = {
    "resourceType": "Procedure",
    "identifier": [{"system": "urn:oid:1.2.410.200001.8", "value": "PRC-2024-0110-01"}],
    "status": "completed",
    "code": {"text": "Subcutaneous injection of hUCB-MSC"},
    "subject": {"identifier": {"system": MRN, "value": "MRN-000123"}},
    "performedDateTime": "2024-01-10T10:00:00+09:00",
}

PROVENANCE = {
    "resourceType": "Provenance",
    "target": [{"type": "Observation",  # the Observation example, by its identifier
                "identifier": {"system": "urn:oid:1.2.410.200001.9", "value": "LAB-2024-88812"}}],
    "recorded": "2024-02-07T10:31:00+09:00",
    "agent": [{"who": {"display": "Site EHR interface"}}],
}

CONCEPT_MAP = {
    "resourceType": "ConceptMap",
    "identifier": {"system": "https://hospital.example.org/fhir/ConceptMap", "value": "lab-to-loinc"},
    "url": "https://hospital.example.org/fhir/ConceptMap/lab-to-loinc",
    "name": "LabToLoinc",
    "status": "active",
    "group": [{"source": "urn:trial-fhir:hl7v2:SNUH-LAB:code:L", "target": "http://loinc.org",
               "element": [{"code": "IGE", "display": "IgE total",
                            "target": [{"code": "19113-0", "equivalence": "equivalent"}]}]}],
}

SUBSCRIPTION = {
    "resourceType": "Subscription",
    "status": "requested",
    "reason": "The safety desk hears of each serious adverse event of the study",
    "criteria": "https://trial-fhir.org/SubscriptionTopic/serious-adverse-event",
    "_criteria": {"extension": [{
        "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria",
        "valueString": "AdverseEvent?study=ResearchStudy/hucbmsc-ad-phase-1-2a"}]},
    "channel": {
        "type": "rest-hook",
        "endpoint": "https://safety.example.org/fhir-notifications",
        "header": ["Authorization: Bearer secret-token-of-the-desk"],
        "extension": [
            {"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period",
             "valueUnsignedInt": 3600},
            {"url": "https://trial-fhir.org/StructureDefinition/subscription-secret",
             "valueString": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw3qW8ZGYqNwE="}],
        "payload": "application/fhir+json",
        "_payload": {"extension": [{
            "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content",
            "valueCode": "full-resource"}]},
    },
}

OBSERVATION_DEFINITION = {
    "resourceType": "ObservationDefinition",
    "identifier": [{"system": "https://trial-fhir.org/NamingSystem/measure-key", "value": "PGA"}],
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                              "code": "survey"}]}],
    "code": {"coding": [{"system": "https://trial-fhir.org/CodeSystem/pso-scores", "code": "SPGA"}],
             "text": "sPGA"},
    "permittedDataType": ["Quantity", "integer"],
    "preferredReportName": "Static Physician's Global Assessment",
    "quantitativeDetails": {"unit": {"coding": [{"system": "http://unitsofmeasure.org", "code": "{score}"}],
                                     "text": "score"}, "decimalPrecision": 0},
    "qualifiedInterval": [{"category": "absolute", "range": {"low": {"value": 0}, "high": {"value": 4}}}],
}

_SD = "https://trial-fhir.org/StructureDefinition/"
PLAN_DEFINITION = {
    "resourceType": "PlanDefinition",
    "identifier": [{"system": "https://trial-fhir.org/NamingSystem/catalogue", "value": "psoriasis"}],
    "url": "https://trial-fhir.org/PlanDefinition/psoriasis",
    "name": "Psoriasis",
    "title": "Psoriasis (PASI, sPGA)",
    "status": "active",
    "extension": [{"url": _SD + "counted-status", "valueCode": "final"},
                  {"url": _SD + "day-zero", "valueCode": "research-subject-period-start"},
                  {"url": _SD + "catalogue-measure", "valueReference": {"reference": "ObservationDefinition/spga"}}],
    "action": [{"code": [{"coding": [{"system": "https://trial-fhir.org/CodeSystem/visit", "code": "week-0"}]}],
                "extension": [{"url": _SD + "target-day", "valueInteger": 0}],
                "timingRange": {"low": {"value": -14, "code": "d"}, "high": {"value": 0, "code": "d"}}}],
    "goal": [{"description": {"text": "SPGA-SUCCESS"},
              "extension": [{"url": _SD + "analysis-population", "valueCode": "observed"}],
              "target": [{"extension": [{"url": _SD + "criterion", "valueCode": "value"}],
                          "measure": {"coding": [{"system": "https://trial-fhir.org/CodeSystem/pso-scores",
                                                  "code": "SPGA"}]},
                          "detailRange": {"high": {"value": 1}}}]}],
}

TRANSACTION = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {"fullUrl": "urn:uuid:9d6b6b8e-0d0c-4c2e-9a55-7f1f4c1b2a01",
         "resource": {**PATIENT, "identifier": [{"system": MRN, "value": "MRN-000124"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN}|MRN-000124"}},
        {"fullUrl": "urn:uuid:9d6b6b8e-0d0c-4c2e-9a55-7f1f4c1b2a02",
         "resource": {**RESEARCH_SUBJECT,
                      "identifier": [{"system": "https://trial-fhir.org/subject", "value": "S-002"}],
                      "individual": {"reference": "urn:uuid:9d6b6b8e-0d0c-4c2e-9a55-7f1f4c1b2a01"}},
         "request": {"method": "POST", "url": "ResearchSubject"}},
        {"fullUrl": "urn:uuid:9d6b6b8e-0d0c-4c2e-9a55-7f1f4c1b2a03",
         "resource": {**EASI_OBSERVATION, "subject": {"reference": "urn:uuid:9d6b6b8e-0d0c-4c2e-9a55-7f1f4c1b2a01"},
                      "effectiveDateTime": "2024-03-04"},
         "request": {"method": "POST", "url": "Observation"}},
    ],
}


def stored(example: dict, id: str, version: int = 1) -> dict:
    """The example as the server returns it: with id and meta."""
    return {"resourceType": example["resourceType"], "id": id,
            "meta": {"versionId": str(version), "lastUpdated": "2024-04-01T00:30:00.000Z"},
            **{k: v for k, v in example.items() if k != "resourceType"}}

#: an AuditEvent as the server records it (clients never send one: the type is read-only): a portal's search of a
#: patient's results (service/audit/events.py builds these)
AUDIT_EVENT = {
    "resourceType": "AuditEvent",
    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
             "display": "Restful Operation"},
    "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type"}],
    "action": "E",
    "recorded": "2024-04-01T00:30:00.000Z",
    "outcome": "0",
    "agent": [
        {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153",
                              "display": "Source Role ID"}]},
         "who": {"identifier": {"value": "research-portal"}}, "requestor": True,
         "network": {"address": "10.0.0.7", "type": "2"}},
        {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110152",
                              "display": "Destination Role ID"}]},
         "who": {"display": "trial-fhir"}, "requestor": False,
         "network": {"address": "https://fhir.example.org/fhir", "type": "5"}},
    ],
    "source": {"observer": {"display": "trial-fhir"},
               "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                         "display": "Application Server"}]},
    "entity": [
        {"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2",
                  "display": "System Object"},
         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
         "query": "c3ViamVjdD1QYXRpZW50LzEyMyZjb2RlPUVBU0k="},
        {"what": {"identifier": {"value": "5f0c1e9a8b7d4c3e"}},
         "type": {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "code": "XrequestId"}},
        {"what": {"reference": "Patient/123"},
         "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1",
                  "display": "Person"},
         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}},
    ],
}
