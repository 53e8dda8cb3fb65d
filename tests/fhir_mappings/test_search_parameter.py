"""SearchParameter generation, without a database: what a served SearchParameter claims is what `parse_criterion`
takes, for hand-made parameters and for every parameter of every stored type."""

import pytest
from fhir.resources.R4B.searchparameter import SearchParameter

from fhir_mappings.search import (
    COMPARATORS,
    R4_MODIFIERS,
    ParamDef,
    Rejected,
    SearchSpec,
    chain_names,
    parse_criterion,
    search_parameter_resource,
)
from service.core.registry import REGISTRY, find_search_spec, search_spec

R4_COMPARATORS = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
PATIENT = SearchSpec("Patient", {"_id": ParamDef("_id", "token", "Patient.id", "id"),
                                 "gender": ParamDef("gender", "token", "Patient.gender", "gender"),
                                 "birthdate": ParamDef("birthdate", "date", "Patient.birthDate", "born")})
SUBJECT = ParamDef("subject", "reference", "Observation.subject", "the patient", targets=("Patient", "Group"))
OBSERVATION = SearchSpec("Observation", {"subject": SUBJECT}, chains={"subject": ("Patient",)})


def lookup(name: str) -> SearchSpec | None:
    return {"Patient": PATIENT, "Observation": OBSERVATION}.get(name)


def test_a_reference_claims_missing_and_its_types_its_targets_and_the_chains_of_the_stored_ones():
    sp = search_parameter_resource("Observation", SUBJECT, chain_names(OBSERVATION, "subject", lookup))
    SearchParameter.model_validate(sp)
    assert sp["id"] == "Observation-subject" and sp["url"] == "https://trial-fhir.org/SearchParameter/Observation-subject"
    assert sp["modifier"] == ["missing", "type"] and sp["target"] == ["Patient", "Group"]
    assert sp["chain"] == ["_id", "birthdate", "gender"] and "comparator" not in sp
    assert sp["derivedFrom"] == "http://hl7.org/fhir/SearchParameter/Observation-subject"
    assert sp["name"] == "ObservationSubject"


def test_dates_and_quantities_claim_the_comparators_of_the_one_table():
    date = search_parameter_resource("Patient", PATIENT.params["birthdate"])
    assert date["comparator"] == list(COMPARATORS["date"]) and "ap" not in date["comparator"]
    assert date["modifier"] == ["missing"]
    assert date["derivedFrom"] == "http://hl7.org/fhir/SearchParameter/individual-birthdate"
    value = search_parameter_resource("Observation", ParamDef("value-quantity", "quantity",
                                                              "Observation.value.as(Quantity)", "value"))
    assert value["comparator"] == list(R4_COMPARATORS) and value["name"] == "ObservationValueQuantity"


def test_id_and_last_updated_take_no_modifier_and_a_trial_parameter_derives_from_nothing():
    sp = search_parameter_resource("Patient", PATIENT.params["_id"])
    assert (sp["id"], sp["code"], sp["name"]) == ("Patient-id", "_id", "PatientId") and "modifier" not in sp
    assert sp["derivedFrom"] == "http://hl7.org/fhir/SearchParameter/Resource-id"
    last = search_parameter_resource("Patient", ParamDef("_lastUpdated", "date", "Patient.meta.lastUpdated", "x"))
    assert last["id"] == "Patient-lastUpdated" and "modifier" not in last and last["comparator"]
    visit = search_parameter_resource("Observation", ParamDef("visit", "token", "Observation.effective", "visit",
                                                              custom=True))
    assert "derivedFrom" not in visit and visit["modifier"] == ["missing", "not"]
    # R4 has no AuditEvent identifier parameter (nor element): nothing to derive from
    audit = search_parameter_resource("AuditEvent", ParamDef("identifier", "token", "AuditEvent.identifier", "x"))
    assert "derivedFrom" not in audit
    encounter = search_parameter_resource("Encounter", ParamDef("patient", "reference", "Encounter.subject", "x",
                                                                targets=("Patient",)))
    assert encounter["derivedFrom"] == "http://hl7.org/fhir/SearchParameter/clinical-patient"


def _accepts(spec: SearchSpec, name: str, value: str) -> bool:
    try:
        parse_criterion(spec, name, value, find_search_spec)
    except Rejected:
        return False
    return True


VALUES = {"token": "x", "string": "x", "date": "2024-03", "quantity": "5"}


def _value(param: ParamDef) -> str:
    if param.type == "reference":  # a reference to any type (Provenance target) is Type/id too
        return f"{(param.targets or ('Patient',))[0]}/x"
    return VALUES[param.type]


@pytest.mark.parametrize("stored", REGISTRY, ids=lambda t: t.name)
def test_the_parser_takes_exactly_what_each_generated_search_parameter_claims(stored):
    spec = search_spec(stored.name)
    for param in spec.params.values():
        sp = search_parameter_resource(stored.name, param, chain_names(spec, param.name, find_search_spec))
        value = _value(param)
        for modifier in R4_MODIFIERS:
            names = [f"{param.name}:{t}" for t in param.targets or ("Patient",)] if modifier == "type" \
                else [f"{param.name}:{modifier}"]
            for name in names:
                sent = "true" if modifier == "missing" else "x" if modifier == "type" else value
                assert _accepts(spec, name, sent) is (modifier in sp.get("modifier", [])), (name, sp)
        if param.type in ("date", "quantity"):
            for prefix in R4_COMPARATORS:
                assert _accepts(spec, param.name, prefix + value) is (prefix in sp["comparator"]), (prefix, sp)
        for target in spec.chains.get(param.name, ()):
            inner_spec = find_search_spec(target)
            assert inner_spec is not None
            for inner in inner_spec.params.values():
                assert _accepts(spec, f"{param.name}:{target}.{inner.name}", _value(inner)), (target, inner.name)
                assert inner.name in sp["chain"]
            assert not _accepts(spec, f"{param.name}:{target}.nothing", "x")
